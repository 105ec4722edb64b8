"""Hot-state and channel-layer Redis restarted empty while jobs stream and wait: progress,
heartbeats, stored parts, cards, cancel flags and every socket's subscription are gone.

A stack of real processes (uvicorn, a prefork worker, beat) whose hot state and channel
layer live on a Redis of the test's own, killed (SIGKILL) and started again with nothing.
Running attempts go on without it and write their state again; the reaper gives attempts
whose heartbeat vanished a grace period instead of re-queueing them. Checked:

- every job completes exactly once with the origin's bytes (tests/support/faults.py);
- the status of a job polled all along never goes back (queued, processing, completed),
  and answers 200 or, while Redis is down, 503 with Retry-After: never a 500;
- a WebSocket client whose socket the outage closed reconnects, with the fresh ticket of
  the status answer, and gets a snapshot first that agrees with the status.
"""

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote
from uuid import uuid4

import httpx
import pytest
from django.contrib.auth.models import User
from websockets.sync.client import connect

from jobs.models import DownloadJob
from jobs.tickets import websocket_ticket_mint
from tests.factories import api_key_for, key_digest
from tests.support.databases import postgres_only
from tests.support.faults import FAST_REAPER, jobs_through_a_fault, running_stack
from tests.support.flows import socket_url
from tests.support.origin_server import OriginServer
from tests.support.redis_servers import RedisServer
from tests.support.stack import Stack, stack_env

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), postgres_only]

JOBS = 6
ORDER = {"queued": 0, "processing": 1, "completed": 2}


@pytest.fixture(scope="module")
def hot_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(Path(tmp_path_factory.mktemp("hot-state"))).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hot_stack(
    django_db_setup: None,
    origin_server: OriginServer,
    hot_state: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    broker = RedisServer(Path(tmp_path_factory.mktemp("hot-broker"))).start()
    env = stack_env(
        origin_server,
        {
            "CELERY_BROKER_URL": f"{broker.url}/0",
            "REDIS_STATE_URL": f"{hot_state.url}/1",
            "CHANNEL_LAYER_URL": f"{hot_state.url}/2",
            **FAST_REAPER,
            "JOB_MAX_ACTIVE_PER_USER": str(JOBS),
        },
        broker_db=0,
    )
    try:
        with running_stack("hot-state", env, beat_dir=tmp_path_factory.mktemp("hot-beat")) as stack:
            yield stack
    finally:
        broker.stop()


class StatusWatch:
    """Polls one job's status until stopped: every answer's HTTP status and job status."""

    def __init__(self, stack: Stack, token: str) -> None:
        self.stack, self.token = stack, token
        self.answers: list[tuple[int, str | None, str | None]] = []
        self.job_id: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, job_id: str) -> None:
        self.job_id = job_id
        self._thread.start()

    def _run(self) -> None:
        with self.stack.client(self.token) as api:
            while not self._stop.is_set():
                try:
                    response = api.get(f"/v1/download/status/{self.job_id}")
                except httpx.HTTPError:
                    continue
                body = response.json()
                status = body["data"]["status"] if response.status_code == 200 else None
                self.answers.append((response.status_code, status, response.headers.get("Retry-After")))
                time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_hot_state_redis_restarted_empty_loses_no_job_and_sockets_come_back(
    hot_stack: Stack, hot_state: RedisServer, origin: OriginServer
) -> None:
    user = User.objects.create_user(f"hot-{uuid4().hex[:12]}")
    token = api_key_for(user)
    watch = StatusWatch(hot_stack, token)
    socket_closed = threading.Event()

    def restart_empty() -> None:
        processing = DownloadJob.objects.filter(
            owner__auth_token_set__digest=key_digest(token), status="processing"
        ).first()
        assert processing is not None
        watch.start(processing.job_id)
        with hot_stack.client(token) as api:
            status = api.get(f"/v1/download/status/{processing.job_id}").json()["data"]
        ws = connect(socket_url(hot_stack.base_url, status["websocket_url"]), open_timeout=5, legacy=True)
        assert json.loads(ws.recv(timeout=5))["type"] == "snapshot"

        def drain() -> None:
            try:
                while True:
                    ws.recv(timeout=30)
            except Exception:
                socket_closed.set()

        threading.Thread(target=drain, daemon=True).start()
        hot_state.stop()
        time.sleep(3)
        hot_state.start()  # empty: no persistence
        ws.close()

    with hot_stack.client(token) as api:
        outcome = jobs_through_a_fault(
            "hot-state and channel-layer redis restarted empty",
            stack=hot_stack,
            api=api,
            origin=origin,
            file_ids=[81001 + n for n in range(JOBS)],
            inject=restart_empty,
        )
        watch.stop()
        assert (outcome.started, outcome.completed, outcome.duplicated, outcome.lost) == (JOBS, JOBS, 0, 0)

        # A client reconnects with a ticket of the job (the status of an ended job carries none,
        # so it is minted here, with the key the stack signs with too): snapshot first.
        assert watch.job_id is not None
        status = api.get(f"/v1/download/status/{watch.job_id}").json()["data"]
        with connect(
            f"{hot_stack.base_url.replace('http://', 'ws://')}/v1/download/subscribe/{watch.job_id}"
            f"?ticket={quote(websocket_ticket_mint(user_id=user.pk, job_id=watch.job_id))}",
            open_timeout=5,
        ) as ws:
            snapshot = json.loads(ws.recv(timeout=5))
        assert snapshot["type"] == "snapshot"
        assert (
            (snapshot["status"], snapshot["progress"])
            == (status["status"], status["progress"])
            == ("completed", 100)
        )

    codes = {code for code, _, _ in watch.answers}
    assert codes <= {200, 503}, codes
    assert all(retry_after for code, _, retry_after in watch.answers if code == 503)
    seen = [ORDER[status] for code, status, _ in watch.answers if code == 200 and status in ORDER]
    assert seen == sorted(seen), seen
    assert seen[-1] == ORDER["completed"]
