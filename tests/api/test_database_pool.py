"""The production profile under load: web processes borrow PostgreSQL connections from a
bounded pool, an exhausted pool or an unreachable database answers 503 in the envelope
with Retry-After (never a 500), and /ready says so.

The end-to-end cases need PostgreSQL (the pool is psycopg's) and run a real uvicorn."""

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from django.contrib.auth.models import User
from django.db import OperationalError
from django.test import Client
from rest_framework.test import APIClient

from jobs import selectors
from jobs.models import DownloadJob, Status
from tests.factories import api_key_for
from tests.support.databases import postgres_only
from tests.support.origin_server import OriginServer
from tests.support.stack import Stack, database_url, stack_env

POOL_BROKER_DB = 15  # 5-14: the other test stacks (see test_e2e)
WEB_POOL_MAX_SIZE = 10  # the default of DATABASE_POOL_MAX_SIZE


# --- a dependency's fault is a 503 (both profiles) -------------------------------------------


def _database_down(*args: Any, **kwargs: Any) -> Any:
    raise OperationalError("connection failed: Connection refused")


@pytest.mark.django_db
def test_an_api_request_without_its_database_answers_503(
    api_client: APIClient, user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = DownloadJob.objects.create(owner=user, file_id=1)
    monkeypatch.setattr(selectors, "download_job_card_for_owner", _database_down)
    response = api_client.get(f"/v1/download/status/{job.job_id}")
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json() == {
        "success": False,
        "error": {
            "code": "SERVICE_UNAVAILABLE",
            "message": "The service is briefly unavailable; try again",
            "retry_after": 5,
        },
    }


@pytest.mark.django_db
def test_a_page_without_its_database_answers_503(user: User, monkeypatch: pytest.MonkeyPatch) -> None:
    browser = Client(raise_request_exception=False)
    browser.force_login(user)
    monkeypatch.setattr(selectors, "download_job_list_for_owner", _database_down)
    monkeypatch.setattr("jobs.web.views.render", _database_down)  # whatever the page reads first
    response = browser.get("/")
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert b"Traceback" not in response.content


# --- PostgreSQL: the pool under a real uvicorn -----------------------------------------------


def _web_connections(application_name: str) -> int:
    """The connections of the web processes that name themselves so (other stacks of the
    suite may be running beside this module's)."""
    with psycopg.connect(database_url(), autocommit=True) as probe:
        row = probe.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s",
            [application_name],
        ).fetchone()
    return int(row[0]) if row else 0


class _PeakSampler(threading.Thread):
    """Samples the web processes' PostgreSQL connections every 50 ms until stopped."""

    def __init__(self, application_name: str) -> None:
        super().__init__(daemon=True)
        self.application_name = application_name
        self.peak = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.peak = max(self.peak, _web_connections(self.application_name))
            self.stopped.wait(0.05)

    def __enter__(self) -> "_PeakSampler":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.join()


def _token(name: str) -> str:
    user = User.objects.create_user(name)
    return api_key_for(user)


@contextlib.contextmanager
def _web_process(name: str, origin_server: OriginServer, extra: dict[str, str]) -> Iterator[Stack]:
    """One uvicorn process (no worker: queued jobs stay queued) whose connections are
    named `name` in pg_stat_activity."""
    env = stack_env(origin_server, {"DATABASE_APPLICATION_NAME": name, **extra}, broker_db=POOL_BROKER_DB)
    stack = Stack(name, env).start(worker=False)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def small_pool_web(django_db_setup: None, origin_server: OriginServer) -> Iterator[Stack]:
    """A web process whose pool holds one connection, and waits 3 s for it."""
    pool = {"DATABASE_POOL_MIN_SIZE": "1", "DATABASE_POOL_MAX_SIZE": "1", "DATABASE_POOL_TIMEOUT_S": "3"}
    with _web_process("downloads-web-small-pool", origin_server, pool) as stack:
        yield stack


@pytest.fixture(scope="module")
def default_pool_web(django_db_setup: None, origin_server: OriginServer) -> Iterator[Stack]:
    """A web process with the default pool."""
    with _web_process("downloads-web-default-pool", origin_server, {}) as stack:
        yield stack


@pytest.mark.e2e
@postgres_only
@pytest.mark.django_db(transaction=True)
def test_an_exhausted_pool_answers_503_and_ready_reports_it(small_pool_web: Stack) -> None:
    token = _token("pool-holder")
    user_id = User.objects.get(username="pool-holder").pk
    api = small_pool_web.client(token)
    results: dict[str, httpx.Response] = {}

    def request(name: str, method: str, path: str, **kwargs: Any) -> threading.Thread:
        thread = threading.Thread(
            target=lambda: results.__setitem__(name, api.request(method, path, **kwargs))
        )
        thread.start()
        return thread

    with psycopg.connect(database_url()) as blocker:
        # The user's row locked: an initiate waits for it, holding the pool's one connection.
        blocker.execute("SELECT id FROM auth_user WHERE id = %s FOR UPDATE", [user_id])
        holder = request("initiate", "POST", "/v1/download/initiate", json={"file_id": 7})
        _wait_until(_waiting_on_a_lock)
        waiter = request("list", "GET", "/v1/downloads")
        time.sleep(0.5)  # it waits for the pool
        ready = httpx.get(f"{small_pool_web.base_url}/ready", timeout=10)
        assert ready.status_code == 503
        body = ready.json()
        assert body["failed"] == ["database"]
        assert body["checks"]["database"] == "failed"
        assert body["database_pool"]["waiting"] >= 1
        waiter.join(timeout=15)
        blocker.rollback()
    holder.join(timeout=15)

    refused = results["list"]
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "5"
    assert refused.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert results["initiate"].status_code == 200  # the request that held the connection went on
    after = httpx.get(f"{small_pool_web.base_url}/ready", timeout=10).json()
    assert after["status"] == "ok"
    assert after["database_pool"]["timeouts"] >= 1


def _waiting_on_a_lock() -> bool:
    with psycopg.connect(database_url(), autocommit=True) as probe:
        row = probe.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'downloads-web-small-pool' AND wait_event_type = 'Lock'"
        ).fetchone()
    return bool(row and row[0])


def _wait_until(condition: Any, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# --- PostgreSQL: a bounded load smoke --------------------------------------------------------

CLIENTS = 128
LOAD_S = 4.0


async def _client_loop(base_url: str, token: str, job_id: str, index: int, codes: Counter[str]) -> None:
    headers = {"Authorization": f"Token {token}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
        deadline = time.monotonic() + LOAD_S
        n = 0
        while time.monotonic() < deadline:
            n += 1
            initiate = (n + index) % 8 == 0
            try:
                if initiate:
                    response = await client.post("/v1/download/initiate", json={"file_id": 900_000 + n})
                else:
                    response = await client.get(f"/v1/download/status/{job_id}")
            except httpx.TransportError as error:
                codes[f"transport {type(error).__name__}"] += 1
                continue
            codes[f"{'initiate' if initiate else 'status'} {response.status_code}"] += 1


@pytest.mark.e2e
@postgres_only
@pytest.mark.django_db(transaction=True)
def test_128_concurrent_clients_get_no_5xx_and_stay_within_the_pool(default_pool_web: Stack) -> None:
    users = []
    for i in range(16):
        token = _token(f"load-{i}")
        job = DownloadJob.objects.create(
            owner=User.objects.get(username=f"load-{i}"), file_id=1, status=Status.PROCESSING, attempts=1
        )
        users.append((token, job.job_id))
    codes: Counter[str] = Counter()
    base_url = default_pool_web.base_url

    async def load() -> None:
        await asyncio.gather(
            *(_client_loop(base_url, *users[i % len(users)], i, codes) for i in range(CLIENTS))
        )

    with _PeakSampler("downloads-web-default-pool") as sampler:
        asyncio.run(load())
    print(f"answers: {dict(codes)}; peak web connections {sampler.peak}")
    failures = {
        key: n
        for key, n in codes.items()
        if key.startswith("transport") or key.endswith(("500", "502", "503", "504"))
    }
    assert not failures, codes
    assert codes["status 200"] > 0, codes
    assert codes["initiate 200"] > 0, codes
    assert sampler.peak <= WEB_POOL_MAX_SIZE
