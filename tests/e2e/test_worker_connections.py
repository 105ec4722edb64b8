"""Many jobs, few connections: one worker process of Celery's thread pool runs 50 jobs at
once while its PostgreSQL pool may hold 4 connections (DATABASE_POOL_MAX_SIZE). Its jobs
borrow a connection for each write and give it back between writes: every job completes
once, with the origin's bytes, and none fails for the want of a connection, while a sampler
of pg_stat_activity never sees the worker hold more than 4.

A stack of real processes (uvicorn, the worker) with a broker Redis of its own; the worker
names its connections (DATABASE_APPLICATION_NAME) so that only its own are counted. On the
PostgreSQL profile only: the pool is psycopg's."""

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import psycopg
import pytest
from django.contrib.auth.models import User

from jobs.models import DownloadJob
from tests.factories import api_key_for
from tests.support.databases import postgres_only
from tests.support.flows import assert_downloads_exactly, initiate, wait_until_all_finished
from tests.support.origin_server import FileScript, OriginServer
from tests.support.redis_servers import RedisServer
from tests.support.stack import Stack, database_url, stack_env

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), postgres_only]

MiB = 1024 * 1024
JOBS = 50
POOL_MAX_SIZE = 4
WORKER_NAME = "downloads-worker-50-jobs"


@pytest.fixture(scope="module")
def pooled_stack(
    django_db_setup: None, origin_server: OriginServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    broker = RedisServer(Path(tmp_path_factory.mktemp("pool-broker"))).start()
    env = stack_env(
        origin_server,
        {
            "CELERY_BROKER_URL": f"{broker.url}/0",
            "WORKER_POOL": "threads",
            "DATABASE_POOL_MIN_SIZE": "1",
            "DATABASE_POOL_MAX_SIZE": str(POOL_MAX_SIZE),
            "JOB_MAX_ACTIVE_PER_USER": str(JOBS),
        },
        broker_db=0,
    )
    stack = Stack("worker-pool", env).start(worker=False)
    try:
        stack.start_worker(concurrency=JOBS + 14, env={"DATABASE_APPLICATION_NAME": WORKER_NAME})
        yield stack
    finally:
        stack.stop()
        broker.stop()


def worker_connections() -> int:
    with psycopg.connect(database_url(), autocommit=True) as probe:
        row = probe.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s",
            [WORKER_NAME],
        ).fetchone()
    return int(row[0]) if row else 0


class PeakSampler(threading.Thread):
    """The most connections the worker held at once, sampled every 20 ms until stopped."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.samples = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.peak = max(self.peak, worker_connections())
            self.samples += 1
            self.stopped.wait(0.02)

    def __enter__(self) -> "PeakSampler":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.join()


def test_fifty_jobs_at_once_share_four_connections_and_all_complete_once(
    pooled_stack: Stack, origin: OriginServer
) -> None:
    # ~2 s each at 1 MiB/s, so that all fifty are in flight together.
    scripts = {72000 + n: origin.add(72000 + n, FileScript(size=2 * MiB, rate_bps=MiB)) for n in range(JOBS)}
    token = api_key_for(User.objects.create_user(f"pool-{uuid4().hex[:12]}"))
    started = time.monotonic()

    with PeakSampler() as sampler, pooled_stack.client(token) as api:
        jobs = {initiate(api, file_id): file_id for file_id in scripts}
        finished = wait_until_all_finished(api, jobs, timeout_s=90)
    elapsed_s = time.monotonic() - started

    assert {status["status"] for status in finished.values()} == {"completed"}, finished
    rows = DownloadJob.objects.filter(job_id__in=jobs)
    assert sorted((row.status, row.attempts, row.error_code) for row in rows) == [("completed", 1, "")] * JOBS
    for row in rows:
        assert row.sha256 == scripts[row.file_id].sha256(row.file_id), row.job_id
    with pooled_stack.client(token) as api:
        for job_id, file_id in list(jobs.items())[:5]:  # the bytes themselves, for a few
            assert_downloads_exactly(api, job_id, scripts[file_id], file_id)
    assert [origin.requests[file_id] for file_id in scripts] == [1] * JOBS
    print(
        f"{JOBS} jobs in {elapsed_s:.1f} s; at most {origin.serving_peak} at the origin at once; "
        f"worker connections at most {sampler.peak} ({sampler.samples} samples)"
    )
    # The jobs ran together (not one connection's worth at a time), and the bound held:
    # the pool grew to it, and no further.
    assert origin.serving_peak >= JOBS // 2
    # At most the pool's size; how near the sampler sees it come depends on the machine's load.
    assert 1 <= sampler.peak <= POOL_MAX_SIZE
