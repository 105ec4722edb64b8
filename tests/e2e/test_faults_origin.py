"""The origin fails mid-job, as origins do: silent after its headers, or a trickle (a byte
every half second, never silent for as long as the read timeout). Through a real uvicorn
and a worker of Celery's thread pool with one thread, so that a job stuck on the origin
would hold the only worker slot. The thread pool has no Celery time limit: the attempt
keeps its own deadline (JOB_SOFT_TIME_LIMIT_S, 3 s here).

- silent after the headers: the read timeout ends the attempt (`TIMEOUT`, retryable), the
  retry resumes, and the job completes with the origin's bytes;
- a trickle: no read timeout fires; the job's deadline ends the attempt on time
  (`DOWNLOAD_TIMEOUT`, not retried), leaves nothing stored, and frees the slot: the next
  job completes;
- a trickle, job after job: each DOWNLOAD_TIMEOUT is the slow origin's fault and counts
  against its circuit breaker (ORIGIN_BREAKER_MIN_CALLS 3 here), which opens: the next job
  waits queued without using an attempt, then goes through as the probe once the origin
  may be asked again.
"""

from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from django.contrib.auth.models import User

from jobs.models import DownloadJob, Status
from jobs.transfer.breaker import OriginBreaker
from tests.factories import api_key_for
from tests.support.databases import postgres_only
from tests.support.faults import FAST_REAPER, running_stack
from tests.support.flows import (
    assert_downloads_exactly,
    eventually,
    initiate,
    job_status,
    stored_files,
    wait_for_status,
    wait_until_finished,
)
from tests.support.origin_server import FileScript, OriginServer
from tests.support.redis_servers import RedisServer
from tests.support.stack import Stack, stack_env

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), postgres_only]

TIME_LIMIT_S = 3
BREAKER_MIN_CALLS = 3


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
            "WORKER_POOL": "threads",
            "JOB_SOFT_TIME_LIMIT_S": str(TIME_LIMIT_S),
            "JOB_HARD_TIME_LIMIT_S": str(TIME_LIMIT_S + 10),
            "JOB_MAX_ACTIVE_PER_USER": "10",
            "ORIGIN_BREAKER_MIN_CALLS": str(BREAKER_MIN_CALLS),
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
    return api_key_for(User.objects.create_user(f"origin-{uuid4().hex[:12]}"))


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
        final = wait_until_finished(api, stuck, timeout_s=TIME_LIMIT_S + 20)
        eventually(
            lambda: job_status(api, queued_behind)["status"] == "completed", timeout_s=20, what="the next job"
        )
        assert_downloads_exactly(api, queued_behind, after, 80003)

    assert final["error"] == {
        "code": "DOWNLOAD_TIMEOUT",
        "message": f"File download exceeded {TIME_LIMIT_S} s",
        "retryable": False,
    }
    job = DownloadJob.objects.get(job_id=stuck)
    assert (job.status, job.attempts, job.dead_lettered_at) == (Status.FAILED, 1, None)
    assert job.started_at is not None
    assert job.failed_at is not None
    # Ended by its own deadline, on time: the origin was still sending a byte every 0.5 s.
    ran_s = (job.failed_at - job.started_at).total_seconds()
    assert TIME_LIMIT_S - 0.5 <= ran_s <= TIME_LIMIT_S + 1.5, ran_s
    assert origin.bytes_sent[80002] < 64 * 1024
    eventually(lambda: stored_files(origin_fault_stack, stuck) == [], timeout_s=5, what="nothing stored")
    assert DownloadJob.objects.get(job_id=queued_behind).status == Status.COMPLETED


def test_a_trickling_origin_job_after_job_opens_its_breaker_and_the_next_job_waits_queued(
    origin_fault_stack: Stack, origin: OriginServer, token: str
) -> None:
    breaker = OriginBreaker(f"http:127.0.0.1:{origin.server_address[1]}")
    slow = [80010 + n for n in range(BREAKER_MIN_CALLS)]
    for file_id in slow:
        origin.add(file_id, FileScript(size=64 * 1024, faults=["trickle"]))
    script = origin.add(80020, FileScript(size=64 * 1024))
    with origin_fault_stack.client(token) as api:
        stuck = [initiate(api, file_id) for file_id in slow]  # one after the other, one slot
        for job_id in stuck:
            final = wait_until_finished(api, job_id, timeout_s=TIME_LIMIT_S * BREAKER_MIN_CALLS + 20)
            assert final["error"]["code"] == "DOWNLOAD_TIMEOUT", final
        state = breaker.state()
        assert (state.state, state.failures, state.successes) == ("open", BREAKER_MIN_CALLS, 0)

        job_id = initiate(api, 80020)
        waiting = wait_for_status(api, job_id, lambda data: data.get("error") is not None, timeout_s=10)
        assert waiting["status"] == "queued", waiting
        assert waiting["attempts"] == 0
        assert waiting["next_retry_at"]
        assert waiting["error"] == {
            "code": "TEMPORARY_UNAVAILABLE",
            "message": "The origin is failing; waiting for it to recover",
            "retryable": True,
        }
        assert origin.requests[80020] == 0  # the origin was left alone

        # ORIGIN_BREAKER_OPEN_S (2 s) later it goes through as the probe, which closes it.
        assert wait_until_finished(api, job_id, timeout_s=20)["status"] == "completed"
        assert_downloads_exactly(api, job_id, script, 80020)

    assert DownloadJob.objects.get(job_id=job_id).attempts == 1
    assert origin.requests[80020] == 1
    assert breaker.state().state == "closed"
