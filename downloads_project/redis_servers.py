"""Where each use of Redis connects: one server named by its URL, or, with Redis Sentinel
(`REDIS_SENTINELS`, `REDIS_SENTINEL_MASTER`), whichever server the sentinels name master
now, found again after a failover.

Every client of the service's own code is made here (hot state, rate limits, the broker's
queue depths, the readiness checks, the cache); Celery and channels-redis speak Sentinel
themselves and are configured in settings. With Sentinel, a URL only names the database:
`redis://<master>/1` is database 1 of the current master.
"""

from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
from redis.sentinel import Sentinel, SentinelConnectionPool


def sentinels_parse(values: list[str]) -> list[tuple[str, int]]:
    """`host:port` entries (REDIS_SENTINELS) as (host, port) pairs; 26379 if no port."""
    parsed = []
    for value in values:
        host, _, port = value.strip().rpartition(":") if ":" in value else (value.strip(), "", "26379")
        if not host:
            raise ValueError(f"not a host:port: {value!r}")
        parsed.append((host, int(port)))
    return parsed


def database(url: str) -> int:
    """The database number a URL names (0 if none): `redis://h/1`, `sentinel://h:p/0;...`."""
    path = urlsplit(url.split(";", 1)[0]).path.strip("/")
    return int(path) if path else 0


class SentinelBlockingConnectionPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """The sentinels' master, through a bounded pool that makes a thread wait for a free
    connection (as `redis.BlockingConnectionPool`) rather than fail."""


def _sentinel(settings: Any) -> Sentinel:
    timeout = settings.REDIS_SOCKET_TIMEOUT_S
    return Sentinel(
        settings.REDIS_SENTINELS,
        sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
    )


def pool(url: str, *, blocking: bool = False, **options: Any) -> redis.ConnectionPool:
    """A connection pool to the server of `url`, or with Sentinel to its master's database
    of that number. `options` are the pool's and its connections' (timeouts, sizes)."""
    from django.conf import settings

    if not settings.REDIS_SENTINELS:
        if blocking:
            return redis.BlockingConnectionPool.from_url(url, **options)
        return redis.ConnectionPool.from_url(url, **options)
    sentinel_pool = SentinelBlockingConnectionPool if blocking else SentinelConnectionPool
    return sentinel_pool(settings.REDIS_SENTINEL_MASTER, _sentinel(settings), db=database(url), **options)


def client(url: str, *, blocking: bool = False, **options: Any) -> redis.Redis:
    return redis.Redis(connection_pool=pool(url, blocking=blocking, **options))


class AsyncSentinelBlockingConnectionPool(
    redis.asyncio.sentinel.SentinelConnectionPool, redis.asyncio.BlockingConnectionPool
):
    """The sentinels' master, through a bounded asyncio pool that makes a task wait for a
    free connection rather than fail."""


def async_client(url: str, **options: Any) -> redis.asyncio.Redis:
    """An asyncio client of the server of `url` (or the sentinels' master), for code on an
    event loop that must not take a thread to ask Redis. Bound to the loop it is used on.
    Its pool is bounded (`max_connections`): when all are busy, a command waits for one, at
    most `timeout` seconds, rather than fail."""
    from django.conf import settings

    if not settings.REDIS_SENTINELS:
        return redis.asyncio.Redis(
            connection_pool=redis.asyncio.BlockingConnectionPool.from_url(url, **options)
        )
    timeout = settings.REDIS_SOCKET_TIMEOUT_S
    sentinel = redis.asyncio.sentinel.Sentinel(
        settings.REDIS_SENTINELS,
        sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
    )
    return sentinel.master_for(
        settings.REDIS_SENTINEL_MASTER,
        db=database(url),
        connection_pool_class=AsyncSentinelBlockingConnectionPool,
        **options,
    )


class CachePool(redis.ConnectionPool):
    """Django's Redis cache makes its pools with `pool_class.from_url(url, **options)`:
    this one goes through `pool`, so the cache follows the sentinels' master too."""

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Any:
        return pool(url, **options)
