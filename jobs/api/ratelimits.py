"""Initiate rate limits, per user and per client IP (jobs/client_address.py), counted in Redis.

Every API process counts in the same Redis (the hot-state database), so the limit holds
however many processes serve the API. jobs/rates.py's limiter keeps a moving window per
key (a Redis list of hit times, checked and appended in one Lua script), so parallel
requests cannot both take the last slot. Each answer of initiate carries the
draft-standard `RateLimit-*` headers (draft-ietf-httpapi-ratelimit-headers, as
express-rate-limit's `standardHeaders` sends them) for whichever limit is closest to
running out.

If Redis cannot be reached the request is let through and the failure logged: the
per-user cap on active jobs, kept in the database, still bounds what one user can start.
"""

import logging
import math
import time
from dataclasses import dataclass

from django.conf import settings
from limits import RateLimitItem
from limits.strategies import MovingWindowRateLimiter

from infra.redis import state_client
from jobs.rates import rate_limiter, rate_parse

logger = logging.getLogger(__name__)


def _limiter() -> MovingWindowRateLimiter:
    return rate_limiter(state_client())


@dataclass(frozen=True)
class RateLimitVerdict:
    allowed: bool
    headers: dict[str, str]
    retry_after_s: int = 0


def _policy(item: RateLimitItem, name: str) -> str:
    return f'{item.amount};w={item.get_expiry()};comment="{name}"'


def initiate_rate_hit(*, user_id: int, ip: str) -> RateLimitVerdict:
    """Counts one initiate for the user and the IP, if both have room. Both are checked
    before either is counted, so a request refused by one limit takes nothing from the
    other (short of a race between the check and the count, which can cost one slot)."""
    limits = [
        (rate_parse(settings.JOB_INITIATE_RATE), "user", str(user_id)),
        (rate_parse(settings.JOB_INITIATE_RATE_PER_IP), "ip", ip),
    ]
    policy = ", ".join(_policy(item, name) for item, name, _ in limits)
    limiter = _limiter()
    try:
        refused = [limit for limit in limits if not limiter.test(limit[0], "initiate", *limit[1:])]
        for item, name, key in [] if refused else limits:
            # The first refusal stops the rest.
            if not limiter.hit(item, "initiate", name, key):
                refused.append((item, name, key))
                break
        stats = [(item, limiter.get_window_stats(item, "initiate", name, key)) for item, name, key in limits]
    except Exception:
        logger.warning("Rate limits unavailable (Redis); initiate let through", exc_info=True)
        return RateLimitVerdict(allowed=True, headers={})
    now = time.time()
    item, tightest = min(stats, key=lambda pair: (pair[1].remaining, -pair[1].reset_time))
    reset_s = max(0, math.ceil(tightest.reset_time - now))
    headers = {
        "RateLimit-Policy": policy,
        "RateLimit-Limit": str(item.amount),
        "RateLimit-Remaining": str(max(0, tightest.remaining)),
        "RateLimit-Reset": str(reset_s),
    }
    if not refused:
        return RateLimitVerdict(allowed=True, headers=headers)
    refused_keys = {(name, key) for _, name, key in refused}
    waits = [
        window.reset_time - now
        for (_, window), (_, name, key) in zip(stats, limits, strict=True)
        if (name, key) in refused_keys and window.remaining <= 0
    ]
    retry_after_s = max(1, math.ceil(max(waits, default=1)))
    return RateLimitVerdict(allowed=False, headers=headers, retry_after_s=retry_after_s)


def rate_limits_reset() -> None:
    """Forgets every count (tests)."""
    _limiter().storage.reset()
