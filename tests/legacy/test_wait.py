"""The old `POST /download/start` through a real uvicorn and a real worker: the ASGI wait
(legacy/wait.py) in front of the view, the worker's events ending it.

- finished in time: 302 to a fresh link, which an old client follows to the bytes;
- not finished in time: 202 with Location, Retry-After and initiate's body;
- failed meanwhile: the new API's error;
- retired (a web process past its LEGACY_SUNSET_AT): 410;
- 200 old-style requests waiting at once: the web process still answers status and
  /health, with no more threads than before they came (figures in
  test-artifacts/legacy-wait.json).
"""

import asyncio
import hashlib
import json
import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import httpx
import psutil  # type: ignore[import-untyped]
import pytest
from django.contrib.auth.models import User
from django.db import connection

from infra.redis import state_client
from jobs.models import ApiKey, DownloadJob, Status
from legacy.models import LegacyCaller
from tests.factories import api_key_for, key_digest
from tests.support.flows import eventually, initiate
from tests.support.origin_server import FileScript, OriginServer
from tests.support.redis_servers import RedisServer
from tests.support.stack import ARTIFACTS, Stack, stack_env

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

WAIT_S = 3.0
MiB = 1024 * 1024


def new_token(prefix: str) -> str:
    return api_key_for(User.objects.create_user(f"{prefix}-{uuid4().hex[:12]}"))


def owner_id(token: str) -> int:
    """The user of an API key, found as the service finds it: by the key's digest."""
    return ApiKey.objects.get(digest=key_digest(token)).user_id


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(
        Path(tmp_path_factory.mktemp("legacy-broker"))
    ).start()  # the machine's DBs are taken
    yield server
    server.stop()


@pytest.fixture(scope="module")
def legacy_stack(django_db_setup: None, origin_server: OriginServer, broker: RedisServer) -> Iterator[Stack]:
    env = stack_env(
        origin_server,
        {
            "CELERY_BROKER_URL": f"{broker.url}/0",
            "LEGACY_WAIT_S": str(WAIT_S),
            "JOB_MAX_ACTIVE_PER_USER": "10",
        },
        broker_db=0,
    )
    stack = Stack("legacy", env).start()
    yield stack
    stack.stop()


def old_client(stack: Stack, token: str) -> httpx.Client:
    """What an old client is: it posts, waits, and follows the redirect to its file."""
    return httpx.Client(
        base_url=stack.base_url,
        headers={"Authorization": f"Token {token}", "User-Agent": "old-client/2.3"},
        timeout=60,
        follow_redirects=True,
    )


def assert_deprecated(response: httpx.Response) -> None:
    assert response.headers["Deprecation"].startswith("@")
    assert response.headers["Sunset"].endswith("GMT")
    assert '</v1/download/initiate>; rel="successor-version"' in response.headers["Link"]
    assert "x-downloads-legacy-wait" not in response.headers


def test_a_job_finished_in_time_is_a_302_that_an_old_client_follows_to_its_bytes(
    legacy_stack: Stack, origin: OriginServer
) -> None:
    script = origin.add(79001, FileScript(size=300 * 1024, rate_bps=300 * 1024))  # about 1 s
    token = new_token("legacy-302")
    with old_client(legacy_stack, token) as client:
        started = time.monotonic()
        response = client.post("/download/start", json={"file_id": 79001})
        waited_s = time.monotonic() - started

    assert response.status_code == 200, response.text[:300]
    assert hashlib.sha256(response.content).hexdigest() == script.sha256(79001)
    (redirect,) = response.history
    assert redirect.status_code == 302
    assert_deprecated(redirect)
    assert 0.5 < waited_s < WAIT_S + 5
    job = DownloadJob.objects.get(owner_id=owner_id(token))
    assert job.status == Status.COMPLETED
    caller = LegacyCaller.objects.get(user=job.owner)
    assert (caller.user_agent, caller.calls, caller.redirected) == ("old-client/2.3", 1, 1)


def test_a_job_not_finished_in_time_is_a_202_to_the_new_flow(
    legacy_stack: Stack, origin: OriginServer
) -> None:
    origin.add(79002, FileScript(size=2 * MiB, rate_bps=256 * 1024))  # about 8 s
    with old_client(legacy_stack, new_token("legacy-202")) as client:
        started = time.monotonic()
        response = client.post("/download/start", json={"file_id": 79002})
        waited_s = time.monotonic() - started
        data = response.json()["data"]
        status = client.get(response.headers["Location"])

    assert response.status_code == 202, response.text[:300]
    assert_deprecated(response)
    assert WAIT_S <= waited_s < WAIT_S + 5
    assert response.headers["Location"] == f"/v1/download/status/{data['job_id']}"
    assert int(response.headers["Retry-After"]) >= 1
    assert data["status"] in ("queued", "processing")
    assert data["websocket_url"].startswith("ws://")
    assert status.status_code == 200
    assert status.json()["data"]["job_id"] == data["job_id"]


def test_a_job_that_fails_meanwhile_is_the_new_apis_error(legacy_stack: Stack, origin: OriginServer) -> None:
    origin.add(79003, FileScript(size=1024, faults=["404"]))
    with old_client(legacy_stack, new_token("legacy-failed")) as client:
        started = time.monotonic()
        response = client.post("/download/start", json={"file_id": 79003})
        waited_s = time.monotonic() - started

    assert response.status_code == 409, response.text[:300]
    assert response.json()["error"]["code"] == "JOB_NOT_READY"
    assert response.json()["error"]["status"] == "failed"
    assert_deprecated(response)
    assert waited_s < WAIT_S  # the job's end ended the wait


def test_a_client_sent_wait_marker_changes_nothing(legacy_stack: Stack, origin: OriginServer) -> None:
    """The marker is the ASGI wait's own: removed from what a client sends, on every path."""
    origin.add(79004, FileScript(size=2 * MiB, rate_bps=256 * 1024))
    token = new_token("legacy-marker")
    with httpx.Client(base_url=legacy_stack.base_url, headers={"Authorization": f"Token {token}"}) as client:
        response = client.post(
            "/v1/download/initiate", json={"file_id": 79004}, headers={"X-Downloads-Legacy-Wait": "1"}
        )
    assert response.status_code == 200
    assert "x-downloads-legacy-wait" not in response.headers


def test_a_retired_endpoint_answers_410_with_its_successor(
    legacy_stack: Stack, broker: RedisServer, origin_server: OriginServer
) -> None:
    env = {**legacy_stack.env, "LEGACY_SUNSET_AT": "2026-01-01T00:00:00+00:00"}
    retired = Stack("legacy-retired", env).start(worker=False)
    try:
        with old_client(retired, new_token("legacy-410")) as client:
            response = client.post("/download/start", json={"file_id": 79005})
    finally:
        retired.stop()

    assert response.status_code == 410
    assert response.json()["error"]["code"] == "ENDPOINT_RETIRED"
    assert response.json()["error"]["successor"] == "/v1/download/initiate"
    assert response.headers["Sunset"] == "Thu, 01 Jan 2026 00:00:00 GMT"
    assert '</v1/download/initiate>; rel="successor-version"' in response.headers["Link"]
    assert not DownloadJob.objects.filter(file_id=79005).exists()


# --- the bounds of the waits --------------------------------------------------------------

BOUNDED_WAIT_S = 8.0
PLACES = 2


@pytest.fixture
def bounded_stack(django_db_setup: None, origin_server: OriginServer, broker: RedisServer) -> Iterator[Stack]:
    """Web only: the jobs stay queued, so every request that gets a place waits its whole
    LEGACY_WAIT_S."""
    env = stack_env(
        origin_server,
        {
            "CELERY_BROKER_URL": f"{broker.url}/2",
            "LEGACY_WAIT_S": str(BOUNDED_WAIT_S),
            "LEGACY_WAITS_PER_USER": str(PLACES),
            "JOB_MAX_ACTIVE_PER_USER": "10",
        },
        broker_db=0,
    )
    stack = Stack("legacy-bounded", env).start(worker=False)
    yield stack
    stack.stop()


def places_held(token: str) -> int:
    return int(state_client().zcard(f"legacy:waits:{owner_id(token)}"))


def test_a_users_wait_past_its_places_is_the_202_at_once(bounded_stack: Stack) -> None:
    token = new_token("legacy-places")

    async def scenario() -> tuple[list[httpx.Response], httpx.Response, bool]:
        headers = {"Authorization": f"Token {token}"}
        async with httpx.AsyncClient(base_url=bounded_stack.base_url, headers=headers, timeout=60) as client:
            waits = [
                asyncio.create_task(client.post("/download/start", json={"file_id": 79200 + n}))
                for n in range(PLACES)
            ]
            while await asyncio.to_thread(places_held, token) < PLACES:
                assert not any(wait.done() for wait in waits)
                await asyncio.sleep(0.1)
            past = await client.post("/download/start", json={"file_id": 79299})
            still_waiting = not any(wait.done() for wait in waits)
            return await asyncio.gather(*waits), past, still_waiting

    waited, past, still_waiting = asyncio.run(scenario())

    assert past.status_code == 202, past.text[:300]
    assert past.headers["Location"] == f"/v1/download/status/{past.json()['data']['job_id']}"
    assert_deprecated(past)
    assert still_waiting  # answered while the user's places were held
    assert [response.status_code for response in waited] == [202] * PLACES
    assert places_held(token) == 0
    caller = LegacyCaller.objects.get(user_id=owner_id(token))
    assert (caller.calls, caller.accepted) == (PLACES + 1, PLACES + 1)


def test_a_wait_past_the_process_places_is_the_202_at_once(
    django_db_setup: None, origin_server: OriginServer, broker: RedisServer
) -> None:
    env = stack_env(
        origin_server,
        {
            "CELERY_BROKER_URL": f"{broker.url}/3",
            "LEGACY_WAIT_S": str(BOUNDED_WAIT_S),
            "LEGACY_WAITS_PER_PROCESS": "1",
        },
        broker_db=0,
    )
    stack = Stack("legacy-process", env).start(worker=False)
    first, second = new_token("legacy-process"), new_token("legacy-process")

    async def scenario() -> tuple[httpx.Response, httpx.Response, bool]:
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=60) as client:
            waiting = asyncio.create_task(
                client.post(
                    "/download/start", json={"file_id": 79400}, headers={"Authorization": f"Token {first}"}
                )
            )
            while await asyncio.to_thread(places_held, first) < 1:
                await asyncio.sleep(0.1)
            past = await client.post(
                "/download/start", json={"file_id": 79401}, headers={"Authorization": f"Token {second}"}
            )
            still_waiting = not waiting.done()
            return await waiting, past, still_waiting

    try:
        waited, past, still_waiting = asyncio.run(scenario())
    finally:
        stack.stop()

    assert (waited.status_code, past.status_code) == (202, 202)
    assert still_waiting  # another user's request, answered while the process's one wait ran


def _raw_start(stack: Stack, token: str, file_id: int) -> socket.socket:
    """An old client that sends its request and will leave without reading the answer."""
    body = json.dumps({"file_id": file_id}).encode()
    started = socket.create_connection(("127.0.0.1", stack.port))
    started.sendall(
        b"POST /download/start HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Token {token}\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return started


def test_a_client_that_leaves_frees_its_place_at_once_and_its_wait_stops(bounded_stack: Stack) -> None:
    token = new_token("legacy-leaves")
    leaving = [_raw_start(bounded_stack, token, 79300 + n) for n in range(PLACES)]
    eventually(lambda: places_held(token) == PLACES, timeout_s=20, what="both waits holding a place")
    left_at = time.monotonic()

    for each in leaving:
        each.close()

    # Freed well before the waits would have ended.
    eventually(lambda: places_held(token) == 0, timeout_s=BOUNDED_WAIT_S / 2, what="the places freed")
    assert time.monotonic() - left_at < BOUNDED_WAIT_S
    # A new wait of the same user gets a place and waits its whole time; when it ends, the
    # waits that were left would have ended too: none of them was answered or counted.
    with old_client(bounded_stack, token) as client:
        started = time.monotonic()
        response = client.post("/download/start", json={"file_id": 79399})
        waited_s = time.monotonic() - started
    assert response.status_code == 202
    assert waited_s >= BOUNDED_WAIT_S
    caller = LegacyCaller.objects.get(user_id=owner_id(token))
    assert (caller.calls, caller.accepted) == (1, 1)


# --- 200 old-style requests waiting at once --------------------------------------------------

WAITING = 200
USERS = 40  # 5 jobs each: JOB_MAX_ACTIVE_PER_USER


@pytest.fixture
def waiting_stack(django_db_setup: None, origin_server: OriginServer, broker: RedisServer) -> Iterator[Stack]:
    """Web only: the waiting jobs stay queued, so every request waits its whole time."""
    env = stack_env(
        origin_server,
        {"CELERY_BROKER_URL": f"{broker.url}/1", "LEGACY_WAIT_S": "15", "JOB_MAX_ACTIVE_PER_USER": "5"},
        broker_db=0,
    )
    stack = Stack("legacy-waiting", env).start(worker=False)
    yield stack
    stack.stop()


async def _latencies(
    base_url: str, token: str, job_id: str, until: float
) -> tuple[list[float], list[float], int]:
    """Status polls and /health, one after the other, until `until`: their latencies."""
    status_s: list[float] = []
    health_s: list[float] = []
    errors = 0
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Token {token}"}, timeout=30
    ) as client:
        while time.monotonic() < until:
            for path, sink in ((f"/v1/download/status/{job_id}", status_s), ("/health", health_s)):
                started = time.monotonic()
                response = await client.get(path)
                sink.append(time.monotonic() - started)
                errors += response.status_code != 200
    return status_s, health_s, errors


def _created(tokens: list[str]) -> int:
    try:
        return DownloadJob.objects.filter(
            owner__auth_token_set__digest__in=[key_digest(token) for token in tokens]
        ).count()
    finally:
        connection.close()


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else float("nan")


async def _scenario(stack: Stack, tokens: list[str], poll_token: str, poll_job: str) -> dict[str, object]:
    web = psutil.Process(stack.web.pid)  # type: ignore[union-attr]
    base = stack.base_url
    # Warm up: the request pool's threads, and the loop's executor that reads cards.
    async with httpx.AsyncClient(base_url=base, timeout=30) as warm:
        await asyncio.gather(*(warm.get("/health") for _ in range(60)))
    quiet = await _latencies(base, poll_token, poll_job, time.monotonic() + 4)
    threads_before = web.num_threads()

    limits = httpx.Limits(max_connections=WAITING + 10, max_keepalive_connections=WAITING + 10)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as old_clients:

        async def start(token: str) -> httpx.Response:
            headers = {"Authorization": f"Token {token}"}
            return await old_clients.post("/download/start", json={"file_id": 79100}, headers=headers)

        started = time.monotonic()
        waiting = [asyncio.create_task(start(token)) for token in tokens for _ in range(WAITING // USERS)]
        # Until every job is created: from then on all of them wait (LEGACY_WAIT_S 15).
        while await asyncio.to_thread(_created, tokens) < WAITING:
            await asyncio.sleep(0.1)
        all_waiting_s = time.monotonic() - started
        threads_during = web.num_threads()
        busy = await _latencies(base, poll_token, poll_job, time.monotonic() + 5)
        threads_late = web.num_threads()
        assert not any(task.done() for task in waiting), "a wait ended before the measurement did"
        answers = await asyncio.gather(*waiting)
    return {
        "waiting": len(waiting),
        "all_waiting_after_s": round(all_waiting_s, 2),
        "answers": sorted({response.status_code for response in answers}),
        "threads_before": threads_before,
        "threads_during": max(threads_during, threads_late),
        "quiet": {
            "status_p99_ms": p99(quiet[0]) * 1000,
            "health_p99_ms": p99(quiet[1]) * 1000,
            "errors": quiet[2],
        },
        "busy": {
            "polls": len(busy[0]),
            "status_p99_ms": p99(busy[0]) * 1000,
            "health_p99_ms": p99(busy[1]) * 1000,
            "errors": busy[2],
        },
    }


def test_two_hundred_waiting_old_requests_hold_no_thread_and_status_still_answers(
    waiting_stack: Stack, origin: OriginServer
) -> None:
    tokens = [new_token("legacy-wait") for _ in range(USERS)]
    poll_token = new_token("legacy-poller")
    with httpx.Client(
        base_url=waiting_stack.base_url, headers={"Authorization": f"Token {poll_token}"}
    ) as api:
        poll_job = initiate(api, 79101)

    figures = asyncio.run(_scenario(waiting_stack, tokens, poll_token, poll_job))

    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "legacy-wait.json").write_text(json.dumps(figures, indent=1))
    print(f"\nlegacy wait: {json.dumps(figures)}")
    assert figures["waiting"] == WAITING
    assert figures["answers"] == [202]  # each waited its LEGACY_WAIT_S, then the new flow
    assert figures["busy"]["errors"] == 0  # type: ignore[index]
    assert figures["busy"]["polls"] > 0  # type: ignore[index]
    assert figures["threads_during"] <= figures["threads_before"]  # type: ignore[operator]
