"""Operator endpoints: /health (no I/O), /ready (database, Redis, storage; 503 naming what
failed) and /metrics (Prometheus text, the worker processes' counts added up).

The readiness test stops and restarts a real Redis server under a real ASGI process; the
metrics test runs a job through the local stack's real worker and scrapes its web process.
"""

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
import redis
from django.test import Client
from websockets.sync.client import connect

from devtools.servers import free_port
from jobs.ops.broker import queue_depths
from stack.embedded import _redis_server_binary
from tests.factories import api_key_for
from tests.support.brokers import broker_at, empty_broker
from tests.support.flows import socket_url
from tests.support.origin_server import FileScript, OriginServer
from tests.support.scrapes import closed_port_url, samples
from tests.support.stack import Stack, stack_env

MiB = 1024 * 1024


# --- /health -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_health_answers_without_any_query(client: Client, django_assert_num_queries: Any) -> None:
    with django_assert_num_queries(0):
        response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


# --- /ready, in process --------------------------------------------------------------------


@pytest.mark.django_db
def test_probes_and_scrape_answer_a_host_that_allowed_hosts_does_not_list(
    client: Client, local_storage: Any
) -> None:
    """Kubernetes probes and Prometheus reach a web process by its address: `/health`,
    `/ready` and `/metrics` answer whatever the Host; every other path still refuses it."""
    pod = "10.42.0.17:8000"
    assert client.get("/health", HTTP_HOST=pod).status_code == 200
    assert client.get("/ready", HTTP_HOST=pod).status_code == 200
    scrape = client.get("/metrics", HTTP_HOST=pod)
    assert scrape.status_code == 200
    assert b"download_queue_depth" in scrape.content
    assert client.get("/accounts/login/", HTTP_HOST=pod).status_code == 400
    assert client.get("/metrics/", HTTP_HOST=pod).status_code == 400


@pytest.mark.django_db
def test_ready_is_ok_when_everything_answers(client: Client, local_storage: Any) -> None:
    response = client.get("/ready")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "redis_broker", "redis_state", "redis_channels", "storage"}
    assert set(body["checks"].values()) == {"ok"}


@pytest.mark.django_db
def test_ready_is_503_naming_redis_when_it_is_unreachable(
    client: Client, settings: Any, local_storage: Any
) -> None:
    settings.CELERY_BROKER_URL = f"{closed_port_url()}/0"
    settings.REDIS_STATE_URL = f"{closed_port_url()}/1"
    response = client.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["failed"] == ["redis_broker", "redis_state"]
    assert body["checks"]["redis_broker"] == "failed"
    assert body["checks"]["database"] == body["checks"]["storage"] == "ok"


@pytest.mark.django_db
def test_ready_is_503_naming_storage_when_its_folder_is_not_one(
    client: Client, settings: Any, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    settings.STORAGES = {
        **settings.STORAGES,
        "downloads": {
            "BACKEND": "jobs.transfer.links.SignedFileSystemStorage",
            "OPTIONS": {"location": str(blocker / "media"), "base_url": "/files/"},
        },
    }
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["failed"] == ["storage"]


@pytest.mark.django_db
def test_ready_checks_an_s3_bucket(client: Client, settings: Any, s3: Any) -> None:
    from tests.support.s3 import s3_downloads_storage

    settings.STORAGES = {**settings.STORAGES, "downloads": s3_downloads_storage(s3)}
    assert client.get("/ready").status_code == 200
    settings.STORAGES = {**settings.STORAGES, "downloads": s3_downloads_storage(s3, bucket="no-such-bucket")}
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["failed"] == ["storage"]


# --- /ready, a real web process and a real Redis that stops and comes back ---------------------


class RedisServer:
    """A redis-server of our own on a fixed port, so that it can come back on the same one."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [_redis_server_binary(), "--bind", "127.0.0.1", "--port", str(self.port), "--dir",
             str(self.directory), "--save", "", "--appendonly", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def wait_for_ready(base_url: str, status_code: int, *, timeout_s: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        response = httpx.get(f"{base_url}/ready", timeout=10)
        if response.status_code == status_code:
            return response.json()
        assert time.monotonic() < deadline, f"/ready stayed {response.status_code}: {response.text}"
        time.sleep(0.1)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_ready_follows_redis_stopping_and_coming_back(
    private_redis: RedisServer, origin_server: OriginServer, tmp_path: Path
) -> None:
    url = private_redis.url
    env = stack_env(
        origin_server,
        {
            "REDIS_URL": url,
            "CELERY_BROKER_URL": f"{url}/0",
            "REDIS_STATE_URL": f"{url}/1",
            "CHANNEL_LAYER_URL": f"{url}/2",
            "REDIS_CACHE_URL": f"{url}/3",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
        },
        broker_db=0,
    )
    with Stack("ops-ready", env).extra_web("web") as base_url:
        assert wait_for_ready(base_url, 200)["status"] == "ok"

        private_redis.stop()
        body = wait_for_ready(base_url, 503)
        assert body["status"] == "unavailable"
        assert body["failed"] == ["redis_broker", "redis_channels", "redis_state"]
        assert body["checks"]["database"] == body["checks"]["storage"] == "ok"

        private_redis.start()
        assert wait_for_ready(base_url, 200)["checks"]["redis_broker"] == "ok"


# --- /metrics --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_queue_depth_counts_every_priority_list_of_a_queue(settings: Any) -> None:
    """kombu keeps priority 0 in the queue's list and the other steps in suffixed lists."""
    with empty_broker(settings, f"{settings.REDIS_URL}/9") as broker:
        broker.rpush("downloads.high", "a", "b")
        broker.rpush("downloads.high\x06\x163", "c")
        broker.rpush("downloads.low\x06\x169", "d")
        assert queue_depths() == {"high": 3, "normal": 0, "low": 1}


@pytest.mark.django_db
def test_metrics_scrape_survives_an_unreachable_broker(client: Client, settings: Any) -> None:
    with broker_at(settings, f"{closed_port_url()}/0"):
        response = client.get("/metrics")
    assert response.status_code == 200
    text = response.content.decode()
    assert "download_queue_depth" not in text
    assert 'download_jobs_active{priority="normal",status="queued"} 0.0' in text


def scrape(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{stack.base_url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


COMPLETED = ("download_job_outcomes_total", (("code", ""), ("outcome", "completed")))
DURATION_COUNT = ("download_job_duration_seconds_count", ())
STAGED = ("download_job_staged_bytes_total", ())
SOCKETS = ("download_websocket_connections", ())
QUEUE_WAITS = ("download_job_queue_wait_seconds_count", ())
IN_FLIGHT = ("download_jobs_in_flight", ())


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_metrics_move_when_a_job_runs_in_the_real_worker(
    local_stack: Stack, origin: OriginServer, django_user_model: Any
) -> None:
    user = django_user_model.objects.create_user(f"ops-{uuid4().hex[:12]}")
    token = api_key_for(user)
    file_id = 73001
    size = MiB + 17
    origin.add(file_id, FileScript(size=size, rate_bps=MiB))  # ~1 s: the socket sees it active

    before = scrape(local_stack)
    for priority in ("high", "normal", "low"):
        assert ("download_queue_depth", (("priority", priority),)) in before
    assert ("download_jobs_active", (("priority", "normal"), ("status", "processing"))) in before

    with local_stack.client(token) as api:
        response = api.post("/v1/download/initiate", json={"file_id": file_id})
        assert response.status_code == 200, response.text
        job_id = response.json()["data"]["job_id"]
        ws_url = socket_url(local_stack.base_url, response.json()["data"]["websocket_url"])
        with connect(ws_url, open_timeout=5) as ws:
            ws.recv(timeout=5)  # the snapshot: the socket is open and counted
            during = scrape(local_stack)
            assert during[SOCKETS] >= before.get(SOCKETS, 0) + 1
            deadline = time.monotonic() + 30
            in_flight_seen = 0.0
            status_url = f"/v1/download/status/{job_id}"
            while (status := api.get(status_url).json()["data"]["status"]) != "completed":
                assert time.monotonic() < deadline, "the job did not complete"
                if status == "processing":
                    in_flight_seen = max(in_flight_seen, scrape(local_stack)[IN_FLIGHT])
                time.sleep(0.05)
            assert in_flight_seen >= before[IN_FLIGHT] + 1

    # The counts come from the worker's pool child, the scrape from the web process.
    deadline = time.monotonic() + 5
    while True:
        after = scrape(local_stack)
        if after.get(COMPLETED, 0) >= before.get(COMPLETED, 0) + 1:
            break
        assert time.monotonic() < deadline, "the completed count did not move"
        time.sleep(0.1)
    assert after[DURATION_COUNT] >= before.get(DURATION_COUNT, 0) + 1
    assert after[QUEUE_WAITS] >= before[QUEUE_WAITS] + 1
    assert after[STAGED] >= before.get(STAGED, 0) + size
    assert after[("download_job_duration_seconds_sum", ())] > before.get(
        ("download_job_duration_seconds_sum", ()), 0
    )
    # The closed socket is no longer counted (once its process has seen the disconnect),
    # nor the ended attempt.
    deadline = time.monotonic() + 5
    while True:
        now = scrape(local_stack)
        if now[SOCKETS] <= before.get(SOCKETS, 0) and now[IN_FLIGHT] <= before[IN_FLIGHT]:
            break
        assert time.monotonic() < deadline, "the closed socket or the ended attempt is still counted"
        time.sleep(0.1)
