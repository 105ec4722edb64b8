"""Per-origin protection: how many attempts run against one origin at once
(ORIGIN_MAX_IN_FLIGHT) and how fast they start (ORIGIN_START_RATE), across every worker
process, counted in hot-state Redis under the origin's breaker name
(`origin_breaker_name()`). A worker holds hundreds of jobs at once; without these a burst
of them would go straight at the origin.

In flight: a lease per running attempt. `origin:{NAME}:in_flight` is a sorted set of job
ids scored by the expiry of their lease (epoch seconds). Taking one is one Lua script, on
the Redis server's clock unless a clock is injected (tests): it drops the expired leases,
then adds the job if it holds a lease already (so retaking is a renew: a job sent again
is never held back by its own lease) or if fewer than the limit are held. The attempt
renews its lease at each heartbeat (AttemptHooks._beat) and gives it back when it ends,
however it ends (`download_job_run`'s `finally`). A worker killed outright never gives
its leases back: they expire after `lease_ttl_s()`.

Rate: a moving window of starts per origin, counted by jobs/rates.py's limiter (the one
of the initiate limits), under `ratelimit:LIMITER/origin-start/NAME/...`.

A start takes both, and a refusal of one must not use up the other: the lease is taken
first, as it can be given back exactly; the rate is then only tested, and counted by
`start_count()` once the job really starts, after the circuit breaker has let it through.
So a job held back by the rate or the breaker gives its lease back, and a job held back
by the lease or the breaker takes nothing from the rate. (Two workers may both see room
for the last start in the window and both start: the rate is then exceeded by one, for
the milliseconds between the test and the count; the lease is exact.)

A job that may not start is told how long to wait, jittered so that hundreds of held jobs
do not all come back at the same instant. A Redis error never stops a job: the limits
then let it start.
"""

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Literal

import redis
from django.conf import settings
from redis.commands.core import Script

from infra.redis import state_client
from jobs import metrics
from jobs.rates import rate_limiter, rate_parse
from jobs.transfer.breaker import origin_breaker_name

logger = logging.getLogger(__name__)

LimitName = Literal["in_flight", "start_rate"]

# Held by the in-flight limit: a slot frees whenever any running job ends, so the job asks
# again soon, after a wait drawn between IN_FLIGHT_WAIT_MIN_S and three times its last one
# ("decorrelated jitter"), at most IN_FLIGHT_WAIT_MAX_S: the held jobs spread out, and the
# longer they wait the less often they ask.
IN_FLIGHT_WAIT_MIN_S = 1.0
IN_FLIGHT_WAIT_MAX_S = 10.0
# Held by the rate: the job asks again once the window allows one more start, plus up to
# this much (at most the window), so that the jobs held together do not all come back at once.
RATE_WAIT_SPREAD_S = 10.0
MIN_WAIT_S = 0.5

# KEYS[1]: the leases. ARGV[1]: now in epoch seconds, or "" for the server's clock;
# ARGV[2]: the job id; ARGV[3]: the lease's time to live (s); ARGV[4]: the limit, 0 for
# none (a renew: the running attempt keeps or takes back its lease whatever the count).
# Returns {1 if held, the leases held}.
_TAKE = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local ttl, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
local held = redis.call('ZSCORE', key, ARGV[2])
local count = redis.call('ZCARD', key)
if not held and limit > 0 and count >= limit then
  return {0, count}
end
redis.call('ZADD', key, now + ttl, ARGV[2])
redis.call('EXPIRE', key, math.ceil(ttl))
if not held then count = count + 1 end
return {1, count}
"""


@cache
def _take_script(client: redis.Redis) -> Script:
    return client.register_script(_TAKE)


def lease_ttl_s() -> float:
    """How long a lease outlives its last renewal. A live attempt renews it with each
    heartbeat: every JOB_HEARTBEAT_INTERVAL_S while chunks flow, and one chunk may take
    up to ORIGIN_READ_TIMEOUT_S to come (its first, after the connection and the upload's
    opening, a little more). JOB_HEARTBEAT_STALE_S, past which the reaper takes an
    attempt for dead, is set on that reasoning (the settings refuse one below twice their
    sum): a live attempt never loses its lease between two beats, and the lease of an
    attempt whose worker died lasts as long as the reaper would wait for it."""
    return float(settings.JOB_HEARTBEAT_STALE_S)


@dataclass(frozen=True)
class OriginBusy:
    """Why a job may not start against the origin now, and when it should ask again."""

    limit: LimitName
    wait_s: float  # jittered
    message: str  # for the job's owner: its status says why it waits
    why: str  # for the log


class OriginLimits:
    """The limits of the origin named `name`. Instances hold no state: two of them, in one
    process or two, are the same limits. `clock` (epoch seconds) replaces the Redis
    server's clock for the leases; `uniform` draws the jitter of the waits."""

    def __init__(
        self,
        name: str,
        *,
        clock: Callable[[], float] | None = None,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.name = name
        self.clock = clock
        self.uniform = uniform
        self.key = f"origin:{{{name}}}:in_flight"

    def take(self, *, job_id: str, waited_s: float = 0.0) -> OriginBusy | None:
        """Takes the job's lease (with an in-flight limit) and tests the start rate (with
        one). None: the job may start; the caller counts the start with `start_count()`
        once it starts, or gives the lease back with `release()`. Else why it may not and
        how long it waits (`waited_s`: its last wait for these limits, from which the next
        grows); nothing is held. Lets the job start when Redis cannot be reached."""
        client = state_client()
        limit = settings.ORIGIN_MAX_IN_FLIGHT
        try:
            if limit and not self._lease(client, job_id=job_id, limit=limit):
                return self._refused(
                    "in_flight",
                    wait_s=self._in_flight_wait_s(waited_s),
                    message=f"Waiting: the origin already serves {limit} jobs at once",
                    why=f"the origin's in-flight limit ({limit})",
                )
            if (rate := settings.ORIGIN_START_RATE) and not self._rate_test(client, rate):
                if limit:
                    client.zrem(self.key, job_id)
                return self._refused(
                    "start_rate",
                    wait_s=self._rate_wait_s(client, rate),
                    message=f"Waiting: at most {rate} jobs may start against the origin",
                    why=f"the origin's start rate ({rate})",
                )
        except redis.RedisError:
            logger.warning(
                "Origin limits %s: Redis unavailable, letting the job start", self.name, exc_info=True
            )
        return None

    def start_count(self) -> None:
        """Counts a start against the rate: the job taken is starting."""
        if not (rate := settings.ORIGIN_START_RATE):
            return
        try:
            rate_limiter(state_client()).hit(rate_parse(rate), "origin-start", self.name)
        except redis.RedisError:
            logger.warning("Origin limits %s: Redis unavailable, start not counted", self.name, exc_info=True)

    def renew(self, *, job_id: str) -> None:
        """The running attempt keeps its lease, or takes it back if it was lost (Redis
        restarted, or an older attempt of the job gave it back): an attempt that runs
        counts, whatever the count."""
        if not settings.ORIGIN_MAX_IN_FLIGHT:
            return
        try:
            self._lease(state_client(), job_id=job_id, limit=0)
        except redis.RedisError:
            logger.warning("Origin limits %s: Redis unavailable, lease not renewed", self.name, exc_info=True)

    def release(self, *, job_id: str) -> None:
        """Gives the job's lease back: its attempt has ended (or never started)."""
        if not settings.ORIGIN_MAX_IN_FLIGHT:
            return
        try:
            state_client().zrem(self.key, job_id)
        except redis.RedisError:
            logger.warning(
                "Origin limits %s: Redis unavailable, lease left to expire", self.name, exc_info=True
            )

    def _lease(self, client: redis.Redis, *, job_id: str, limit: int) -> bool:
        now = "" if self.clock is None else repr(self.clock())
        taken, _ = _take_script(client)(keys=[self.key], args=[now, job_id, lease_ttl_s(), limit])
        return bool(taken)

    def _rate_test(self, client: redis.Redis, rate: str) -> bool:
        return rate_limiter(client).test(rate_parse(rate), "origin-start", self.name)

    def _in_flight_wait_s(self, waited_s: float) -> float:
        longest = max(IN_FLIGHT_WAIT_MIN_S, waited_s) * 3
        return min(IN_FLIGHT_WAIT_MAX_S, self.uniform(IN_FLIGHT_WAIT_MIN_S, longest))

    def _rate_wait_s(self, client: redis.Redis, rate: str) -> float:
        """Until the window allows one more start (the limiter's clock is its own:
        `time.time()`), plus a spread."""
        item = rate_parse(rate)
        window = rate_limiter(client).get_window_stats(item, "origin-start", self.name)
        until_s = max(MIN_WAIT_S, window.reset_time - time.time())
        return until_s + self.uniform(0.0, min(RATE_WAIT_SPREAD_S, float(item.get_expiry())))

    def _refused(self, limit: LimitName, *, wait_s: float, message: str, why: str) -> OriginBusy:
        metrics.origin_limit_refused(self.name, limit)
        return OriginBusy(limit=limit, wait_s=wait_s, message=message, why=why)


def origin_lease_renew(*, job_id: str) -> None:
    """The running attempt's heartbeat keeps its lease on the configured origin."""
    if settings.ORIGIN_MAX_IN_FLIGHT:
        OriginLimits(origin_breaker_name()).renew(job_id=job_id)
