"""The old synchronous endpoint, `POST /download/start`, kept working on the new pipeline
while its callers move to `/v1/download/initiate`, and retired by settings.

What is decided here, for the views (legacy/apis.py) and the ASGI wait (legacy/wait.py):

- whether the endpoint is retired (`LEGACY_ENABLED`, `LEGACY_SUNSET_AT`): 410 Gone;
- which callers are moved at once (`LEGACY_ASYNC_PERCENT`): a stable share of users,
  answered 202 with the new flow's body instead of waiting, so traffic moves 10 -> 50 ->
  100 % by a setting, each user always on the same side at a given percentage;
- the headers every answer carries: `Deprecation` (RFC 9745), `Sunset` (RFC 8594) and
  `Link` to the successor and the migration guide;
- who still calls it: a row per user and User-Agent, a bounded number per user (the
  admin's "Legacy callers"), and the counter `download_legacy_requests_total{outcome}`.
"""

import logging
from datetime import datetime

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.http import http_date
from prometheus_client import Counter

from legacy.models import LegacyCaller

logger = logging.getLogger(__name__)

legacy_requests = Counter(
    "download_legacy_requests",
    "Answers of the old POST /download/start, by outcome (legacy/policy.py).",
    ["outcome"],
)

SUCCESSOR_PATH = "/v1/download/initiate"

# What an answer of the old endpoint was, for the counter and the callers' outcome mix.
REDIRECTED = "redirected"  # finished in time: 302 to the file
ACCEPTED = "accepted"  # not finished in time: 202, the client moves on to the new flow
MOVED = "moved"  # in LEGACY_ASYNC_PERCENT: 202 at once, no wait
FAILED = "failed"  # the job failed or was cancelled meanwhile
REFUSED = "refused"  # a bad request, a limit, no credentials: nothing waited for
GONE = "gone"  # retired: 410
OUTCOMES = (REDIRECTED, ACCEPTED, MOVED, FAILED, REFUSED, GONE)


def retired(now: datetime | None = None) -> bool:
    sunset = settings.LEGACY_SUNSET_AT
    return not settings.LEGACY_ENABLED or (sunset is not None and (now or timezone.now()) >= sunset)


# Fibonacci hashing: a user's place in [0, 2**64) is user_id x 2**64/phi, modulo 2**64. Fixed
# per user, and spread so evenly that any run of consecutive ids (as a database hands
# them out) splits at the percentage within a fraction of a percent.
_GOLDEN = 0x9E3779B97F4A7C15
_SPACE = 2**64


def moved_at_once(user_id: int) -> bool:
    """True for the users in the first LEGACY_ASYNC_PERCENT of a fixed spread of users: a
    given user is always on the same side at a given percentage, and raising it only
    moves more users over, never back."""
    percent = settings.LEGACY_ASYNC_PERCENT
    if percent <= 0:
        return False
    if percent >= 100:
        return True
    return (user_id * _GOLDEN) % _SPACE < _SPACE * percent // 100


def deprecation_headers() -> dict[str, str]:
    """Deprecation (RFC 9745: `@` and the Unix time it was deprecated), Sunset (RFC 8594:
    an HTTP date) if one is set, and Link to the successor and the migration guide."""
    headers = {
        "Deprecation": f"@{int(settings.LEGACY_DEPRECATED_AT.timestamp())}",
        "Link": (
            f'<{SUCCESSOR_PATH}>; rel="successor-version", '
            f'<{settings.LEGACY_MIGRATION_URL}>; rel="deprecation"; type="text/html"'
        ),
    }
    if settings.LEGACY_SUNSET_AT is not None:
        headers["Sunset"] = http_date(settings.LEGACY_SUNSET_AT.timestamp())
    return headers


# The agent of the row that counts a user's agents past LEGACY_CALLER_AGENTS_PER_USER.
OTHER_AGENTS = "(other)"


def legacy_request_record(*, user_id: int | None, user_agent: str, outcome: str) -> None:
    """Counts one answer of the old endpoint: the counter always, the caller's row when the
    caller is known. Never fails the answer: a lost count is logged.

    A user has a row per User-Agent up to LEGACY_CALLER_AGENTS_PER_USER; calls with any
    further agent are counted in one more row, OTHER_AGENTS. A client that sends a new
    agent with every call (any client can) adds at most that many rows."""
    legacy_requests.labels(outcome=outcome).inc()
    if user_id is None:
        return
    user_agent = user_agent[: LegacyCaller._meta.get_field("user_agent").max_length]
    now = timezone.now()
    increments = {"calls": F("calls") + 1, outcome: F(outcome) + 1, "last_seen": now}
    try:
        if LegacyCaller.objects.filter(user_id=user_id, user_agent=user_agent).update(**increments):
            return
        try:
            with transaction.atomic():
                # The user's row locked: the count of the user's agents and the insert of a
                # new one hold together.
                list(get_user_model().objects.select_for_update().filter(pk=user_id).values_list("pk"))
                callers = LegacyCaller.objects.filter(user_id=user_id)
                if callers.exclude(user_agent=OTHER_AGENTS).count() >= settings.LEGACY_CALLER_AGENTS_PER_USER:
                    user_agent = OTHER_AGENTS
                    if callers.filter(user_agent=user_agent).update(**increments):
                        return
                LegacyCaller.objects.create(
                    user_id=user_id,
                    user_agent=user_agent,
                    calls=1,
                    first_seen=now,
                    last_seen=now,
                    **{outcome: 1},
                )
        except IntegrityError:  # another request made the row first
            LegacyCaller.objects.filter(user_id=user_id, user_agent=user_agent).update(**increments)
    except Exception:
        logger.warning("Could not record a legacy call of user %s", user_id, exc_info=True)
