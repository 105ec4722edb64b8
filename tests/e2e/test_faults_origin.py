"""The origin fails mid-job, as origins do: silent after its headers, or a trickle (a byte
every half second, never silent for as long as the read timeout). Through a real uvicorn
and a prefork worker with one process, so that a job stuck on the origin would hold the
only worker slot.

- silent after the headers: the read timeout ends the attempt (`TIMEOUT`, retryable), the
  retry resumes, and the job completes with the origin's bytes;
- a trickle: no read timeout fires; the job's time limit ends the attempt
  (`DOWNLOAD_TIMEOUT`, not retried) and frees the slot: the next job completes.
"""

import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token

from conftest import Stack, stack_env
from jobs.models import DownloadJob, Status
from tests.support.faults import FAST_REAPER, postgres_profile_only, running_stack
from tests.support.flows import assert_downloads_exactly, eventually, initiate, job_status
from tests.support.origin_server import FileScript, OriginServer
from tests.support.redis_servers import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), postgres_profile_only]

TIME_LIMIT_S = 8


@pytest.fixture(scope="module")
def origin_fault_stack(
    django_db_setup: None, origin_server: OriginServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    broker = RedisServer(Path(tmp_path_factory.mktemp("origin-broker"))).start()
    env = stack_env(
        origin_server,
        {
            "CELERY_BROKER_URL": f"{broker.url}/0",
            **FAST_REAPER,
            "JOB_SOFT_TIME_LIMIT_S": str(TIME_LIMIT_S),
            "JOB_HARD_TIME_LIMIT_S": str(TIME_LIMIT_S + 10),
            "JOB_MAX_ACTIVE_PER_USER": "10",
        },
        broker_db=0,
    )
    try:
        with running_stack("origin-faults", env, concurrency=1) as stack:
            yield stack
    finally:
        broker.stop()


@pytest.fixture
def token() -> str:
    return Token.objects.create(user=User.objects.create_user(f"origin-{uuid4().hex[:12]}")).key


def test_an_origin_silent_after_its_headers_times_out_and_the_retry_completes(
    origin_fault_stack: Stack, origin: OriginServer, token: str
) -> None:
    script = origin.add(80001, FileScript(size=256 * 1024, faults=["silent"]))
    with origin_fault_stack.client(token) as api:
        job_id = initiate(api, 80001)
        eventually(lambda: job_status(api, job_id)["status"] == "completed", timeout_s=30, what="the retry")
        assert_downloads_exactly(api, job_id, script, 80001)

    job = DownloadJob.objects.get(job_id=job_id)
    assert job.attempts == 2
    assert origin.requests[80001] == 2


def test_a_trickling_origin_ends_download_timeout_and_frees_the_worker_slot(
    origin_fault_stack: Stack, origin: OriginServer, token: str
) -> None:
    origin.add(80002, FileScript(size=64 * 1024, faults=["trickle"]))
    after = origin.add(80003, FileScript(size=64 * 1024))
    with origin_fault_stack.client(token) as api:
        stuck = initiate(api, 80002)
        eventually(lambda: job_status(api, stuck)["status"] == "processing", timeout_s=15, what="it starts")
        queued_behind = initiate(api, 80003)  # one worker slot: it waits for the stuck job
        started = time.monotonic()
        eventually(
            lambda: job_status(api, stuck)["status"] == "failed", timeout_s=TIME_LIMIT_S + 20, what="limit"
        )
        ended_s = time.monotonic() - started
        eventually(
            lambda: job_status(api, queued_behind)["status"] == "completed", timeout_s=20, what="the next job"
        )
        assert_downloads_exactly(api, queued_behind, after, 80003)

    job = DownloadJob.objects.get(job_id=stuck)
    assert (job.error_code, job.error_retryable, job.attempts) == ("DOWNLOAD_TIMEOUT", False, 1)
    assert ended_s < TIME_LIMIT_S + 10
    assert DownloadJob.objects.get(job_id=queued_behind).status == Status.COMPLETED
