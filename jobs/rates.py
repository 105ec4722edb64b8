"""Rates such as `10/minute`, counted in Redis with the `limits` library: how a rate
setting is read, and the one limiter that counts every rate of the service (the initiate
limits in jobs/api/ratelimits.py, the origins' start rate in
jobs/transfer/origin_limits.py).

The limiter keeps a moving window per key (a Redis list of hit times, checked and
appended in one Lua script), so parallel callers in any number of processes cannot both
take the last slot. Its keys start with `ratelimit:`.

No Django import here: the settings read their rates with `rate_parse`, so a bad one
stops the start-up.
"""

from functools import cache

import redis
from limits import RateLimitItem, parse
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

KEY_PREFIX = "ratelimit"
_PERIODS = {"s": "second", "m": "minute", "h": "hour", "d": "day"}


@cache
def rate_parse(rate: str) -> RateLimitItem:
    """`10/minute`, `10 per minute`, and DRF's spellings too (`10/min`, `10/m`, `100/h`).
    Raises ValueError for anything else."""
    amount, _, period = rate.partition("/")
    if period and period not in _PERIODS.values() and period[:1] in _PERIODS:
        rate = f"{amount}/{_PERIODS[period[0]]}"
    return parse(rate)


@cache
def rate_limiter(client: redis.Redis) -> MovingWindowRateLimiter:
    """The limiter counting in the database of `client`, on its connection pool (for
    hot-state Redis: bounded, with its timeouts, and following a Sentinel failover)."""
    storage = RedisStorage("redis://", connection_pool=client.connection_pool, key_prefix=KEY_PREFIX)
    return MovingWindowRateLimiter(storage)
