"""Per-origin protection end to end: a real worker able to run eight jobs at once, against
an origin that may serve two (ORIGIN_MAX_IN_FLIGHT=2), is sent six. The origin never
serves more than two at once; the others wait queued and their status says why; all six
complete once, with the right bytes, each at its first attempt; no lease is left behind.

A stack of real processes (uvicorn, a worker of eight threads) with a broker database of
its own. Child process logs are in test-artifacts/logs/.
"""

import time
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User

from infra.redis import state_client
from jobs.models import DownloadJob
from jobs.transfer.origin_limits import OriginLimits
from tests.factories import api_key_for
from tests.support.flows import assert_downloads_exactly, initiate, wait_until_all_finished
from tests.support.origin_server import FileScript, OriginServer
from tests.support.stack import Stack, stack_env

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MiB = 1024 * 1024
JOBS = 6
MAX_IN_FLIGHT = 2
# 0-3: the service's own roles; 5-15: the other test stacks (see test_e2e, test_alerts).
ORIGIN_LIMITS_BROKER_DB = 4
WAITING = f"Waiting: the origin already serves {MAX_IN_FLIGHT} jobs at once"


@pytest.fixture(scope="module")
def limited_stack(django_db_setup: None, origin_server: OriginServer) -> Iterator[Stack]:
    redis.Redis.from_url(f"{settings.REDIS_URL}/{ORIGIN_LIMITS_BROKER_DB}").flushdb()
    env = stack_env(
        origin_server,
        {"ORIGIN_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT), "JOB_MAX_ACTIVE_PER_USER": str(JOBS)},
        broker_db=ORIGIN_LIMITS_BROKER_DB,
    )
    stack = Stack("origin-limits", env).start(worker=False)
    try:
        stack.start_worker(concurrency=8)
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def leases(origin: OriginServer) -> Iterator[OriginLimits]:
    """The test origin's leases, none held before the test (the test process names the
    origin as the stack's processes do)."""
    limits = OriginLimits(f"http:127.0.0.1:{origin.server_address[1]}")
    state_client().delete(limits.key)
    yield limits
    state_client().delete(limits.key)


def test_an_in_flight_limit_holds_the_other_jobs_queued_and_lets_each_through_once(
    limited_stack: Stack, origin: OriginServer, leases: OriginLimits
) -> None:
    scripts = {
        71500 + n: origin.add(71500 + n, FileScript(size=MiB, rate_bps=MiB)) for n in range(JOBS)
    }  # ~1 s
    token = api_key_for(User.objects.create_user(f"limits-{uuid4().hex[:12]}"))
    waited: dict[str, dict[str, Any]] = {}  # a status of each job seen waiting for the limit
    started = time.monotonic()

    with limited_stack.client(token) as api:
        jobs = {initiate(api, file_id): file_id for file_id in scripts}

        def seen(job_id: str, status: dict[str, Any]) -> None:
            if status.get("error", {}).get("code") == "ORIGIN_BUSY":
                waited.setdefault(job_id, status)

        finished = wait_until_all_finished(api, jobs, timeout_s=60, poll_s=0.05, seen=seen)

        assert {status["status"] for status in finished.values()} == {"completed"}, finished
        for job_id, file_id in jobs.items():
            assert_downloads_exactly(api, job_id, scripts[file_id], file_id)

    # Never more than two at the origin, and two at once indeed: the limit, not the worker, held them.
    assert origin.serving_peak == MAX_IN_FLIGHT
    assert len(waited) >= JOBS - MAX_IN_FLIGHT, waited.keys()
    for status in waited.values():
        assert status["status"] == "queued"
        assert status["attempts"] == 0
        assert status["error"] == {"code": "ORIGIN_BUSY", "message": WAITING, "retryable": True}
        assert status["next_retry_at"]
    rows = DownloadJob.objects.filter(job_id__in=jobs)
    assert sorted((row.status, row.attempts, row.error_code) for row in rows) == [("completed", 1, "")] * JOBS
    assert [origin.requests[file_id] for file_id in scripts] == [1] * JOBS
    assert state_client().zcard(leases.key) == 0  # every lease given back
    print(f"{JOBS} jobs, {MAX_IN_FLIGHT} at a time: {time.monotonic() - started:.1f} s")
