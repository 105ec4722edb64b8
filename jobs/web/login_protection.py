"""Brute-force protection of the sign-in pages (the login page and the admin's).

django-axes hooks every `authenticate(request, ...)`: its backend, first in
AUTHENTICATION_BACKENDS, refuses an attempt that is locked out before any password is
checked; Django's `user_login_failed` signal brings each failure to the handler below;
its middleware answers a locked-out attempt with `login_lockout_response`. The handler
counts failures in hot-state Redis, so every web process sees the same counts, in two
counters per attempt:

- the username at the client address, locked at LOGIN_FAILURE_LIMIT: failures against
  alice from one address do not lock alice out from another;
- the client address, locked at LOGIN_FAILURE_LIMIT_PER_IP (higher): one address cannot
  try a few passwords each for many usernames.

(Axes' own cache handler compares every counter with one limit.) A counter counts the
failures within LOGIN_LOCKOUT_S of its first; the failure that reaches the limit locks for
LOGIN_LOCKOUT_S from then. A refused attempt tests no password and is not counted, so the
wait the page shows is the wait. A sign-in forgets its username's failures at that
address, not the address's. The address is `client_ip`, the rate limits' rule: a forged
X-Forwarded-For changes nothing unless CLIENT_IP_HEADER names it.

API tokens, the session of a signed-in browser and the WebSocket authenticate without
`authenticate()`: untouched.
"""

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Any

import redis
from axes.backends import AxesStandaloneBackend
from axes.handlers.base import AxesHandler
from axes.helpers import get_client_username
from axes.signals import user_locked_out
from django.conf import settings
from django.forms import Form
from django.http import HttpRequest, HttpResponse
from django.template.response import SimpleTemplateResponse, TemplateResponse

from infra.redis import state_client, state_script
from jobs.client_address import client_ip

logger = logging.getLogger(__name__)

_PREFIX = "login:failures:"
LOCKOUT_STATUS = 429


@dataclass(frozen=True)
class _Counter:
    key: str
    limit: int


def _counters(*, address: str, username: str | None) -> list[_Counter]:
    """An attempt's two counters: its username at its address, then its address."""
    digest = hashlib.sha256((username or "").encode()).hexdigest()
    return [
        _Counter(f"{_PREFIX}{address}:user:{digest}", settings.LOGIN_FAILURE_LIMIT),
        _Counter(f"{_PREFIX}{address}", settings.LOGIN_FAILURE_LIMIT_PER_IP),
    ]


def _attempt_counters(request: HttpRequest, credentials: dict[str, Any] | None) -> list[_Counter]:
    return _counters(address=client_ip(request), username=get_client_username(request, credentials))


# Counts one failure on each counter (KEYS), whose limits are ARGV[2..]. A new count lives
# ARGV[1] seconds; reaching its limit starts a lock of ARGV[1] seconds. Returns the counts.
_COUNT = """
local counts = {}
for i, key in ipairs(KEYS) do
  local count = redis.call('INCR', key)
  if count == 1 or count >= tonumber(ARGV[i + 1]) then
    redis.call('EXPIRE', key, ARGV[1])
  end
  counts[i] = count
end
return counts
"""


def _lockout_wait_s(counters: list[_Counter]) -> int:
    """Seconds until no counter is at its limit; 0 when none is."""
    pipe = state_client().pipeline()
    for counter in counters:
        pipe.get(counter.key)
        pipe.pttl(counter.key)
    replies = pipe.execute()
    waits_ms = [
        replies[2 * index + 1]
        for index, counter in enumerate(counters)
        if int(replies[2 * index] or 0) >= counter.limit
    ]
    if not waits_ms:
        return 0
    return max(1, math.ceil(max(waits_ms) / 1000))


def login_failures_reset(*, address: str | None = None, username: str | None = None) -> int:
    """Forgets the counts of an address (every username's too), of a username (at every
    address), of both together, or all of them; returns how many counters were dropped.
    An IPv6 client is counted per /64 (`2001:db8::/64`)."""
    client = state_client()
    digest = hashlib.sha256(username.encode()).hexdigest() if username is not None else None
    if address is not None and digest is not None:
        return int(client.delete(f"{_PREFIX}{address}:user:{digest}"))
    if address is not None:
        patterns = [f"{_PREFIX}{_glob_escape(address)}", f"{_PREFIX}{_glob_escape(address)}:user:*"]
    elif digest is not None:
        patterns = [f"{_PREFIX}*:user:{digest}"]
    else:
        patterns = [f"{_PREFIX}*"]
    keys = {key for pattern in patterns for key in client.scan_iter(match=pattern, count=1000)}
    return int(client.delete(*keys)) if keys else 0


def _glob_escape(text: str) -> str:
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in text)


class LoginProtectionBackend(AxesStandaloneBackend):
    """Axes' backend, but an `authenticate()` without a request (the test client's
    `login()`, a shell) goes on to the next backend instead of raising: no client to
    count or lock out. Every sign-in page passes its request."""

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> None:
        if request is not None:
            super().authenticate(request, username, password, **kwargs)


class LoginFailureHandler(AxesHandler):
    """Axes' handler (AXES_HANDLER) for the two counters above. Axes passes the request of
    the attempt, to which it adds its `axes_*` attributes."""

    def is_locked(self, request: Any, credentials: dict[str, Any] | None = None) -> bool:
        return _lockout_wait_s(_attempt_counters(request, credentials)) > 0

    def get_failures(self, request: Any, credentials: dict[str, Any] | None = None) -> int:
        return int(state_client().get(_attempt_counters(request, credentials)[0].key) or 0)

    def user_login_failed(
        self, sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any
    ) -> None:
        if request is None:
            return
        request.axes_credentials = credentials
        # Refused by the backend (AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT is off):
        # no password was checked.
        if getattr(request, "axes_locked_out", False) or self.is_whitelisted(request, credentials):
            return
        address = client_ip(request)
        username = get_client_username(request, credentials)
        counters = _counters(address=address, username=username)
        script = state_script(_COUNT)
        counts = script(
            keys=[counter.key for counter in counters],
            args=[settings.LOGIN_LOCKOUT_S, *(counter.limit for counter in counters)],
        )
        pair_count, address_count = counts
        if pair_count < counters[0].limit and address_count < counters[1].limit:
            return
        logger.warning(
            "Sign-in locked out for %s s: %s failures of one username, %s in all, from %s",
            settings.LOGIN_LOCKOUT_S,
            pair_count,
            address_count,
            address,
        )
        request.axes_locked_out = True
        user_locked_out.send("axes", request=request, username=username, ip_address=address)

    def user_logged_in(self, sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
        if request is None:  # Channels' login() sends none
            return
        pair, _address = _counters(address=client_ip(request), username=user.get_username())
        try:
            state_client().delete(pair.key)
        except redis.RedisError:
            # The user is signed in already; the count lapses after LOGIN_LOCKOUT_S anyway.
            logger.warning("Could not forget the sign-in failures of a user who signed in", exc_info=True)

    def reset_attempts(
        self, *, ip_address: str | None = None, username: str | None = None, ip_or_username: bool = False
    ) -> int:
        """`manage.py axes_reset`, `axes_reset_ip ADDRESS`, `axes_reset_username NAME`."""
        return login_failures_reset(address=ip_address, username=username)


def _wait_text(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def login_lockout_response(
    request: HttpRequest, original_response: HttpResponse | None, credentials: dict[str, Any] | None
) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: the page the attempt was made on (the login page or the
    admin's), its form showing only when to try again, 429 with Retry-After."""
    wait_s = max(1, _lockout_wait_s(_attempt_counters(request, credentials)))
    message = f"Too many failed sign-in attempts. Try again in {_wait_text(wait_s)}."
    context = (
        original_response.context_data if isinstance(original_response, SimpleTemplateResponse) else None
    )
    form = (context or {}).get("form")
    response: HttpResponse
    if isinstance(original_response, SimpleTemplateResponse) and isinstance(form, Form):
        # Only the lock: "enter a correct username and password" would be wrong for a
        # refused attempt, whose password was not checked.
        form.errors.clear()
        form.add_error(None, message)
        response = TemplateResponse(request, original_response.template_name, context, status=LOCKOUT_STATUS)
        response.render()
    else:
        response = HttpResponse(message, status=LOCKOUT_STATUS, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = str(wait_s)
    return response
