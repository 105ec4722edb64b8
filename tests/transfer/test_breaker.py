"""The circuit breaker per origin (jobs/transfer/breaker.py) against the real hot-state Redis: its
verdicts, its single half-open probe among concurrent threads and processes, its keys'
expiry, failing open without Redis, and how /metrics and the admin show it.

Most tests inject a clock (epoch seconds) instead of sleeping; each uses a breaker name
of its own and deletes its keys afterwards."""

import logging
import multiprocessing
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from prometheus_client import REGISTRY

from infra.redis import state_client
from jobs.transfer.breaker import (
    HALF_OPEN_WAIT_S,
    REGISTRY_KEY,
    BreakerState,
    OriginBreaker,
    _ttl_s,
    breakers_all,
    origin_breaker_name,
)
from tests.support import breaker_caller
from tests.support.clocks import Clock
from tests.support.scrapes import samples

T0 = 1_800_000_000.0
PAGE = "admin:jobs_downloadjob_analytics"
RESET = "admin:jobs_downloadjob_breaker_reset"


def at(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, tz=UTC)


@pytest.fixture(autouse=True)
def breaker_settings(settings: Any) -> None:
    settings.ORIGIN_BREAKER_WINDOW_S = 60
    settings.ORIGIN_BREAKER_MIN_CALLS = 5
    settings.ORIGIN_BREAKER_FAILURE_RATIO = 0.5
    settings.ORIGIN_BREAKER_OPEN_S = 30.0
    settings.ORIGIN_BREAKER_PROBE_TIMEOUT_S = 200.0


@pytest.fixture
def names() -> Iterator[list[str]]:
    """Breaker names of this test's own, forgotten afterwards."""
    made: list[str] = []
    yield made
    client = state_client()
    for name in made:
        client.delete(*OriginBreaker(name).keys)
        client.srem(REGISTRY_KEY, name)


@pytest.fixture
def name(names: list[str]) -> str:
    names.append(f"test:{uuid4().hex[:12]}")
    return names[-1]


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


def opened_total(name: str) -> float:
    return REGISTRY.get_sample_value("download_origin_circuit_opened_total", {"origin": name}) or 0.0


def trip(breaker: OriginBreaker) -> None:
    for _ in range(5):
        breaker.record_failure()
    assert breaker.state().state == "open"


# --- the name of the configured origin ---------------------------------------------------------


def test_the_name_of_the_configured_origin(settings: Any) -> None:
    settings.ORIGIN = "http"
    settings.ORIGIN_URL_TEMPLATE = "https://Files.Internal/get/{file_id}?x=1"
    assert origin_breaker_name() == "http:files.internal:443"
    settings.ORIGIN_URL_TEMPLATE = "http://127.0.0.1:8123/{file_id}"
    assert origin_breaker_name() == "http:127.0.0.1:8123"
    settings.ORIGIN_URL_TEMPLATE = "http://[::1]/files/{file_id}"
    assert origin_breaker_name() == "http:[::1]:80"
    settings.ORIGIN = "directory"
    assert origin_breaker_name() == "directory"
    settings.ORIGIN = "synthetic"
    assert origin_breaker_name() == "synthetic"


# --- closed ------------------------------------------------------------------------------------


def test_it_opens_when_failures_reach_the_ratio_with_enough_outcomes(name, clock, caplog) -> None:
    breaker = OriginBreaker(name, clock=clock)
    for record in (breaker.record_success, breaker.record_failure) * 2:
        record()
    assert breaker.state() == BreakerState(name, "closed", 2, 2, None, None, 0)  # 1/2, but 4 < MIN_CALLS
    breaker.record_success()
    assert breaker.allow() is None  # 2 of 5
    before = opened_total(name)

    with caplog.at_level(logging.INFO, logger="jobs.transfer.breaker"):
        breaker.record_failure()  # 3 of 6

    assert breaker.state() == BreakerState(name, "open", 3, 3, at(T0), at(T0 + 30), 0)
    assert opened_total(name) == before + 1
    [opened] = [r for r in caplog.records if "Circuit breaker opened - too many failures" in r.getMessage()]
    assert opened.levelno == logging.WARNING
    assert name in opened.getMessage()


def test_it_stays_closed_below_the_ratio(name, clock) -> None:
    breaker = OriginBreaker(name, clock=clock)
    for _ in range(5):
        breaker.record_success()
    for _ in range(4):
        breaker.record_failure()

    assert breaker.state() == BreakerState(name, "closed", 4, 5, None, None, 0)  # 4 of 9
    assert breaker.allow() is None


def test_no_verdict_on_fewer_than_min_calls(name, clock) -> None:
    breaker = OriginBreaker(name, clock=clock)
    for _ in range(4):
        breaker.record_failure()
    assert breaker.state().state == "closed"
    assert breaker.allow() is None

    breaker.record_failure()

    assert breaker.state().state == "open"


def test_outcomes_leave_the_rolling_window(name, clock) -> None:
    breaker = OriginBreaker(name, clock=clock)
    for _ in range(4):
        breaker.record_failure()
    clock.advance(59)
    assert breaker.state().failures == 4
    clock.advance(1)
    assert breaker.state().failures == 0

    breaker.record_failure()  # 1 of 1: too few outcomes for a verdict

    assert breaker.state() == BreakerState(name, "closed", 1, 0, None, None, 0)


# --- open and half-open ------------------------------------------------------------------------


def test_open_tells_callers_how_long_to_wait(name, clock) -> None:
    breaker = OriginBreaker(name, clock=clock)
    trip(breaker)

    assert breaker.allow() == 30.0
    clock.advance(10)
    assert breaker.allow() == 20.0
    breaker.record_failure()  # a late outcome of an earlier call: still open, same deadline
    assert breaker.state() == BreakerState(name, "open", 6, 0, at(T0), at(T0 + 30), 0)
    clock.advance(19.5)
    assert breaker.allow() == 1.0  # at least a second


def test_half_open_lets_exactly_one_of_many_concurrent_threads_through(name, clock) -> None:
    trip(OriginBreaker(name, clock=clock))
    clock.advance(30)
    assert OriginBreaker(name, clock=clock).state().state == "half_open"  # no probe taken yet
    callers = 32
    start = threading.Barrier(callers)

    def ask(_: int) -> float | None:
        breaker = OriginBreaker(name, clock=clock)
        start.wait()
        return breaker.allow()

    with ThreadPoolExecutor(callers) as pool:
        answers = list(pool.map(ask, range(callers)))

    assert answers.count(None) == 1
    assert set(answers) - {None} == {HALF_OPEN_WAIT_S}
    state = OriginBreaker(name, clock=clock).state()
    assert (state.state, state.probes, state.retry_at) == ("half_open", 1, at(T0 + 30 + 200))


def test_half_open_lets_exactly_one_of_many_concurrent_processes_through(name, clock) -> None:
    trip(OriginBreaker(name, clock=clock))
    context = multiprocessing.get_context("spawn")  # forking a multi-threaded process may deadlock
    callers = 8
    start = context.Barrier(callers)
    answers = context.Queue()
    processes = [
        context.Process(target=breaker_caller.ask, args=(name, T0 + 30, start, answers))
        for _ in range(callers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    got = [answers.get(timeout=5) for _ in range(callers)]

    assert got.count(None) == 1
    assert set(got) - {None} == {HALF_OPEN_WAIT_S}


def test_the_probes_success_closes_it_and_clears_the_counts(name, clock, caplog) -> None:
    breaker = OriginBreaker(name, clock=clock)
    trip(breaker)
    clock.advance(30)
    assert breaker.allow() is None  # the probe
    assert breaker.allow() == HALF_OPEN_WAIT_S
    assert breaker.state() == BreakerState(name, "half_open", 5, 0, at(T0), at(T0 + 230), 1)
    clock.advance(100)  # a long download

    with caplog.at_level(logging.INFO, logger="jobs.transfer.breaker"):
        breaker.record_success()

    assert breaker.state() == BreakerState(name, "closed", 0, 0, None, None, 0)
    assert breaker.allow() is None
    assert any(
        r.levelno == logging.INFO and r.getMessage().startswith(f"Circuit breaker closed: {name}")
        for r in caplog.records
    )


def test_an_outcome_past_the_open_time_is_the_verdict_before_any_probe(name, clock) -> None:
    breaker = OriginBreaker(name, clock=clock)
    trip(breaker)
    clock.advance(30)

    breaker.record_success()  # a download started before it opened ends well

    assert breaker.state() == BreakerState(name, "closed", 0, 0, None, None, 0)


def test_the_probes_failure_opens_it_again(name, clock, caplog) -> None:
    breaker = OriginBreaker(name, clock=clock)
    trip(breaker)
    clock.advance(30)
    assert breaker.allow() is None
    clock.advance(12)
    before = opened_total(name)

    with caplog.at_level(logging.WARNING, logger="jobs.transfer.breaker"):
        breaker.record_failure()

    assert breaker.state() == BreakerState(name, "open", 6, 0, at(T0 + 42), at(T0 + 72), 0)
    assert breaker.allow() == 30.0
    assert opened_total(name) == before + 1
    assert any("Circuit breaker opened - too many failures" in r.getMessage() for r in caplog.records)


def test_a_probe_never_reported_frees_the_slot_after_the_probe_timeout(name, clock) -> None:
    breaker = OriginBreaker(name, clock=clock)
    trip(breaker)
    clock.advance(30)
    assert breaker.allow() is None  # its worker dies: no outcome ever comes
    clock.advance(199)
    assert breaker.allow() == 1.0
    assert breaker.state().retry_at == at(T0 + 230)
    clock.advance(1)

    assert breaker.allow() is None  # the next probe
    assert breaker.allow() == HALF_OPEN_WAIT_S
    assert breaker.state() == BreakerState(name, "half_open", 0, 0, at(T0), at(T0 + 430), 2)


def test_two_instances_are_the_same_breaker(name, clock) -> None:
    here, there = OriginBreaker(name, clock=clock), OriginBreaker(name, clock=clock)
    for _ in range(3):
        here.record_failure()
    for _ in range(2):
        there.record_failure()

    assert here.state() == there.state() == BreakerState(name, "open", 5, 0, at(T0), at(T0 + 30), 0)
    assert there.allow() == 30.0
    clock.advance(30)
    assert here.allow() is None
    assert there.allow() == HALF_OPEN_WAIT_S
    there.record_success()
    assert here.state().state == "closed"


def test_without_a_clock_it_uses_the_redis_servers(name) -> None:
    breaker = OriginBreaker(name)
    trip(breaker)

    state = breaker.state()
    now = datetime.now(UTC)
    assert state.opened_at is not None
    assert abs(state.opened_at - now) < timedelta(seconds=5)
    assert state.retry_at == state.opened_at + timedelta(seconds=30)
    wait = breaker.allow()
    assert wait is not None
    assert 25 < wait <= 30


# --- operators, keys, Redis down ---------------------------------------------------------------


def test_reset_closes_it_and_clears_the_counts(name, clock) -> None:
    breaker = OriginBreaker(name, clock=clock)
    trip(breaker)

    breaker.reset()

    assert breaker.state() == BreakerState(name, "closed", 0, 0, None, None, 0)
    assert breaker.allow() is None
    assert name in [state.name for state in breakers_all(clock=clock)]


def test_every_key_expires(name, clock) -> None:
    breaker = OriginBreaker(name, clock=clock)
    breaker.record_success()
    trip(breaker)
    clock.advance(30)
    breaker.allow()
    client = state_client()

    for key in [*breaker.keys, REGISTRY_KEY]:
        assert 0 < client.ttl(key) <= _ttl_s(), key


def test_breakers_all_lists_each_breaker_with_state_and_forgets_the_others(names, clock) -> None:
    names.extend([f"test:a-{uuid4().hex[:8]}", f"test:b-{uuid4().hex[:8]}"])
    first, second = (OriginBreaker(name, clock=clock) for name in names)
    trip(first)
    second.record_success()

    listed = {state.name: state for state in breakers_all(clock=clock)}
    assert listed[names[0]] == BreakerState(names[0], "open", 5, 0, at(T0), at(T0 + 30), 0)
    assert listed[names[1]] == BreakerState(names[1], "closed", 0, 1, None, None, 0)

    state_client().delete(*second.keys)  # as if its keys had expired

    assert names[1] not in {state.name for state in breakers_all(clock=clock)}
    assert not state_client().sismember(REGISTRY_KEY, names[1])


def test_without_redis_it_lets_calls_through_and_drops_outcomes(name, redis_down, caplog) -> None:
    breaker = OriginBreaker(name)

    with caplog.at_level(logging.WARNING, logger="jobs.transfer.breaker"):
        assert breaker.allow() is None
        breaker.record_failure()
        breaker.record_success()

    assert [r.getMessage() for r in caplog.records] == [
        f"Circuit breaker {name}: Redis unavailable, letting the call through",
        f"Circuit breaker {name}: Redis unavailable, outcome not recorded",
        f"Circuit breaker {name}: Redis unavailable, outcome not recorded",
    ]


# --- /metrics ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_metrics_show_each_breakers_state_failures_and_opens(client: Client, names, settings) -> None:
    names.extend(f"test:{kind}-{uuid4().hex[:8]}" for kind in ("open", "half", "closed"))
    opened, half_open, closed = (OriginBreaker(name) for name in names)
    trip(opened)
    settings.ORIGIN_BREAKER_OPEN_S = 0.0  # half-open as soon as it opens
    for _ in range(5):
        half_open.record_failure()
    assert half_open.allow() is None  # the probe
    for _ in range(3):
        closed.record_failure()

    response = client.get("/metrics")

    assert response.status_code == 200
    found = samples(response.content.decode())
    for name, state, failures in ((names[0], 2, 5), (names[1], 1, 5), (names[2], 0, 3)):
        assert found[("download_origin_circuit_state", (("origin", name),))] == state
        assert found[("download_origin_circuit_failures", (("origin", name),))] == failures
    assert found[("download_origin_circuit_opened_total", (("origin", names[0]),))] == 1
    assert found[("download_origin_circuit_opened_total", (("origin", names[1]),))] == 1


@pytest.mark.django_db
def test_metrics_scrape_survives_an_unreachable_hot_state_redis(client: Client, redis_down) -> None:
    response = client.get("/metrics")

    assert response.status_code == 200
    text = response.content.decode()
    assert "download_origin_circuit_state{" not in text
    assert "download_jobs_active" in text


# --- the admin's analytics page ----------------------------------------------------------------


def csrf_client(user: User) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


@pytest.fixture
def superuser(db: None) -> User:
    return User.objects.create_superuser("root", password="root-password")


def test_the_page_lists_the_breakers_and_staff_reset_one(superuser, name, clock) -> None:
    breaker = OriginBreaker(name, clock=clock)
    trip(breaker)
    client = csrf_client(superuser)

    page = client.get(reverse(PAGE))

    assert page.status_code == 200
    assert 'id="origins-heading">Origins<' in page.text
    row = next(b for b in page.context["breakers"] if b.name == name)
    assert row == BreakerState(name, "open", 5, 0, at(T0), at(T0 + 30), 0)
    assert f'<input type="hidden" name="origin" value="{name}">' in page.text
    assert "2027-01-15 08:00:30" in page.text  # open until T0 + 30 s
    assert "<td>2027-01-15 08:00:00</td>" in page.text  # open since T0
    assert 'name="csrfmiddlewaretoken"' in page.text

    assert client.post(reverse(RESET), {"origin": name}).status_code == 403  # no CSRF token
    assert breaker.state().state == "open"
    token = client.cookies["csrftoken"].value
    response = client.post(reverse(RESET), {"origin": name, "csrfmiddlewaretoken": token})

    assert response.status_code == 302
    assert response["Location"] == reverse(PAGE) + "#origins-heading"
    assert breaker.state() == BreakerState(name, "closed", 0, 0, None, None, 0)
    after = client.get(response["Location"])
    assert f"Circuit breaker {name} reset: closed." in after.text


def test_resetting_an_unknown_breaker_changes_nothing(superuser, name) -> None:
    client = Client()
    client.force_login(superuser)

    response = client.post(reverse(RESET), {"origin": name}, follow=True)

    assert f"No circuit breaker &#x27;{name}&#x27;." in response.text
    assert not state_client().exists(*OriginBreaker(name).keys)


def test_reset_is_a_post(superuser) -> None:
    client = Client()
    client.force_login(superuser)

    assert client.get(reverse(RESET)).status_code == 405


def test_only_staff_who_may_change_jobs_reset_a_breaker(user, name, clock) -> None:
    breaker = OriginBreaker(name, clock=clock)
    trip(breaker)
    client = Client()
    client.force_login(user)

    response = client.post(reverse(RESET), {"origin": name})  # not staff
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))

    user.is_staff = True
    user.save(update_fields=["is_staff"])
    user.user_permissions.add(Permission.objects.get(codename="view_downloadjob"))
    page = client.get(reverse(PAGE))
    assert page.status_code == 200
    assert name in page.text
    assert 'name="origin"' not in page.text  # no reset button
    assert client.post(reverse(RESET), {"origin": name}).status_code == 403
    assert breaker.state().state == "open"


def test_the_page_says_so_when_redis_cannot_be_read(superuser, redis_down) -> None:
    client = Client()
    client.force_login(superuser)

    response = client.get(reverse(PAGE))

    assert response.status_code == 200
    assert "The hot-state Redis could not be read." in response.text
