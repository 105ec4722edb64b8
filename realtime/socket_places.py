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

Redis is asked on the event loop (`infra.redis.state_async_client`), not from a thread: a socket's
open and close cost no thread hop. The places given up in one turn of the loop (a burst of
jobs ending, a deploy closing every socket) go to Redis in one round trip.
"""

import asyncio
import logging
import weakref
from contextlib import suppress
from typing import Any

import redis
from django.conf import settings

from infra.redis import state_async_client

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


async def _take(user_id: int, socket_id: str, cap: int) -> Any:
    # A script object belongs to its client, and each event loop has a client of its own.
    script = state_async_client().register_script(_TAKE)
    return await script(keys=[_key(user_id)], args=[socket_id, place_lifetime_s(), cap])


def place_lifetime_s() -> float:
    """Three heartbeats: a live socket renews its place twice before it could lapse."""
    return 3 * settings.WEBSOCKET_HEARTBEAT_S


async def websocket_place_take(*, user_id: int, socket_id: str) -> bool | None:
    """True if the socket now holds a place, False if the user's sockets are at the cap,
    None if Redis could not be asked (the socket is not counted)."""
    try:
        taken = await _take(user_id, socket_id, settings.WEBSOCKET_MAX_PER_USER)
    except redis.RedisError:
        logger.warning("Could not count the sockets of user %s: let in uncounted", user_id, exc_info=True)
        return None
    return bool(taken)


async def websocket_place_renew(*, user_id: int, socket_id: str) -> None:
    """Pushes the place's lapse back by a lifetime. A place that lapsed (its process
    stalled for three heartbeats) is not taken again: the socket goes on uncounted."""
    # On a Redis error the next heartbeat tries again; meanwhile the place may lapse.
    with suppress(redis.RedisError):
        await _take(user_id, socket_id, -1)


async def websocket_place_give_up(*, user_id: int, socket_id: str) -> None:
    """Frees the socket's place; returns once Redis has it (or could not be asked: the
    place then lapses on its own). The places given up while this one waits for its turn
    of the loop go in the same round trip."""
    await _GiveUps.of_this_loop().give_up(user_id, socket_id)


class _GiveUps:
    """The places given up on one event loop and not yet sent to Redis. The first one
    starts a batch, a task that runs on the next turn of the loop; those given up until then
    join it. The batch is one pipeline: a ZREM per user."""

    def __init__(self) -> None:
        self.pending: dict[int, list[str]] = {}
        self.batch: asyncio.Task[None] | None = None

    @classmethod
    def of_this_loop(cls) -> "_GiveUps":
        loop = asyncio.get_running_loop()
        found = _give_ups.get(loop)
        if found is None:
            found = _give_ups[loop] = cls()
        return found

    async def give_up(self, user_id: int, socket_id: str) -> None:
        self.pending.setdefault(user_id, []).append(socket_id)
        if self.batch is None:
            self.batch = asyncio.ensure_future(self._send())
        # Shielded: a caller cancelled while it waits does not cancel the others' batch.
        await asyncio.shield(self.batch)

    async def _send(self) -> None:
        pending, self.pending, self.batch = self.pending, {}, None
        try:
            pipe = state_async_client().pipeline(transaction=False)
            for user_id, socket_ids in pending.items():
                pipe.zrem(_key(user_id), *socket_ids)
            await pipe.execute()
        except redis.RedisError:
            # They lapse on their own, within three heartbeats.
            logger.warning(
                "Could not give up %d socket places", sum(map(len, pending.values())), exc_info=True
            )


_give_ups: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _GiveUps]" = weakref.WeakKeyDictionary()
