"""A circuit breaker per origin, its state in hot-state Redis, shared by every process.

A job asks `allow()` before it contacts the origin and reports the attempt's outcome with
`record_success()` or `record_failure()` when the download has ended, minutes later.
Closed, every caller goes through and outcomes are counted over a rolling window of
ORIGIN_BREAKER_WINDOW_S; a failure that brings failures / outcomes to
ORIGIN_BREAKER_FAILURE_RATIO, with at least ORIGIN_BREAKER_MIN_CALLS outcomes, opens it.
Open, callers are told how long to wait; after ORIGIN_BREAKER_OPEN_S it is half-open and
exactly one caller, the probe, goes through: its success closes the breaker (and clears
the counts), its failure opens it again. A probe whose outcome never comes (its worker
was killed) frees the slot after ORIGIN_BREAKER_PROBE_TIMEOUT_S. In half-open any outcome
is the verdict, also that of a download started before the breaker opened: a file served
whole, or a fresh failure, says as much about the origin as the probe would.

Hand-written rather than pybreaker: pybreaker's Redis storage lets every process that
sees half-open through at once, and it wraps a call, while our outcome arrives only after
a streamed download has ended, possibly in another process.

In Redis (db of REDIS_STATE_URL), for breaker NAME:
- `breaker:{NAME}:state`, a hash: state, opened_at, retry_at, probe_until, probes.
  No hash means closed.
- `breaker:{NAME}:failures` and `breaker:{NAME}:successes`: the rolling window as
  per-second buckets, hashes of epoch second -> count. Buckets bound the memory (at most
  WINDOW_S fields each, however busy the origin) where a sorted set of timestamps would
  hold one member per outcome; a count is exact to the second, which is all a 60 s
  window needs. Each script drops the buckets that have left the window.
- `breakers`: the set of names, so that metrics and the admin can list them.
Every transition is one Lua script on the first three keys (one hash slot, thanks to the
`{NAME}` tag), so it is atomic across processes; times come from the Redis server's clock
(one clock for every host) unless a clock is injected (tests). Every key expires after
`_ttl_s()` without a write. A Redis error never stops a job: `allow()` fails open and the
record calls log it and return.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Literal, cast
from urllib.parse import urlsplit

import redis
from django.conf import settings
from redis.commands.core import Script

from infra.redis import state_client
from jobs import metrics

logger = logging.getLogger(__name__)

BreakerStateName = Literal["closed", "open", "half_open"]
# Half-open with the probe in flight: callers come back this soon (or when the probe times out).
HALF_OPEN_WAIT_S = 5.0
MIN_WAIT_S = 1.0
REGISTRY_KEY = "breakers"

# KEYS: state, failures, successes. ARGV[1]: now in epoch seconds, or "" for the server's
# clock; ARGV[2]: the window in seconds.
_PRELUDE = """
local state_key, failures_key, successes_key = KEYS[1], KEYS[2], KEYS[3]
local now = tonumber(ARGV[1])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local oldest = math.floor(now) - tonumber(ARGV[2]) + 1
-- The sum of the buckets still in the window; with prune, drops the others.
local function count(key, prune)
  local total = 0
  local raw = redis.call('HGETALL', key)
  for i = 1, #raw, 2 do
    if tonumber(raw[i]) < oldest then
      if prune then redis.call('HDEL', key, raw[i]) end
    else
      total = total + tonumber(raw[i + 1])
    end
  end
  return total
end
"""

# ARGV[3]: probe timeout (s), ARGV[4]: the wait while a probe is in flight (s), ARGV[5]: TTL.
# Returns {wait, event}: wait "" lets the caller through, else the seconds to wait;
# event: "" or "probe" (this caller took the probe slot).
_ALLOW = (
    _PRELUDE
    + """
local st = redis.call('HMGET', state_key, 'state', 'retry_at', 'probe_until')
local state = st[1] or 'closed'
if state == 'closed' then return {'', ''} end
if state == 'open' then
  local retry_at = tonumber(st[2])
  if now < retry_at then return {tostring(retry_at - now), ''} end
else
  local probe_until = tonumber(st[3])
  if now < probe_until then return {tostring(math.min(tonumber(ARGV[4]), probe_until - now)), ''} end
end
redis.call('HSET', state_key, 'state', 'half_open', 'probe_until', tostring(now + tonumber(ARGV[3])))
redis.call('HINCRBY', state_key, 'probes', 1)
redis.call('EXPIRE', state_key, ARGV[5])
return {'', 'probe'}
"""
)

# ARGV[3]: "f" or "s", ARGV[4]: min calls, ARGV[5]: failure ratio, ARGV[6]: open (s),
# ARGV[7]: TTL. Returns {event, failures, successes}; event: "", "opened", "reopened", "closed".
_RECORD = (
    _PRELUDE
    + """
local failed = ARGV[3] == 'f'
redis.call('HINCRBY', failed and failures_key or successes_key, tostring(math.floor(now)), 1)
local failures, successes = count(failures_key, true), count(successes_key, true)
local st = redis.call('HMGET', state_key, 'state', 'retry_at')
local state = st[1] or 'closed'
if state == 'open' and now >= tonumber(st[2]) then state = 'half_open' end  -- past its open time
local event = ''
local function open()
  redis.call('HSET', state_key, 'state', 'open', 'opened_at', tostring(now),
             'retry_at', tostring(now + tonumber(ARGV[6])), 'probes', 0)
  redis.call('HDEL', state_key, 'probe_until')
end
if state == 'half_open' then
  if failed then
    open()
    event = 'reopened'
  else
    redis.call('DEL', failures_key, successes_key)
    redis.call('HSET', state_key, 'state', 'closed')
    redis.call('HDEL', state_key, 'opened_at', 'retry_at', 'probe_until', 'probes')
    failures, successes = 0, 0
    event = 'closed'
  end
elseif state == 'closed' and failed then
  local total = failures + successes
  if total >= tonumber(ARGV[4]) and failures / total >= tonumber(ARGV[5]) then
    open()
    event = 'opened'
  end
end
for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, ARGV[7]) end
return {event, tostring(failures), tostring(successes)}
"""
)

# Returns {exists, now, state, opened_at, retry_at, probe_until, probes, failures, successes}.
_READ = (
    _PRELUDE
    + """
local st = redis.call('HMGET', state_key, 'state', 'opened_at', 'retry_at', 'probe_until', 'probes')
return {redis.call('EXISTS', state_key, failures_key, successes_key), tostring(now),
        st[1] or 'closed', st[2] or '', st[3] or '', st[4] or '', st[5] or '0',
        tostring(count(failures_key, false)), tostring(count(successes_key, false))}
"""
)


@dataclass(frozen=True)
class BreakerState:
    name: str
    state: BreakerStateName
    failures: int  # in the window
    successes: int  # in the window
    opened_at: datetime | None  # when it last opened; None when closed
    # When the next caller will be let through: open, when it half-opens; half-open with
    # the probe in flight, when the probe times out. None when callers go through now.
    retry_at: datetime | None
    probes: int  # probes let through since it last opened


def origin_breaker_name() -> str:
    """The breaker of the configured origin: `http:<host>:<port>`, `directory` or `synthetic`."""
    if settings.ORIGIN != "http":
        return str(settings.ORIGIN)
    url = urlsplit(settings.ORIGIN_URL_TEMPLATE)
    host = (url.hostname or "").lower()
    if ":" in host:  # IPv6
        host = f"[{host}]"
    port = url.port or {"http": 80, "https": 443}.get(url.scheme, 0)
    return f"http:{host}:{port}"


def _ttl_s() -> int:
    """Long enough that an open breaker outlives its open time and a probe's timeout."""
    return int(
        max(
            settings.HOT_STATE_TTL_S,
            settings.ORIGIN_BREAKER_WINDOW_S,
            settings.ORIGIN_BREAKER_OPEN_S + settings.ORIGIN_BREAKER_PROBE_TIMEOUT_S,
        )
    )


@dataclass(frozen=True)
class _Scripts:
    allow: Script
    record: Script
    read: Script


@cache
def _scripts(client: redis.Redis) -> _Scripts:
    return _Scripts(
        allow=client.register_script(_ALLOW),
        record=client.register_script(_RECORD),
        read=client.register_script(_READ),
    )


def _time(raw: bytes) -> datetime | None:
    return datetime.fromtimestamp(float(raw), tz=UTC) if raw else None


class OriginBreaker:
    """The breaker named `name`. Instances hold no state: two of them, in one process or
    two, are the same breaker. `clock` (epoch seconds) replaces the Redis server's clock."""

    def __init__(self, name: str, *, clock: Callable[[], float] | None = None) -> None:
        self.name = name
        self.clock = clock
        self.keys = [
            f"breaker:{{{name}}}:state",
            f"breaker:{{{name}}}:failures",
            f"breaker:{{{name}}}:successes",
        ]

    def _now(self) -> str:
        return "" if self.clock is None else repr(self.clock())

    def allow(self) -> float | None:
        """None: go ahead (closed, or this caller is the half-open probe). Else the seconds
        to wait before asking again. Fails open when Redis cannot be reached."""
        client = state_client()
        try:
            wait, event = _scripts(client).allow(
                keys=self.keys,
                args=[
                    self._now(),
                    settings.ORIGIN_BREAKER_WINDOW_S,
                    settings.ORIGIN_BREAKER_PROBE_TIMEOUT_S,
                    HALF_OPEN_WAIT_S,
                    _ttl_s(),
                ],
            )
        except redis.RedisError:
            logger.warning(
                "Circuit breaker %s: Redis unavailable, letting the call through", self.name, exc_info=True
            )
            return None
        if event == b"probe":
            logger.info("Circuit breaker %s half-open: one probe let through", self.name)
        return max(MIN_WAIT_S, float(wait)) if wait else None

    def record_success(self) -> None:
        self._record("s")

    def record_failure(self) -> None:
        self._record("f")

    def _record(self, outcome: Literal["s", "f"]) -> None:
        client = state_client()
        try:
            event, failures, successes = _scripts(client).record(
                keys=self.keys,
                args=[
                    self._now(),
                    settings.ORIGIN_BREAKER_WINDOW_S,
                    outcome,
                    settings.ORIGIN_BREAKER_MIN_CALLS,
                    settings.ORIGIN_BREAKER_FAILURE_RATIO,
                    settings.ORIGIN_BREAKER_OPEN_S,
                    _ttl_s(),
                ],
            )
            pipe = client.pipeline(transaction=False)
            pipe.sadd(REGISTRY_KEY, self.name)
            pipe.expire(REGISTRY_KEY, _ttl_s())
            pipe.execute()
        except redis.RedisError:
            logger.warning(
                "Circuit breaker %s: Redis unavailable, outcome not recorded", self.name, exc_info=True
            )
            return
        if event in (b"opened", b"reopened"):
            metrics.origin_circuit_opened(self.name)
            logger.warning(
                "Circuit breaker opened - too many failures: %s (%s failures, %s successes in %s s%s); "
                "open for %s s",
                self.name,
                int(failures),
                int(successes),
                settings.ORIGIN_BREAKER_WINDOW_S,
                ", the probe failed" if event == b"reopened" else "",
                settings.ORIGIN_BREAKER_OPEN_S,
            )
        elif event == b"closed":
            logger.info("Circuit breaker closed: %s (the probe succeeded)", self.name)

    def state(self) -> BreakerState:
        """As it is now (open past its open time reads half-open). Raises redis.RedisError."""
        found = self._read(state_client())
        return found if found is not None else BreakerState(self.name, "closed", 0, 0, None, None, 0)

    def _read(self, client: redis.Redis) -> BreakerState | None:
        raw = _scripts(client).read(keys=self.keys, args=[self._now(), settings.ORIGIN_BREAKER_WINDOW_S])
        exists, now_raw, state_raw, opened_at, retry_at, probe_until, probes, failures, successes = raw
        if not exists:
            return None
        now = float(now_raw)
        state = cast(BreakerStateName, state_raw.decode())
        until = retry_at if state == "open" else probe_until if state == "half_open" else b""
        if until and float(until) <= now:
            state, until = "half_open", b""
        return BreakerState(
            name=self.name,
            state=state,
            failures=int(failures),
            successes=int(successes),
            opened_at=_time(opened_at),
            retry_at=_time(until),
            probes=int(probes),
        )

    def reset(self) -> None:
        """Closes it and clears its counts (operators). Raises redis.RedisError."""
        state_key, failures_key, successes_key = self.keys
        pipe = state_client().pipeline(transaction=True)
        pipe.delete(failures_key, successes_key)
        pipe.hdel(state_key, "opened_at", "retry_at", "probe_until", "probes")
        pipe.hset(state_key, "state", "closed")
        pipe.expire(state_key, _ttl_s())
        pipe.execute()
        logger.info("Circuit breaker closed: %s (reset by an operator)", self.name)


def breakers_all(*, clock: Callable[[], float] | None = None) -> list[BreakerState]:
    """Every breaker with state in Redis, by name; forgets the names whose keys expired.
    Raises redis.RedisError."""
    client = state_client()
    found = []
    names = (raw.decode() if isinstance(raw, bytes) else raw for raw in client.smembers(REGISTRY_KEY))
    for name in sorted(names):
        state = OriginBreaker(name, clock=clock)._read(client)
        if state is None:
            client.srem(REGISTRY_KEY, name)
        else:
            found.append(state)
    return found
