"""The line of queued jobs, in hot-state Redis: what a queued job's place in its status
answer is read from (`jobs.selectors.download_job_queue_place`), without a query per poll.

Every user with a queued job polls its status; a count of the jobs ahead per poll would
load the database most just when the queue is long. Instead the line is a snapshot, built
by ONE query over the queued jobs that wait for their turn (`status` queued, no
`next_retry_at`), at most once per QUEUE_LINE_MAX_AGE_S, by whichever request finds it
older than that. A claim (`SET NX`) lets one request build it while the others answer from
the one before, so a burst of polls makes one query, not one each.

Per priority, `queue-line:<priority>` is a sorted set scored by `created_at` (microseconds
since the epoch). Its members are the number of that priority's jobs created at or before
that instant (`upto`): for the first QUEUE_LINE_EXACT jobs of each priority every one of
them, beyond that every QUEUE_LINE_STEP-th and the last. A job's place is then one
`ZREVRANGEBYSCORE` for the last member created before it, plus the totals of the higher
priorities (`queue-line:meta`, with the instant the snapshot was built and the recent
completions of that instant, for the place's estimate): exact within the
first QUEUE_LINE_EXACT of its priority, and beyond that short of the truth by less than
QUEUE_LINE_STEP. A job newer than the snapshot has its priority's whole line ahead of it.
"""

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count, F, Q, Window
from django.db.models.functions import Mod, RowNumber

from infra.redis import state_client
from jobs.completions import RecentCompletions, completions_read
from jobs.models import DownloadJob, Status
from jobs.ops.broker import PRIORITIES

logger = logging.getLogger(__name__)

QUEUE_LINE_EXACT = 1000  # the first jobs of each priority, every one in the snapshot
QUEUE_LINE_STEP = 100  # beyond them, every this-many-th job (and the last) of the priority
_META_KEY = "queue-line:meta"
_CLAIM_KEY = "queue-line:claim"
_CLAIM_TTL_S = 30  # a builder that died mid-build holds the claim no longer than this
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _line_key(priority: str) -> str:
    return f"queue-line:{priority}"


def _score(created_at: datetime) -> int:
    """Whole microseconds since the epoch: exact in a sorted set's double (< 2**53)."""
    return (created_at - _EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True)
class LinePlace:
    """What the snapshot says of one job: how many jobs are ahead of it, and how old that is."""

    ahead: int
    built_s: float  # when the snapshot was built (Unix time)
    recent: RecentCompletions  # as they were then: what the place's estimate is made of


def _line_rows() -> list[tuple[str, datetime, int, int]]:
    """(priority, created_at, upto, total) of the jobs kept in the snapshot: one query."""
    by_priority = [F("priority")]
    return list(
        DownloadJob.objects.filter(status=Status.QUEUED, next_retry_at__isnull=True)
        .annotate(
            number=Window(
                RowNumber(), order_by=[F("created_at").asc(), F("id").asc()], partition_by=by_priority
            ),
            # A count ordered by created_at counts the rows created at the same instant too.
            upto=Window(Count("id"), order_by=F("created_at").asc(), partition_by=by_priority),
            total=Window(Count("id"), partition_by=by_priority),
        )
        .annotate(step=Mod(F("number"), QUEUE_LINE_STEP))
        .filter(Q(number__lte=QUEUE_LINE_EXACT) | Q(step=0) | Q(number=F("total")))
        .values_list("priority", "created_at", "upto", "total")
    )


def queue_line_build(*, now_s: float) -> None:
    """Reads the line from the database (one query) and replaces the snapshot at once, with
    the recent completions of the moment, so that a poll reads them in the same round trip."""
    lines: dict[str, dict[str, int]] = {priority: {} for priority in PRIORITIES}
    totals = dict.fromkeys(PRIORITIES, 0)
    for priority, created_at, upto, total in _line_rows():
        lines[priority][str(upto)] = _score(created_at)
        totals[priority] = total
    recent = completions_read(now_s=now_s)
    meta = {
        "built_s": now_s,
        "totals": totals,
        "recent": [recent.count, recent.seconds, recent.first_bucket_s],
    }
    ttl_s = settings.HOT_STATE_TTL_S
    pipe = state_client().pipeline(transaction=True)
    for priority, members in lines.items():
        pipe.delete(_line_key(priority))
        if members:
            pipe.zadd(_line_key(priority), members)
            pipe.expire(_line_key(priority), ttl_s)
    pipe.set(_META_KEY, json.dumps(meta), ex=ttl_s)
    pipe.execute()


def _place_read(priority: str, created_at: datetime) -> LinePlace | None:
    """The job's place by the current snapshot, in one round trip; None if there is none."""
    pipe = state_client().pipeline(transaction=True)
    pipe.get(_META_KEY)
    pipe.zrevrangebyscore(_line_key(priority), f"({_score(created_at)}", "-inf", start=0, num=1)
    raw_meta, before = pipe.execute()
    if raw_meta is None:
        return None
    try:
        meta = json.loads(raw_meta)
        higher = PRIORITIES[: PRIORITIES.index(priority)]
        ahead = sum(int(meta["totals"].get(name, 0)) for name in higher) + (int(before[0]) if before else 0)
        count, seconds, first_bucket_s = meta["recent"]
        recent = RecentCompletions(count=int(count), seconds=float(seconds), first_bucket_s=first_bucket_s)
        return LinePlace(ahead=ahead, built_s=float(meta["built_s"]), recent=recent)
    except (KeyError, TypeError, ValueError):
        # Written in another shape (by another version of this module, in a rolling deploy):
        # as if there were none, so that this request builds it again.
        logger.warning("The queue's line snapshot has an unknown shape; building it again")
        return None


def queue_line_place(*, priority: str, created_at: datetime, now_s: float) -> LinePlace | None:
    """How many jobs are ahead of a queued job of `priority` created at `created_at`: from
    the snapshot, built again first if it is older than QUEUE_LINE_MAX_AGE_S and no other
    request is building it. None while there is no snapshot yet (another request is building
    the first one, or the database failed to give it). Raises redis.RedisError."""
    place = _place_read(priority, created_at)
    if place is not None and now_s - place.built_s < settings.QUEUE_LINE_MAX_AGE_S:
        return place
    if not state_client().set(_CLAIM_KEY, 1, nx=True, ex=_CLAIM_TTL_S):
        return place  # another request is building it: the older one answers meanwhile
    try:
        queue_line_build(now_s=now_s)
    except DatabaseError:
        logger.warning("Cannot read the queue's line; answering from the last one", exc_info=True)
        return place
    finally:
        state_client().delete(_CLAIM_KEY)
    return _place_read(priority, created_at)


def queue_line_reset() -> None:
    """Forgets the snapshot (tests start from none)."""
    state_client().delete(_META_KEY, _CLAIM_KEY, *(_line_key(priority) for priority in PRIORITIES))
