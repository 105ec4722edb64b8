"""Where each use of Redis connects: the broker, hot state, the channel layer and the cache,
one server or Redis Sentinel, and the pools of the service's own clients (infra/redis.py)."""

from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

from downloads_project.settings.environment import env
from infra import redis as redis_clients
from infra import roles

# One server, separate logical databases: the broker must never be evicted, while hot job
# state and the channel layer are disposable. Point each at its own instance if needed.

REDIS_URL = env("REDIS_URL", default="redis://127.0.0.1:6379").rstrip("/")
if urlsplit(REDIS_URL).path.strip("/"):
    # The URLs below append their own database numbers: `/7/0` would stop beat deep in kombu.
    raise ImproperlyConfigured(
        f"REDIS_URL ends in a database number ({urlsplit(REDIS_URL).path}): give the server "
        "without a database number (redis://host:6379); "
        "the service uses its databases 0-3, or set CELERY_BROKER_URL, REDIS_STATE_URL, "
        "CHANNEL_LAYER_URL and REDIS_CACHE_URL one by one"
    )
# Redis Sentinel: with REDIS_SENTINELS (host:port,...) and REDIS_SENTINEL_MASTER, the
# broker, hot state, channel layer and cache all use databases 0-3 of whichever server the
# sentinels name master, and follow it through a failover (REDIS_URL and the URLs below
# then only name the databases).
REDIS_SENTINELS = redis_clients.sentinels_parse(env.list("REDIS_SENTINELS", default=[]))
REDIS_SENTINEL_MASTER = env("REDIS_SENTINEL_MASTER", default="")
if REDIS_SENTINELS and not REDIS_SENTINEL_MASTER:
    raise ImproperlyConfigured("REDIS_SENTINELS is set: set REDIS_SENTINEL_MASTER, the master's name too")
if REDIS_SENTINELS:
    REDIS_URL = f"redis://{REDIS_SENTINEL_MASTER}"
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=f"{REDIS_URL}/0")
if REDIS_SENTINELS:
    # kombu asks each sentinel in turn for the master (transport option master_name).
    _broker_db = redis_clients.database(CELERY_BROKER_URL)
    CELERY_BROKER_URL = ";".join(f"sentinel://{host}:{port}/{_broker_db}" for host, port in REDIS_SENTINELS)
REDIS_STATE_URL = env("REDIS_STATE_URL", default=f"{REDIS_URL}/1")
CHANNEL_LAYER_URL = env("CHANNEL_LAYER_URL", default=f"{REDIS_URL}/2")
REDIS_CACHE_URL = env("REDIS_CACHE_URL", default=f"{REDIS_URL}/3")  # may evict

# Hot state: connections per process at most, how long a thread waits for one, and how
# long a command may take before it counts as a fault of Redis. A web request asks hot
# state several times (its token, the rate limits, the card), each with a fallback when
# Redis fails: in a web process a command gets 1 s (Redis answers in well under a
# millisecond), so that a Redis that hangs costs a request a few seconds, not a minute.
REDIS_POOL_MAX_CONNECTIONS = env.int("REDIS_POOL_MAX_CONNECTIONS", default=50)
REDIS_POOL_TIMEOUT_S = env.float("REDIS_POOL_TIMEOUT_S", default=5.0)
REDIS_SOCKET_TIMEOUT_S = env.float("REDIS_SOCKET_TIMEOUT_S", default=1.0 if roles.is_web() else 5.0)

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_CACHE_URL,
        "OPTIONS": {
            "pool_class": "infra.redis.CachePool",
            # A cache that hangs costs a request no more than hot state's would.
            "socket_connect_timeout": REDIS_SOCKET_TIMEOUT_S,
            "socket_timeout": REDIS_SOCKET_TIMEOUT_S,
        },
    }
}
