"""Recovery: Redis is flushed (the broker loses every message) while jobs are queued and in
flight; every job still ends completed, exactly once, with the origin's bytes.

A dedicated stack of real processes (uvicorn, a prefork worker with 2 processes and a real
`celery beat`) with its own broker database and hot-state database, and short reaper
thresholds, so that the only way back for a lost job is the reaper that beat sends every
second:

- queued jobs: their messages are gone; the reaper sends again a job queued for longer
  than JOB_QUEUED_STALE_S.
- in-flight jobs, two cases:
  - `worker-killed`: the worker is killed (-9) right after the flush, as when the node
    holding Redis and the worker goes down. The attempts die, and their unacknowledged
    copies, which a restarted worker would have redelivered, went with the flush: only
    the heartbeat reaper (JOB_HEARTBEAT_STALE_S) can bring them back, fencing the dead
    attempt out before it sends a new one. This is the whole of "the broker loses every
    message": nothing of the broker's survives, and nothing of the running work either.
  - `worker-alive`: the worker keeps its connection; the attempts it holds in memory run
    on and complete once (their acknowledgement finds nothing to remove), while the
    reaper re-sends the queued jobs and the worker, still blocked on the emptied lists,
    picks them up.

Exactly once is checked on every side: each row completed once (completed_at and
updated_at do not move afterwards), its attempts equal the origin's requests for its file,
storage holds one object per job (the completing attempt's), the stack's completed counter
rose by exactly the number of jobs, and the downloaded bytes hash to the origin's.
"""

import time
from collections.abc import Iterator
from uuid import uuid4

import httpx
import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User

from jobs.models import DownloadJob, Status
from tests.factories import api_key_for
from tests.support.flows import assert_downloads_exactly, eventually, initiate, stored_files
from tests.support.origin_server import FileScript, OriginServer
from tests.support.scrapes import samples
from tests.support.stack import Stack, stack_env

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# 5, 6: local and s3 stacks; 7: redelivery; 8: the page test; 9 is also test_ops's scratch
# database, used only within one of its tests.
RECOVERY_BROKER_DB = 9
RECOVERY_STATE_DB = 10
MiB = 1024 * 1024
JOBS = 6
FILE_BYTES = 2 * MiB
RATE_BPS = MiB  # ~2 s a job: with 2 worker processes, 2 in flight and 4 queued
COMPLETED = ("download_job_outcomes_total", (("code", ""), ("outcome", "completed")))


@pytest.fixture(scope="module")
def recovery_stack(
    django_db_setup: None, origin_server: OriginServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    broker_url = f"{settings.REDIS_URL}/{RECOVERY_BROKER_DB}"
    state_url = f"{settings.REDIS_URL}/{RECOVERY_STATE_DB}"
    for url in (broker_url, state_url):
        redis.Redis.from_url(url).flushdb()
    env = stack_env(
        origin_server,
        {
            "REDIS_STATE_URL": state_url,
            # > 2 x (ORIGIN_READ_TIMEOUT_S + JOB_HEARTBEAT_INTERVAL_S 0.5), as settings require.
            "ORIGIN_READ_TIMEOUT_S": "1.0",
            "JOB_HEARTBEAT_STALE_S": "4",
            "JOB_QUEUED_STALE_S": "3",
            "JOB_REAP_EVERY_S": "1",
            "JOB_MAX_ACTIVE_PER_USER": str(JOBS),
        },
        broker_db=RECOVERY_BROKER_DB,
    )
    stack = Stack("recovery", env).start()
    try:
        stack.start_beat(tmp_path_factory.mktemp("recovery-beat"))
        yield stack
    finally:
        stack.stop_beat()
        stack.stop()
        for url in (broker_url, state_url):
            redis.Redis.from_url(url).flushdb()


@pytest.fixture
def token() -> str:
    user = User.objects.create_user(f"recovery-{uuid4().hex[:12]}")
    return api_key_for(user)


def completed_count(stack: Stack) -> float:
    response = httpx.get(f"{stack.base_url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return samples(response.text).get(COMPLETED, 0)


def flush(stack: Stack) -> None:
    """Redis loses everything of this stack: every message (queued, delivered and not yet
    acknowledged, the kombu bindings) and the hot state (progress, cancel flags)."""
    redis.Redis.from_url(stack.env["CELERY_BROKER_URL"]).flushdb()
    redis.Redis.from_url(stack.env["REDIS_STATE_URL"]).flushdb()


def streaming(stack: Stack, job_id: str) -> bool:
    """The job's attempt has sent progress (to the stack's hot-state Redis): bytes flow."""
    bytes_done = redis.Redis.from_url(stack.env["REDIS_STATE_URL"]).hget(
        f"job:{job_id}:progress", "bytes_done"
    )
    return int(bytes_done or 0) > 0


@pytest.mark.parametrize("worker", ["worker-killed", "worker-alive"])
def test_every_job_completes_once_after_the_broker_loses_every_message(
    recovery_stack: Stack, origin: OriginServer, token: str, worker: str
) -> None:
    stack = recovery_stack
    file_ids = [74001 + i for i in range(JOBS)]
    scripts = {
        file_id: origin.add(file_id, FileScript(size=FILE_BYTES, rate_bps=RATE_BPS)) for file_id in file_ids
    }
    completed_before = completed_count(stack)
    started = time.monotonic()

    with stack.client(token) as api:
        job_ids = {initiate(api, file_id): file_id for file_id in file_ids}
        rows = DownloadJob.objects.filter(job_id__in=job_ids)
        # Two attempts streaming (their status says bytes flow), the other four waiting.
        eventually(
            lambda: sum(streaming(stack, job_id) for job_id in job_ids) == 2,
            timeout_s=10,
            what="two jobs in flight",
        )
        in_flight = set(rows.filter(status=Status.PROCESSING).values_list("job_id", flat=True))
        assert len(in_flight) == 2
        assert rows.filter(status=Status.QUEUED).count() == JOBS - 2

        flush(stack)
        if worker == "worker-killed":
            stack.kill_worker()
            stack.start_worker()

        eventually(
            lambda: rows.filter(status=Status.COMPLETED).count() == JOBS,
            timeout_s=45,
            what="every job completed",
        )
        recovered_s = time.monotonic() - started
        snapshot = {row.job_id: (row.completed_at, row.updated_at, row.attempts) for row in rows}
        # The reaper runs every second: give it (and any late duplicate message) a few runs.
        time.sleep(2.5)
        assert {row.job_id: (row.completed_at, row.updated_at, row.attempts) for row in rows} == snapshot

        for job_id, file_id in job_ids.items():
            assert_downloads_exactly(api, job_id, scripts[file_id], file_id)

    for row in rows:
        file_id = job_ids[row.job_id]
        assert row.status == Status.COMPLETED
        assert row.completed_at is not None
        assert row.sha256 == scripts[file_id].sha256(file_id)
        assert row.file_size_bytes == FILE_BYTES
        assert row.error_code == ""
        assert row.dead_lettered_at is None
        # Each attempt asked the origin once; the killed ones were restarted exactly once.
        killed = worker == "worker-killed" and row.job_id in in_flight
        assert row.attempts == (2 if killed else 1), (row.job_id, row.attempts)
        assert origin.requests[file_id] == row.attempts, (row.job_id, origin.requests[file_id])
        # One object, the completing attempt's: a killed attempt's upload was removed.
        assert row.storage_key.endswith(f"{row.job_id}-{row.attempts}")
        assert stored_files(stack, row.job_id) == [f"{row.owner_id}/{row.job_id}-{row.attempts}"]

    # Each job completed once (the counter is added up over the stack's processes).
    eventually(
        lambda: completed_count(stack) == completed_before + JOBS,
        timeout_s=5,
        what=f"the completed count rose by {JOBS}",
    )
    broker = redis.Redis.from_url(stack.env["CELERY_BROKER_URL"])
    eventually(lambda: broker.hlen("unacked") == 0, timeout_s=5, what="nothing left unacknowledged")
    assert recovered_s < 40, recovered_s
