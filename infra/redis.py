"""The one place that builds Redis clients: where each use of Redis connects, one server
named by its URL, or, with Redis Sentinel (`REDIS_SENTINELS`, `REDIS_SENTINEL_MASTER`),
whichever server the sentinels name master now, found again after a failover.

Every client of the service's own code is made here: hot-state Redis (`state_client`,
`state_async_client`, `state_script`: hot state, rate limits, login protection, the API
keys' cache, the breaker, the sockets' places), the broker's (`broker_client`: queue
depths), the channel layer's server for publishing (`publish_client`), the readiness
checks (`client`), the cache (`CachePool`). Celery and channels-redis speak Sentinel
themselves and are configured in settings. With Sentinel, a URL only names the database:
`redis://<master>/1` is database 1 of the current master.

A process builds each shared client once, on first use. `reset()` forgets them all, so
the next use builds them anew from the settings as they are then (tests that point a
setting elsewhere call it once).
"""

import asyncio
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
from redis.commands.core import Script
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


def _sentinel_kwargs(settings: Any) -> dict[str, float]:
    """How long a sentinel may take to connect and answer, for the sync and asyncio clients."""
    timeout = settings.REDIS_SOCKET_TIMEOUT_S
    return {"socket_timeout": timeout, "socket_connect_timeout": timeout}


def _sentinel(settings: Any) -> Sentinel:
    return Sentinel(settings.REDIS_SENTINELS, sentinel_kwargs=_sentinel_kwargs(settings))


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
    sentinel = redis.asyncio.sentinel.Sentinel(
        settings.REDIS_SENTINELS, sentinel_kwargs=_sentinel_kwargs(settings)
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


# --- the process's shared clients, built once each, forgotten together by reset() ---------

_built: dict[tuple[Any, ...], Any] = {}
_built_lock = threading.RLock()  # a script's build takes the client's
_state_async_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis]" = (
    weakref.WeakKeyDictionary()
)


def _once[Built](key: tuple[Any, ...], build: Callable[[], Built]) -> Built:
    with _built_lock:
        if key not in _built:
            _built[key] = build()
        built: Built = _built[key]
        return built


def _bounded_options(*, socket_timeout: float | None = None) -> dict[str, Any]:
    """The options of a pool that every thread (or task) of a process shares: a busy pool
    makes a caller wait for a connection (at most REDIS_POOL_TIMEOUT_S) rather than fail or
    open one more; a command may take REDIS_SOCKET_TIMEOUT_S before it counts as a fault."""
    from django.conf import settings

    return {
        "max_connections": settings.REDIS_POOL_MAX_CONNECTIONS,
        "timeout": settings.REDIS_POOL_TIMEOUT_S,
        "socket_connect_timeout": settings.REDIS_SOCKET_TIMEOUT_S,
        "socket_timeout": settings.REDIS_SOCKET_TIMEOUT_S if socket_timeout is None else socket_timeout,
        "health_check_interval": 30,
    }


def state_client() -> redis.Redis:
    """The process's client of hot-state Redis (REDIS_STATE_URL). Its pool is shared by
    every thread, and a web process runs each request in a thread of its own: it is bounded
    and blocking (`_bounded_options`)."""
    from django.conf import settings

    return _once(("state",), lambda: client(settings.REDIS_STATE_URL, blocking=True, **_bounded_options()))


def state_script(source: str) -> Script:
    """The Lua script `source`, registered on `state_client()` (its SHA is computed once;
    a server that has not seen it is sent it on first use)."""
    return _once(("state-script", source), lambda: state_client().register_script(source))


def state_async_client() -> redis.asyncio.Redis:
    """The running event loop's asyncio client of hot-state Redis, for code on a web
    process's loop that must not take a thread to ask Redis (the sockets' places, the
    legacy wait). One per loop, as a client's connections belong to the loop that opened
    them; its pool is bounded as `state_client`'s."""
    from django.conf import settings

    loop = asyncio.get_running_loop()
    found = _state_async_clients.get(loop)
    if found is None:
        found = _state_async_clients[loop] = async_client(settings.REDIS_STATE_URL, **_bounded_options())
    return found


def broker_client() -> redis.Redis:
    """A client of the broker's Redis (CELERY_BROKER_URL), for reading its queues' depths:
    a metrics scrape or an alert check asks it, so it gives up after a second."""
    from django.conf import settings

    return _once(
        ("broker",),
        lambda: client(settings.CELERY_BROKER_URL, socket_connect_timeout=1, socket_timeout=1),
    )


def publish_client(url: str, *, timeout_s: float) -> redis.Redis:
    """A client for PUBLISHing to the server of `url` (the channel layer's) from any thread,
    a command giving up after `timeout_s`. On hot state's server (pub/sub ignores the
    database number) it is `state_client()`: a process holds one pool of connections to
    that server, not two."""
    from django.conf import settings

    if same_server(url, settings.REDIS_STATE_URL):
        return state_client()
    return _once(
        ("publish", url, timeout_s),
        lambda: client(url, blocking=True, **_bounded_options(socket_timeout=timeout_s)),
    )


def same_server(url: str, other: str) -> bool:
    """Whether two URLs name one server (their databases may differ)."""
    return urlsplit(url)._replace(path="") == urlsplit(other)._replace(path="")


def reset() -> None:
    """Forgets every shared client (and the scripts registered on them): the next use
    builds them anew from the settings as they are then. For tests that point a Redis
    setting elsewhere; the clients forgotten are not closed (a caller may still hold one)."""
    with _built_lock:
        _built.clear()
        _state_async_clients.clear()


def _new_lock_after_fork() -> None:
    """A forked child (Celery's prefork pool) may have been forked while another thread
    held the lock: it takes a new one. The clients stay: a pool opens new connections in
    a process that is not the one that opened its old ones."""
    global _built_lock
    _built_lock = threading.RLock()


os.register_at_fork(after_in_child=_new_lock_after_fork)
