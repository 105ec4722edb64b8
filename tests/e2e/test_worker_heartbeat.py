"""A real worker's heartbeat (jobs/ops/worker_heartbeat.py) on a real web process's
/metrics: it appears once the worker is ready, with the queues it consumes, and is gone
within three periods (30 s by default) of the worker's SIGKILL, which no code of the
worker sees. On PostgreSQL the worker's own port reports its database pool once a job
used it; on SQLite there is no pool and no such series."""

import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from django.contrib.auth.models import User

from devtools.servers import free_port, wait_for_port
from jobs.metrics import multiprocess_dir_reset
from tests.factories import api_key_for
from tests.support.flows import eventually, initiate, job_status
from tests.support.origin_server import FileScript, OriginServer
from tests.support.redis_servers import RedisServer
from tests.support.scrapes import samples
from tests.support.stack import Stack, database_url, stack_env

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
QUEUES = ("downloads.high", "downloads.low", "downloads.normal")


@pytest.fixture(scope="module")
def heartbeat_stack(
    django_db_setup: None, origin_server: OriginServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, int]]:
    root = Path(tmp_path_factory.mktemp("heartbeat"))
    broker = RedisServer(root / "broker").start()  # its keys are this test's alone
    env = stack_env(
        origin_server,
        {"PROMETHEUS_MULTIPROC_DIR": str(root / "web-host"), "CELERY_BROKER_URL": f"{broker.url}/0"},
        broker_db=0,
    )
    stack = Stack("heartbeat", env).start(worker=False)
    port = free_port()
    multiprocess_dir_reset(root / "worker-host")
    worker_env = {"PROMETHEUS_MULTIPROC_DIR": str(root / "worker-host"), "WORKER_METRICS_PORT": str(port)}
    try:
        stack.start_worker(concurrency=1, env=worker_env)
        wait_for_port(port, process=stack.worker)
        yield stack, port
    finally:
        stack.stop()
        broker.stop()


def of(found: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (sample, labels), value in found.items() if sample == name}


def test_a_workers_heartbeat_appears_and_is_gone_after_its_sigkill(
    heartbeat_stack: tuple[Stack, int], origin: OriginServer
) -> None:
    stack, port = heartbeat_stack

    def web() -> Samples:
        response = httpx.get(f"{stack.base_url}/metrics", timeout=15)
        assert response.status_code == 200
        return samples(response.text)

    eventually(
        lambda: of(web(), "download_workers_alive_total") == {(): 1}, timeout_s=20, what="the heartbeat"
    )
    found = web()
    (host,) = {dict(labels)["host"] for labels in of(found, "download_workers_alive")}
    assert host.startswith("heartbeat-")
    assert of(found, "download_workers_alive") == {(("host", host), ("queue", queue)): 1 for queue in QUEUES}
    assert of(found, "download_queue_consumers") == {(("priority", p),): 1 for p in ("high", "normal", "low")}
    assert 0 <= of(found, "download_worker_heartbeat_age_seconds")[(("host", host),)] < 15

    # A job, so that the worker's pool (on PostgreSQL) has been used.
    token = api_key_for(User.objects.create_user(f"beat-{uuid4().hex[:12]}"))
    origin.add(77101, FileScript(size=64 * 1024))
    with stack.client(token) as api:
        job_id = initiate(api, 77101)
        eventually(lambda: job_status(api, job_id)["status"] == "completed", timeout_s=30, what="the job")

    def worker_pool() -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        return {
            name: value
            for (name, labels), value in samples(text).items()
            if name.startswith("download_db_pool_") and labels == (("role", "worker"),)
        }

    if database_url().startswith("postgres"):
        eventually(
            lambda: worker_pool().get("download_db_pool_requests_total", 0) >= 1, timeout_s=15, what="pool"
        )
        pool = worker_pool()
        assert pool["download_db_pool_connections"] >= 1
        assert pool["download_db_pool_requests_waiting"] == 0
        assert of(web(), "download_db_pool_connections")[(("role", "web"),)] >= 1
    else:
        assert worker_pool() == {}

    stack.kill_worker()
    killed_at = time.monotonic()
    eventually(
        lambda: of(web(), "download_workers_alive_total") == {(): 0}, timeout_s=40, what="the heartbeat gone"
    )
    print(f"heartbeat gone {time.monotonic() - killed_at:.1f} s after the worker's SIGKILL")
    found = web()
    assert of(found, "download_workers_alive") == {}
    assert set(of(found, "download_queue_consumers").values()) == {0}
