"""Workers on many hosts: each worker serves its own counters (WORKER_METRICS_PORT).

A web process and a worker with separate PROMETHEUS_MULTIPROC_DIRs, as on two hosts: the
worker's pool child counts the completed job and its wait in the queue; the worker's port
reports them, the web process's /metrics does not (it reads only its own host's directory).
"""

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
from tests.support.stack import Stack, stack_env

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

COMPLETED = ("download_job_outcomes_total", (("code", ""), ("outcome", "completed")))
QUEUE_WAITS = ("download_job_queue_wait_seconds_count", ())
IN_FLIGHT = ("download_jobs_in_flight", ())


@pytest.fixture(scope="module")
def two_hosts(
    django_db_setup: None, origin_server: OriginServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, int]]:
    root = Path(tmp_path_factory.mktemp("hosts"))
    broker = RedisServer(root / "broker").start()  # the machine Redis's databases are all taken
    env = stack_env(
        origin_server,
        {"PROMETHEUS_MULTIPROC_DIR": str(root / "web-host"), "CELERY_BROKER_URL": f"{broker.url}/0"},
        broker_db=0,
    )
    stack = Stack("two-hosts", env).start(worker=False)
    port = free_port()
    worker_dir = root / "worker-host"
    multiprocess_dir_reset(worker_dir)
    stack.env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(worker_dir), "WORKER_METRICS_PORT": str(port)}
    try:
        stack.start_worker(concurrency=1)
        wait_for_port(port, process=stack.worker)
        yield stack, port
    finally:
        stack.stop()
        broker.stop()


def test_a_worker_host_serves_its_job_counters_on_its_own_port(
    two_hosts: tuple[Stack, int], origin: OriginServer
) -> None:
    stack, port = two_hosts
    token = api_key_for(User.objects.create_user(f"hosts-{uuid4().hex[:12]}"))
    origin.add(77001, FileScript(size=64 * 1024))

    def worker_scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)

    before = worker_scrape()
    with stack.client(token) as api:
        job_id = initiate(api, 77001)
        eventually(lambda: job_status(api, job_id)["status"] == "completed", timeout_s=30, what="the job")

    eventually(
        lambda: worker_scrape().get(COMPLETED, 0) == before.get(COMPLETED, 0) + 1,
        timeout_s=10,
        what="the worker's count",
    )
    after = worker_scrape()
    assert after[QUEUE_WAITS] == before[QUEUE_WAITS] + 1
    assert after[IN_FLIGHT] == before[IN_FLIGHT] == 0  # its attempt ended
    web = samples(httpx.get(f"{stack.base_url}/metrics", timeout=10).text)
    assert web.get(COMPLETED, 0) == 0  # another host's process: not in this directory
    assert web[QUEUE_WAITS] == 0
