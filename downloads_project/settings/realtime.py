"""The channel layer and the job sockets (realtime/)."""

from datetime import date
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

from downloads_project.settings.environment import env
from downloads_project.settings.redis import CHANNEL_LAYER_URL, REDIS_SENTINEL_MASTER, REDIS_SENTINELS
from infra import redis as redis_clients

# The channel layer (realtime/, jobs/events.py), both channels-redis:
# - "pubsub" (RedisPubSubChannelLayer): a group send is one PUBLISH, and each web process
#   holds one subscription connection that Redis pushes its sockets' events down. No
#   per-channel capacity or expiry (a process that falls behind buffers in memory), and
#   what is published while a process is disconnected from Redis is lost: its sockets'
#   periodic resync (WEBSOCKET_RESYNC_S) reads a finished job's end from its row.
#   Pub/sub ignores the database number, so the prefix carries it.
# - "core" (RedisChannelLayer): per-process lists in Redis, popped one message per round
#   trip; a group send costs several commands and a Lua call per member's process, and
#   each process's inbox holds at most `capacity` messages (more are dropped).
CHANNEL_LAYER_BACKEND = env("CHANNEL_LAYER_BACKEND", default="pubsub")
_channel_layer_db = urlsplit(CHANNEL_LAYER_URL).path.strip("/") or "0"
if CHANNEL_LAYER_BACKEND == "pubsub":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {
                # Publishes and (un)subscribes take one connection at a time; the read of
                # the subscription passes its own timeout. The health check pings an idle
                # subscription, so a dead connection is found and subscribed again.
                "hosts": [{"address": CHANNEL_LAYER_URL, "socket_timeout": 30, "health_check_interval": 30}],
                "prefix": f"asgi.{_channel_layer_db}.",
            },
        }
    }
elif CHANNEL_LAYER_BACKEND == "core":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py 8 times out reads after 5 s by default, as long as channels_redis's
                # blocking receive waits: an idle consumer would die every 5 s. And its pool
                # fails instead of waiting when full, so a burst of handshakes needs room.
                "hosts": [{"address": CHANNEL_LAYER_URL, "socket_timeout": 30, "max_connections": 1000}],
                "capacity": 1000,
                "expiry": 30,
            },
        }
    }
else:
    raise ImproperlyConfigured(f"CHANNEL_LAYER_BACKEND is {CHANNEL_LAYER_BACKEND!r}: 'pubsub' or 'core'")

if REDIS_SENTINELS:
    # channels-redis finds the master through the sentinels itself.
    for _host in CHANNEL_LAYERS["default"]["CONFIG"]["hosts"]:  # type: ignore[index]
        _host.update(
            sentinels=REDIS_SENTINELS,
            master_name=REDIS_SENTINEL_MASTER,
            db=redis_clients.database(_host.pop("address")),
        )

PROGRESS_PUSH_INTERVAL_S = env.float("PROGRESS_PUSH_INTERVAL_S", default=0.25)
# A job's socket hears from the server at least this often while the job is active, so
# proxies that close idle connections (nginx 60 s, ALB) keep it.
WEBSOCKET_HEARTBEAT_S = env.float("WEBSOCKET_HEARTBEAT_S", default=15.0)
# A socket with no event of its job for this long re-reads the job (a dropped terminal
# event must not leave it open) ...
WEBSOCKET_RESYNC_S = env.float("WEBSOCKET_RESYNC_S", default=60.0)
# ... and is closed (4408) after this long without one: 10 minutes.
WEBSOCKET_IDLE_TIMEOUT_S = env.float("WEBSOCKET_IDLE_TIMEOUT_S", default=600.0)
# Sockets one user may hold open at once, counted on every web process (hot-state Redis);
# one more is closed 4429. The page opens one per active job (JOB_MAX_ACTIVE_PER_USER).
WEBSOCKET_MAX_PER_USER = env.int("WEBSOCKET_MAX_PER_USER", default=20)
# A job's websocket_url carries a signed ticket, not a credential: it opens that job's
# socket, for its owner, this long after it was minted (initiate, or an active job's status).
WEBSOCKET_TICKET_TTL_S = env.int("WEBSOCKET_TICKET_TTL_S", default=300)
# `?token=<key>` on a socket, from clients written before tickets: deprecated (a URL ends
# up in proxy logs), each use logged, and refused from the sunset date on unless set.
WEBSOCKET_TOKEN_QUERY_SUNSET = date(2027, 6, 30)
WEBSOCKET_TOKEN_QUERY_ALLOWED = env.bool(
    "WEBSOCKET_TOKEN_QUERY_ALLOWED", default=date.today() < WEBSOCKET_TOKEN_QUERY_SUNSET
)
