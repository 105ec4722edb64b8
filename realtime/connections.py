"""Open job sockets per user, counted across every web process: at most
WEBSOCKET_MAX_PER_USER at once.

In hot-state Redis, a sorted set per user (`websockets:user:<id>`) of socket ids scored by
when their place lapses. A socket takes its place when it opens (refused when the user's
count is full), renews it with every heartbeat, and gives it up when it closes. A place
that is not renewed within `place_lifetime_s()` (three heartbeats) lapses on its own, so
the sockets of a process that died are no longer counted soon after. Taking and renewing
are one Lua script, atomic across processes, on the Redis server's clock (one clock for
every host).

If Redis cannot be reached, a socket is let in uncounted and the failure logged, as the
initiate rate limits do: live progress stays up, and polling would cost the same.
"""

import logging
from contextlib import suppress
from functools import cache
from typing import Any

import redis
from django.conf import settings

from jobs import hotstate

logger = logging.getLogger(__name__)

# KEYS[1]: the user's sockets. ARGV: socket id, lifetime (s), the cap, or -1 to renew a
# place that the socket still holds (never one that lapsed or was given up: a renewal that
# ran late, after the socket closed, must not count it again). Returns 1 if the socket
# holds a place, 0 if not.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lifetime = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if cap < 0 or redis.call('ZCARD', KEYS[1]) >= cap then
    return 0
  end
end
redis.call('ZADD', KEYS[1], now + lifetime, ARGV[1])
redis.call('PEXPIRE', KEYS[1], math.ceil(lifetime * 1000))
return 1
"""


def _key(user_id: int) -> str:
    return f"websockets:user:{user_id}"


@cache
def _take_script() -> Any:
    return hotstate.client().register_script(_TAKE)


def place_lifetime_s() -> float:
    """Three heartbeats: a live socket renews its place twice before it could lapse."""
    return 3 * settings.WEBSOCKET_HEARTBEAT_S


def websocket_place_take(*, user_id: int, socket_id: str) -> bool | None:
    """True if the socket now holds a place, False if the user's sockets are at the cap,
    None if Redis could not be asked (the socket is not counted)."""
    try:
        taken = _take_script()(
            keys=[_key(user_id)], args=[socket_id, place_lifetime_s(), settings.WEBSOCKET_MAX_PER_USER]
        )
    except redis.RedisError:
        logger.warning("Could not count the sockets of user %s: let in uncounted", user_id, exc_info=True)
        return None
    return bool(taken)


def websocket_place_renew(*, user_id: int, socket_id: str) -> None:
    """Pushes the place's lapse back by a lifetime. A place that lapsed (its process
    stalled for three heartbeats) is not taken again: the socket goes on uncounted."""
    # On a Redis error the next heartbeat tries again; meanwhile the place may lapse.
    with suppress(redis.RedisError):
        _take_script()(keys=[_key(user_id)], args=[socket_id, place_lifetime_s(), -1])


def websocket_place_give_up(*, user_id: int, socket_id: str) -> None:
    with suppress(redis.RedisError):  # else it lapses on its own
        hotstate.client().zrem(_key(user_id), socket_id)
