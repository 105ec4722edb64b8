"""The per-origin limits (jobs/transfer/origin_limits.py) against the real hot-state Redis:
the in-flight leases (held, refused, given back, expired, renewed, raced for), the start
rate, what a refusal takes from the other limit, the waits, failing open without Redis,
and the refusals on /metrics.

The leases' tests inject a clock (epoch seconds) instead of sleeping; each test uses an
origin name of its own and deletes its keys afterwards. The rate is counted by the `limits`
library on its own clock (`time.time()`): its window test waits out a one-second window."""

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast
from uuid import uuid4

import pytest
from django.test import Client
from prometheus_client import REGISTRY

from infra.redis import state_client
from jobs.rates import rate_limiter, rate_parse
from jobs.transfer.origin_limits import (
    IN_FLIGHT_WAIT_MAX_S,
    IN_FLIGHT_WAIT_MIN_S,
    RATE_WAIT_SPREAD_S,
    OriginBusy,
    OriginLimits,
    lease_ttl_s,
)
from tests.support.clocks import Clock
from tests.support.scrapes import samples

T0 = 1_800_000_000.0


def lowest(low: float, high: float) -> float:
    return low


def highest(low: float, high: float) -> float:
    return high


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def name() -> Iterator[str]:
    """An origin of this test's own; its leases forgotten afterwards (its rate by the
    suite's reset of every rate)."""
    made = f"test:{uuid4().hex[:12]}"
    yield made
    state_client().delete(OriginLimits(made).key)


@pytest.fixture
def in_flight(settings: Any) -> Any:
    settings.ORIGIN_MAX_IN_FLIGHT = 2
    settings.ORIGIN_START_RATE = ""
    return settings


def refused_total(name: str, limit: str) -> float:
    return (
        REGISTRY.get_sample_value("download_origin_limit_refused_total", {"origin": name, "limit": limit})
        or 0.0
    )


def held(limits: OriginLimits) -> list[str]:
    return sorted(raw.decode() for raw in cast(list[bytes], state_client().zrange(limits.key, 0, -1)))


# --- in flight ----------------------------------------------------------------------------------


def test_the_limit_holds_n_leases_and_refuses_one_more(name, clock, in_flight) -> None:
    limits = OriginLimits(name, clock=clock, uniform=lowest)
    before = refused_total(name, "in_flight")

    assert limits.take(job_id="job_a") is None
    assert limits.take(job_id="job_b") is None
    busy = limits.take(job_id="job_c")

    assert busy == OriginBusy(
        limit="in_flight",
        wait_s=IN_FLIGHT_WAIT_MIN_S,
        message="Waiting: the origin already serves 2 jobs at once",
        why="the origin's in-flight limit (2)",
    )
    assert held(limits) == ["job_a", "job_b"]
    assert refused_total(name, "in_flight") == before + 1


def test_a_release_frees_one(name, clock, in_flight) -> None:
    limits = OriginLimits(name, clock=clock)
    limits.take(job_id="job_a")
    limits.take(job_id="job_b")

    limits.release(job_id="job_a")

    assert limits.take(job_id="job_c") is None
    assert limits.take(job_id="job_d") is not None
    assert held(limits) == ["job_b", "job_c"]


def test_an_expired_lease_frees_one(name, clock, in_flight) -> None:
    limits = OriginLimits(name, clock=clock)
    limits.take(job_id="job_a")
    clock.advance(10)
    limits.take(job_id="job_b")

    clock.advance(lease_ttl_s() - 10 - 1)
    assert limits.take(job_id="job_c") is not None  # job_a's lease has a second left
    clock.advance(1)

    assert limits.take(job_id="job_c") is None
    assert held(limits) == ["job_b", "job_c"]


def test_retaking_by_the_same_job_is_a_renew(name, clock, in_flight) -> None:
    limits = OriginLimits(name, clock=clock)
    limits.take(job_id="job_a")
    limits.take(job_id="job_b")
    clock.advance(lease_ttl_s() - 1)

    assert limits.take(job_id="job_a") is None  # full, but job_a holds a lease already
    clock.advance(2)  # past job_b's lease, not job_a's renewed one

    assert held(limits) == ["job_a", "job_b"]  # expired leases are dropped by the next take
    assert limits.take(job_id="job_c") is None
    assert limits.take(job_id="job_d") is not None
    assert held(limits) == ["job_a", "job_c"]


def test_the_heartbeats_renewal_keeps_a_lease_and_takes_a_lost_one_back_whatever_the_count(
    name, clock, in_flight
) -> None:
    limits = OriginLimits(name, clock=clock)
    limits.take(job_id="job_a")
    clock.advance(lease_ttl_s() - 1)
    limits.renew(job_id="job_a")
    clock.advance(2)
    assert limits.take(job_id="job_b") is None
    assert limits.take(job_id="job_c") is not None  # job_a's renewed lease still counts

    limits.release(job_id="job_a")  # lost (as after a Redis restart), while it runs on
    limits.take(job_id="job_c")
    limits.renew(job_id="job_a")

    assert held(limits) == ["job_a", "job_b", "job_c"]  # over the limit: a running attempt counts


def test_a_live_attempt_renews_its_lease_well_within_its_life(settings) -> None:
    # A beat comes at the latest one heartbeat interval plus one slow chunk after the last.
    longest_gap_s = settings.JOB_HEARTBEAT_INTERVAL_S + settings.ORIGIN_READ_TIMEOUT_S

    assert lease_ttl_s() == settings.JOB_HEARTBEAT_STALE_S
    assert lease_ttl_s() > 2 * longest_gap_s


def test_many_threads_racing_for_the_slots_take_exactly_the_limit(name, in_flight) -> None:
    in_flight.ORIGIN_MAX_IN_FLIGHT = 3
    limits = OriginLimits(name)  # the Redis server's clock

    with ThreadPoolExecutor(max_workers=16) as pool:
        verdicts = list(pool.map(lambda n: limits.take(job_id=f"job_{n}"), range(40)))

    assert sum(verdict is None for verdict in verdicts) == 3
    assert len(held(limits)) == 3


def test_without_a_clock_leases_expire_on_the_redis_servers(name, in_flight) -> None:
    limits = OriginLimits(name)
    limits.take(job_id="job_a")

    ((member, expiry),) = cast(
        list[tuple[bytes, float]], state_client().zrange(limits.key, 0, -1, withscores=True)
    )
    assert member == b"job_a"
    assert abs(expiry - (time.time() + lease_ttl_s())) < 5
    assert 0 < state_client().ttl(limits.key) <= lease_ttl_s()


def test_the_wait_for_a_slot_is_short_jittered_and_grows_with_the_last_one(name, clock, in_flight) -> None:
    full = [OriginLimits(name, clock=clock, uniform=draw) for draw in (lowest, highest)]
    full[0].take(job_id="job_a")
    full[0].take(job_id="job_b")

    def waits(waited_s: float) -> list[float]:
        return [busy.wait_s for limits in full if (busy := limits.take(job_id="job_c", waited_s=waited_s))]

    assert waits(0) == [IN_FLIGHT_WAIT_MIN_S, 3 * IN_FLIGHT_WAIT_MIN_S]
    assert waits(2) == [IN_FLIGHT_WAIT_MIN_S, 6]
    assert waits(60) == [IN_FLIGHT_WAIT_MIN_S, IN_FLIGHT_WAIT_MAX_S]


def test_no_limit_takes_nothing(name, clock, settings) -> None:
    settings.ORIGIN_MAX_IN_FLIGHT = 0
    settings.ORIGIN_START_RATE = ""
    limits = OriginLimits(name, clock=clock)

    assert all(limits.take(job_id=f"job_{n}") is None for n in range(50))
    limits.start_count()
    limits.renew(job_id="job_1")

    assert not state_client().exists(limits.key)


# --- the start rate -----------------------------------------------------------------------------


def test_the_rate_refuses_past_it_and_allows_after_the_window(name, settings) -> None:
    settings.ORIGIN_MAX_IN_FLIGHT = 0
    settings.ORIGIN_START_RATE = "2/second"
    limits = OriginLimits(name, uniform=lowest)
    before = refused_total(name, "start_rate")
    for job_id in ("job_a", "job_b"):
        assert limits.take(job_id=job_id) is None
        limits.start_count()

    busy = limits.take(job_id="job_c")

    assert busy is not None
    assert (busy.limit, busy.message, busy.why) == (
        "start_rate",
        "Waiting: at most 2/second jobs may start against the origin",
        "the origin's start rate (2/second)",
    )
    assert 0.5 <= busy.wait_s <= 1.0  # until the first start leaves the window
    assert refused_total(name, "start_rate") == before + 1
    time.sleep(busy.wait_s + 0.05)
    assert limits.take(job_id="job_c") is None


def test_the_rate_only_counts_starts(name, settings) -> None:
    settings.ORIGIN_MAX_IN_FLIGHT = 0
    settings.ORIGIN_START_RATE = "1/minute"
    limits = OriginLimits(name)

    assert [limits.take(job_id=f"job_{n}") for n in range(3)] == [None, None, None]  # tested, not counted
    limits.start_count()

    assert limits.take(job_id="job_x") is not None


def test_the_wait_for_the_rate_runs_to_the_windows_reset_plus_a_spread(name, settings) -> None:
    settings.ORIGIN_MAX_IN_FLIGHT = 0
    settings.ORIGIN_START_RATE = "1/minute"
    early, late = (OriginLimits(name, uniform=draw) for draw in (lowest, highest))
    early.start_count()

    first, last = early.take(job_id="job_b"), late.take(job_id="job_b")

    assert first is not None
    assert last is not None
    assert 58 < first.wait_s <= 60
    assert last.wait_s == pytest.approx(first.wait_s + RATE_WAIT_SPREAD_S, abs=0.5)


def test_a_start_the_rate_refuses_gives_its_lease_back(name, clock, settings) -> None:
    settings.ORIGIN_MAX_IN_FLIGHT = 2
    settings.ORIGIN_START_RATE = "1/minute"
    limits = OriginLimits(name, clock=clock)
    assert limits.take(job_id="job_a") is None
    limits.start_count()

    busy = limits.take(job_id="job_b")

    assert busy is not None
    assert busy.limit == "start_rate"
    assert held(limits) == ["job_a"]


def test_a_start_the_lease_refuses_takes_nothing_from_the_rate(name, clock, settings) -> None:
    settings.ORIGIN_MAX_IN_FLIGHT = 1
    settings.ORIGIN_START_RATE = "2/minute"
    limits = OriginLimits(name, clock=clock)
    assert limits.take(job_id="job_a") is None
    limits.start_count()

    for _ in range(3):
        busy = limits.take(job_id="job_b")
        assert busy is not None
        assert busy.limit == "in_flight"

    window = rate_limiter(state_client()).get_window_stats(rate_parse("2/minute"), "origin-start", name)
    assert window.remaining == 1
    limits.release(job_id="job_a")
    assert limits.take(job_id="job_b") is None


# --- Redis down, /metrics -----------------------------------------------------------------------


def test_without_redis_jobs_start_and_nothing_raises(name, redis_down, settings, caplog) -> None:
    settings.ORIGIN_MAX_IN_FLIGHT = 1
    settings.ORIGIN_START_RATE = "1/minute"
    limits = OriginLimits(name)

    with caplog.at_level(logging.WARNING, logger="jobs.transfer.origin_limits"):
        assert limits.take(job_id="job_a") is None
        limits.start_count()
        limits.renew(job_id="job_a")
        limits.release(job_id="job_a")

    assert [r.getMessage() for r in caplog.records] == [
        f"Origin limits {name}: Redis unavailable, letting the job start",
        f"Origin limits {name}: Redis unavailable, start not counted",
        f"Origin limits {name}: Redis unavailable, lease not renewed",
        f"Origin limits {name}: Redis unavailable, lease left to expire",
    ]


@pytest.mark.django_db
def test_metrics_count_the_refusals_of_each_limit(client: Client, name, clock, settings) -> None:
    settings.ORIGIN_MAX_IN_FLIGHT = 1
    settings.ORIGIN_START_RATE = "1/minute"
    limits = OriginLimits(name, clock=clock)
    limits.take(job_id="job_a")
    limits.start_count()
    limits.take(job_id="job_b")
    limits.take(job_id="job_b")
    limits.release(job_id="job_a")
    limits.take(job_id="job_b")

    found = samples(client.get("/metrics").content.decode())

    assert found[("download_origin_limit_refused_total", (("limit", "in_flight"), ("origin", name)))] == 2
    assert found[("download_origin_limit_refused_total", (("limit", "start_rate"), ("origin", name)))] == 1
