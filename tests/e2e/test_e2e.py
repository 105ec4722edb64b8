"""End to end: real processes (uvicorn + a Celery worker of the thread pool) driven through
the HTTP API only, against the test database, Redis, storage (local files or S3 through moto)
and a real HTTP origin that fails on cue. Nothing runs eagerly in this process.

Each test polls with a deadline; none sleeps for long. Child process logs are in
test-artifacts/logs/.
"""

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import uuid4

import httpx
import pytest
import redis
from django.conf import settings

from devtools.servers import S3Endpoint
from jobs.models import DownloadJob
from tests import factories
from tests.factories import api_key_for
from tests.support.flows import (
    assert_downloads_exactly,
    eventually,
    fetch_download,
    initiate,
    job_status,
    stack_s3,
    stored_files,
    wait_for_status,
    wait_until_finished,
)
from tests.support.origin_server import FileScript, OriginServer
from tests.support.stack import Stack, stack_env

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MiB = 1024 * 1024
STATUS_ORDER = {"queued": 0, "processing": 1, "completed": 2}


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def stack(request: pytest.FixtureRequest) -> Stack:
    return request.getfixturevalue(f"{request.param}_stack")


@pytest.fixture
def token(django_user_model: Any) -> str:
    """A user of its own per test; committed, so the stack's processes see it."""
    user = django_user_model.objects.create_user(f"e2e-{uuid4().hex[:12]}")
    return api_key_for(user)


# The Redis transport hands an unacknowledged message back to the queue only once it is
# older than the visibility timeout, when a worker starts (and every ~100 s after). The
# redelivery test needs a stack whose timeout is short enough to wait out.
REDELIVERY_BROKER_DB = 7
REDELIVERY_VISIBILITY_TIMEOUT_S = 3


@pytest.fixture(scope="module")
def redelivery_stack(django_db_setup: None, origin_server: OriginServer, s3: S3Endpoint) -> Iterator[Stack]:
    broker_url = f"{settings.REDIS_URL}/{REDELIVERY_BROKER_DB}"
    redis.Redis.from_url(broker_url).flushdb()
    env = stack_env(
        origin_server,
        {**s3.env, "CELERY_VISIBILITY_TIMEOUT_S": str(REDELIVERY_VISIBILITY_TIMEOUT_S)},
        broker_db=REDELIVERY_BROKER_DB,
    )
    stack = Stack("redelivery", env).start()
    yield stack
    stack.stop()


# A worker whose jobs have three seconds: past them, the job's own deadline ends it.
TIME_LIMIT_BROKER_DB = 14  # 5-13: the other test stacks (see test_alerts, test_deploy_nginx)


@pytest.fixture(scope="module")
def time_limit_stack(django_db_setup: None, origin_server: OriginServer, s3: S3Endpoint) -> Iterator[Stack]:
    redis.Redis.from_url(f"{settings.REDIS_URL}/{TIME_LIMIT_BROKER_DB}").flushdb()
    env = stack_env(
        origin_server,
        {**s3.env, "JOB_SOFT_TIME_LIMIT_S": "3", "JOB_HARD_TIME_LIMIT_S": "8"},
        broker_db=TIME_LIMIT_BROKER_DB,
    )
    stack = Stack("time-limit", env).start()
    yield stack
    stack.stop()


# --- helpers -------------------------------------------------------------------------------


def wait_until_stable(read: Callable[[], int], *, window_s: float, timeout_s: float) -> int:
    """Waits until `read()` stops changing for `window_s`; returns the value."""
    deadline = time.monotonic() + timeout_s
    value, since = read(), time.monotonic()
    while time.monotonic() - since < window_s:
        if time.monotonic() > deadline:
            raise AssertionError(f"still changing after {timeout_s} s (now {value})")
        time.sleep(0.05)
        current = read()
        if current != value:
            value, since = current, time.monotonic()
    return value


def broker(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(stack.env["CELERY_BROKER_URL"])


def wait_until_broker_idle(stack: Stack) -> None:
    """No message delivered and not yet acknowledged: killing the worker now loses nothing."""
    eventually(lambda: broker(stack).hlen("unacked") == 0, timeout_s=5, what="all messages acknowledged")


# --- 1. the happy path ---------------------------------------------------------------------


def test_download_reports_progress_and_delivers_the_origin_bytes(
    stack: Stack, origin: OriginServer, token: str
) -> None:
    file_id = 71001
    # > 5 MiB: two parts of an S3 multipart upload; ~2 s at 3 MiB/s, so progress shows.
    script = origin.add(
        file_id,
        FileScript(
            size=6 * MiB + 123,
            rate_bps=3 * MiB,
            content_type="application/pdf",
            file_name="annual report.pdf",
        ),
    )
    seen: list[dict[str, Any]] = []
    with stack.client(token) as api:
        job_id = initiate(api, file_id, priority="normal", metadata={"source": "e2e"})
        final = wait_until_finished(api, job_id, seen=seen)

        assert final["status"] == "completed", final
        statuses = [data["status"] for data in seen]
        order = [STATUS_ORDER[status] for status in statuses]
        assert order == sorted(order), statuses
        progress = [data["progress"] for data in seen]
        assert progress == sorted(progress), progress

        processing = [data for data in seen if data["status"] == "processing"]
        assert processing, statuses
        for data in processing:
            assert {"bytes_done", "bytes_total", "estimated_completion"} <= data.keys(), data
            assert data["bytes_total"] in (None, script.size), data
        done = [data["bytes_done"] for data in processing]
        assert done == sorted(done), done
        assert any(
            0 < data["bytes_done"] < script.size and 0 < data["progress"] < 100 and data["bytes_total"]
            for data in processing
        ), processing

        assert final["progress"] == 100
        assert final["download_url"] == f"/v1/download/{job_id}"
        assert final["file_name"] == "annual report.pdf"
        assert final["file_size"] == script.size
        assert final["expires_at"]
        assert "error" not in final

        link, file_response = fetch_download(api, job_id)
        # Each call mints a fresh link to the same file.
        again = api.get(f"/v1/download/{job_id}").json()["data"]

    expected = script.sha256(file_id)
    assert hashlib.sha256(file_response.content).hexdigest() == expected == link["sha256"]
    assert len(file_response.content) == script.size
    assert link["file_name"] == "annual report.pdf"
    assert link["content_type"] == "application/pdf"
    assert link["file_size"] == script.size
    assert {"expires_at", "retained_until"} <= link.keys()
    assert again["sha256"] == expected
    assert 'filename="annual report.pdf"' in file_response.headers["content-disposition"]
    assert file_response.headers["content-type"] == "application/pdf"

    row = DownloadJob.objects.get(job_id=job_id)
    assert row.attempts == 1
    assert row.metadata == {"source": "e2e"}
    assert origin.requests[file_id] == 1
    assert len(stored_files(stack, job_id)) == 1, stored_files(stack, job_id)


# --- 2. cancel mid-stream ------------------------------------------------------------------


def test_cancel_mid_stream_stops_the_origin_and_leaves_nothing_stored(
    stack: Stack, origin: OriginServer, token: str
) -> None:
    file_id = 71002
    script = origin.add(file_id, FileScript(size=8 * MiB, rate_bps=2 * MiB))  # ~4 s if not stopped
    with stack.client(token) as api:
        job_id = initiate(api, file_id)
        wait_for_status(api, job_id, lambda data: data["status"] == "processing" and data["bytes_done"] > 0)

        response = api.delete(f"/v1/download/{job_id}")
        assert response.status_code == 200, response.text
        assert response.json() == {"success": True, "message": "Job cancelled successfully"}
        assert job_status(api, job_id)["status"] == "cancelled"

        # The worker stops within a chunk and closes the origin connection.
        sent = wait_until_stable(lambda: origin.bytes_sent[file_id], window_s=0.5, timeout_s=3)
        assert sent < script.size, sent
        eventually(lambda: stored_files(stack, job_id) == [], timeout_s=3, what="nothing left in storage")

        after = job_status(api, job_id)
        assert after["status"] == "cancelled", after
        assert "download_url" not in after
        assert origin.bytes_sent[file_id] == sent
        assert origin.requests[file_id] == 1

        again = api.delete(f"/v1/download/{job_id}")
        assert again.status_code == 409, again.text
        assert again.json()["error"]["code"] == "JOB_ALREADY_FINISHED"
        assert api.get(f"/v1/download/{job_id}").status_code == 409

    row = DownloadJob.objects.get(job_id=job_id)
    assert row.status == "cancelled"
    assert row.cancelled_at is not None
    assert row.completed_at is None


# --- 3. retryable faults -------------------------------------------------------------------

FAULT_CODES = {"500": "TEMPORARY_UNAVAILABLE", "drop": "NETWORK_ERROR", "stall": "TIMEOUT"}


@pytest.mark.parametrize(
    ("faults", "attempts"),
    [pytest.param(["500", "drop"], 3, id="500-then-drop"), pytest.param(["stall"], 2, id="stall")],
)
def test_retryable_origin_faults_retry_then_succeed(
    stack: Stack, origin: OriginServer, token: str, faults: list[str], attempts: int
) -> None:
    file_id = 71003
    script = origin.add(file_id, FileScript(size=MiB + 7, faults=list(faults)))
    seen: list[dict[str, Any]] = []
    with stack.client(token) as api:
        job_id = initiate(api, file_id)
        final = wait_until_finished(api, job_id, seen=seen)
        assert final["status"] == "completed", final
        assert "error" not in final

        # Between attempts the job may be seen queued with its last error.
        expected_codes = {FAULT_CODES[fault] for fault in faults}
        for data in seen:
            if data["status"] == "queued" and data.get("attempts"):
                assert 1 <= data["attempts"] < attempts, data
                assert data["next_retry_at"], data
                assert data["error"]["code"] in expected_codes, data
                assert data["error"]["retryable"] is True, data

        assert_downloads_exactly(api, job_id, script, file_id)

    row = DownloadJob.objects.get(job_id=job_id)
    assert row.attempts == attempts
    assert row.error_code == ""
    assert row.dead_lettered_at is None
    assert origin.requests[file_id] == attempts
    # The failed attempts' partial uploads were aborted: only the completed file remains.
    files = stored_files(stack, job_id)
    assert len(files) == 1, files
    assert files[0].endswith(f"{job_id}-{attempts}")


# --- 4. not retryable ----------------------------------------------------------------------


def test_origin_404_fails_at_once_without_retry(stack: Stack, origin: OriginServer, token: str) -> None:
    file_id = 71004
    # A second request would succeed: the job must not make one.
    origin.add(file_id, FileScript(size=MiB, faults=["404"]))
    with stack.client(token) as api:
        job_id = initiate(api, file_id)
        final = wait_until_finished(api, job_id)
        assert final["status"] == "failed", final
        assert final["error"]["code"] == "FILE_NOT_FOUND"
        assert final["error"]["retryable"] is False
        assert final["error"]["message"]

        response = api.get(f"/v1/download/{job_id}")
        assert response.status_code == 409, response.text
        assert response.json()["success"] is False
        assert "failed" in response.json()["error"]["message"]

        again = api.delete(f"/v1/download/{job_id}")
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "JOB_ALREADY_FINISHED"

    row = DownloadJob.objects.get(job_id=job_id)
    assert row.attempts == 1
    assert row.dead_lettered_at is None
    assert origin.requests[file_id] == 1
    assert stored_files(stack, job_id) == []


# --- 5. the last attempt fails -------------------------------------------------------------


def test_last_attempt_failing_dead_letters_the_job(stack: Stack, origin: OriginServer, token: str) -> None:
    file_id = 71005
    origin.add(file_id, FileScript(size=MiB, faults=["500", "500", "500"]))
    with stack.client(token) as api:
        job_id = initiate(api, file_id)
        final = wait_until_finished(api, job_id)
        assert final["status"] == "failed", final
        assert final["error"]["code"] == "TEMPORARY_UNAVAILABLE"
        assert final["error"]["retryable"] is True
        assert "attempts" not in final  # only said of a job queued for its next attempt
        assert api.get(f"/v1/download/{job_id}").status_code == 409

    row = DownloadJob.objects.get(job_id=job_id)
    assert row.attempts == 3
    assert row.dead_lettered_at is not None
    assert row.failed_at is not None
    assert origin.requests[file_id] == 3
    assert stored_files(stack, job_id) == []


# --- 6. priority (local stack) -------------------------------------------------------------


@contextlib.contextmanager
def worker_stopped(stack: Stack) -> Iterator[None]:
    """The stack's worker is killed (once the broker is idle) for the block, which may
    start one of its own; after it, whatever happened, the stack has the worker the other
    tests expect (a failure inside is not hidden by one here)."""
    wait_until_broker_idle(stack)
    stack.kill_worker()
    try:
        yield
    finally:
        with contextlib.suppress(AssertionError):
            wait_until_broker_idle(stack)
        if stack.worker is not None and stack.worker.poll() is None:
            stack.kill_worker()
        stack.start_worker()


def test_high_priority_is_served_before_low(local_stack: Stack, origin: OriginServer, token: str) -> None:
    """With the worker down, 3 low jobs then 1 high job are queued. A worker with a single
    slot (prefetch 1) then takes one message at a time, and takes downloads.high first."""
    stack = local_stack
    low_ids, high_id = [71061, 71062, 71063], 71064
    for file_id in [*low_ids, high_id]:
        origin.add(file_id, FileScript(size=256 * 1024, rate_bps=2 * MiB))
    with worker_stopped(stack):
        with stack.client(token) as api:
            lows = [initiate(api, file_id, priority="low") for file_id in low_ids]
            high = initiate(api, high_id, priority="high")
            stack.start_worker(concurrency=1)
            for job_id in [*lows, high]:
                assert wait_until_finished(api, job_id)["status"] == "completed"
        rows = {row.job_id: row for row in DownloadJob.objects.filter(job_id__in=[*lows, high])}
        high_started = rows[high].started_at
        started = [at for job_id in lows if (at := rows[job_id].started_at) is not None]
        assert high_started is not None
        assert len(started) == len(lows)
        assert all(high_started < low_started for low_started in started), (high_started, started)
        # Within one priority, first come first served.
        assert started == sorted(started)


def test_initiate_estimates_the_wait_behind_the_jobs_queued_ahead(
    local_stack: Stack, origin: OriginServer, token: str
) -> None:
    """Before any completion the estimate is the default. One job completes on the worker;
    with the worker down, 3 low jobs then 1 high job queue: each low job is told more than
    the one before it, by the same step (one more job over the same rate), and the high
    job, which the worker serves first, as much as the first low one."""
    stack = local_stack
    first_id, low_ids, high_id = 71071, [71072, 71073, 71074], 71075
    for file_id in [first_id, *low_ids, high_id]:
        origin.add(file_id, FileScript(size=256 * 1024, rate_bps=2 * MiB))
    queued: list[str] = []

    def estimated_time(api: httpx.Client, file_id: int, priority: str) -> int:
        response = api.post("/v1/download/initiate", json={"file_id": file_id, "priority": priority})
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        queued.append(data["job_id"])
        value: int = data["estimated_time"]
        return value

    with stack.client(token) as api:
        assert estimated_time(api, first_id, "normal") == settings.JOB_DEFAULT_ESTIMATE_S
        assert wait_until_finished(api, queued[0])["status"] == "completed"
    try:
        with worker_stopped(stack), stack.client(token) as api:
            lows = [estimated_time(api, file_id, "low") for file_id in low_ids]
            high = estimated_time(api, high_id, "high")
        assert 1 <= lows[0] < lows[1] < lows[2], lows
        assert abs((lows[2] - lows[1]) - (lows[1] - lows[0])) <= 1, lows  # each rounded up
        assert high == lows[0], (high, lows)
    finally:
        with stack.client(token) as api:
            for job_id in queued:
                wait_until_finished(api, job_id)


# --- 7. a worker dies mid-job --------------------------------------------------------------


def test_job_of_a_killed_worker_is_redelivered_and_completes_once(
    redelivery_stack: Stack, origin: OriginServer, token: str
) -> None:
    stack = redelivery_stack
    file_id = 71007
    script = origin.add(file_id, FileScript(size=6 * MiB, rate_bps=1 * MiB))  # slow first attempt
    with stack.client(token) as api:
        job_id = initiate(api, file_id)
        wait_for_status(api, job_id, lambda data: data["status"] == "processing" and data["bytes_done"] > 0)
        stack.kill_worker()

        row = DownloadJob.objects.get(job_id=job_id)
        assert row.status == "processing"
        assert row.attempts == 1
        assert row.upload_id  # the crashed attempt left an unfinished upload behind
        # The message was delivered and never acknowledged: the broker still holds it.
        unacked = broker(stack).zrange("unacked_index", 0, -1, withscores=True)
        assert len(unacked) == 1, unacked
        delivered_at = float(unacked[0][1])

        script.rate_bps = 0  # the next attempt runs at full speed
        # A starting worker restores only messages older than the visibility timeout.
        while time.time() < delivered_at + REDELIVERY_VISIBILITY_TIMEOUT_S + 0.3:
            time.sleep(0.1)
        stack.start_worker()

        final = wait_until_finished(api, job_id)
        assert final["status"] == "completed", final
        eventually(lambda: broker(stack).hlen("unacked") == 0, timeout_s=5, what="redelivered message acked")
        assert_downloads_exactly(api, job_id, script, file_id)

    row = DownloadJob.objects.get(job_id=job_id)
    assert row.status == "completed"
    assert row.attempts == 2
    assert origin.requests[file_id] == 2
    # The crashed attempt's multipart upload was aborted; one object: the second attempt's.
    assert stored_files(stack, job_id) == [row.storage_key]
    assert row.storage_key.endswith(f"{job_id}-2")


# A whole worker's worth on the PostgreSQL profile: a hundred jobs in flight in one process of
# the thread pool when it is killed. The embedded default (SQLite) keeps to ten.
CRASH_JOBS = 10 if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3") else 100


def test_jobs_of_a_killed_worker_resume_from_their_stored_parts(
    redelivery_stack: Stack, origin: OriginServer, django_user_model: Any
) -> None:
    """kill -9 the worker in the middle of CRASH_JOBS jobs, each with a part stored, and
    start a new one: every job completes once, with the origin's bytes, and the new
    attempts fetch only what was not stored."""
    stack = redelivery_stack
    wait_until_broker_idle(stack)
    stack.kill_worker()
    stack.start_worker(concurrency=CRASH_JOBS)
    # A part of 5 MiB, sent in ~2 s, then 4 MiB at 64 KiB/s: no job can end before the kill.
    size = 9 * MiB
    file_ids = [71100 + n for n in range(CRASH_JOBS)]
    scripts = {
        file_id: origin.add(
            file_id,
            FileScript(
                size=size, rate_bps=5 * MiB // 2, tail_from=5 * MiB + 64 * 1024, tail_rate_bps=64 * 1024
            ),
        )
        for file_id in file_ids
    }
    # Users of five active jobs each (JOB_MAX_ACTIVE_PER_USER).
    tokens = [
        api_key_for(django_user_model.objects.create_user(f"crash-{uuid4().hex[:12]}"))
        for _ in range(CRASH_JOBS // 5)
    ]
    apis = [stack.client(token) for token in tokens]
    try:
        clients = {file_id: apis[n // 5] for n, file_id in enumerate(file_ids)}
        with ThreadPoolExecutor(10) as initiating:  # all at once, as a burst of users would
            jobs = dict(
                zip(file_ids, initiating.map(lambda f: initiate(clients[f], f), file_ids), strict=True)
            )
        rows = DownloadJob.objects.filter(job_id__in=jobs.values())
        # Every job has stored at least one part when the worker dies.
        eventually(
            lambda: all(len(factories.recorded_parts(row)) >= 1 for row in rows.all()),
            timeout_s=60,
            what=f"a part stored by each of the {CRASH_JOBS} jobs",
        )
        stack.kill_worker()
        delivered = [
            float(entry[1]) for entry in broker(stack).zrange("unacked_index", 0, -1, withscores=True)
        ]
        assert len(delivered) == CRASH_JOBS
        assert not rows.exclude(status="processing").exists()
        for script in scripts.values():
            script.rate_bps = script.tail_rate_bps = 0  # the next attempts run at full speed
        while time.time() < max(delivered) + REDELIVERY_VISIBILITY_TIMEOUT_S + 0.3:
            time.sleep(0.1)
        stack.start_worker(concurrency=CRASH_JOBS // 2)

        for file_id, job_id in jobs.items():
            final = wait_until_finished(clients[file_id], job_id, timeout_s=90)
            assert final["status"] == "completed", final
        for file_id in file_ids[:10]:  # the bytes themselves, for ten of them
            assert_downloads_exactly(clients[file_id], jobs[file_id], scripts[file_id], file_id)
    finally:
        for api in apis:
            api.close()

    rows = DownloadJob.objects.filter(job_id__in=jobs.values())

    def jobs_of(key: str) -> bool:
        return any(job_id in key for job_id in jobs.values())

    assert {(row.status, row.attempts) for row in rows} == {("completed", 2)}
    assert all(row.resumed_bytes >= 5 * MiB for row in rows)
    for row in rows:
        # A resumed file's sha256 is read back from storage: the stored bytes are the origin's.
        assert (row.file_size_bytes, row.sha256) == (size, scripts[row.file_id].sha256(row.file_id)), (
            row.job_id
        )
    # One object per job, its completing attempt's, and no unfinished upload.
    s3 = stack_s3(stack)
    assert s3 is not None
    listed = s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket)
    stored = [item["Key"] for page in listed for item in page.get("Contents", [])]
    assert sorted(key for key in stored if jobs_of(key)) == sorted(row.storage_key for row in rows)
    assert [upload["Key"] for upload in s3.open_multipart_uploads() if jobs_of(upload["Key"])] == []
    assert [origin.requests[file_id] for file_id in file_ids] == [2] * CRASH_JOBS
    for row in rows:
        # The second attempt asked for the rest, from the last stored part, and got it.
        (_, _), (second_start, second_sent) = origin.bodies[row.file_id]
        assert second_start == row.resumed_bytes
        assert second_sent == size - second_start
    fetched = sum(origin.bytes_sent[file_id] for file_id in file_ids)
    # About once each (the first attempts read a little past their stored part); fetching
    # every file whole again would make it 1.55x.
    assert fetched < 1.2 * CRASH_JOBS * size, f"{fetched / (CRASH_JOBS * size):.2f}x the files' size"
    print(f"{CRASH_JOBS} jobs resumed; fetched {fetched / (CRASH_JOBS * size):.2f}x the files' size")


def test_a_failing_origin_opens_the_breaker_and_its_recovery_closes_it(
    local_stack: Stack, origin: OriginServer, token: str
) -> None:
    """Past the failure threshold the breaker opens: a new job waits without a request to
    the origin; after ORIGIN_BREAKER_OPEN_S one probe goes through, succeeds, and closes it."""
    stack = local_stack
    with stack.client(token) as api:
        failing = [origin.add(71200 + n, FileScript(size=1000, faults=["503"] * 3)) for n in range(2)]
        for n in range(len(failing)):
            assert wait_until_finished(api, initiate(api, 71200 + n))["status"] == "failed"
        assert circuit_state(api, origin) == 2  # open: 5 failures of 5 outcomes, then the probe's

        origin.add(71210, FileScript(size=1000))
        job_id = initiate(api, 71210)
        waiting = wait_for_status(api, job_id, lambda data: data.get("next_retry_at") is not None)
        assert waiting["status"] == "queued"
        assert origin.requests[71210] == 0  # the origin was left alone

        final = wait_until_finished(api, job_id)
        assert final["status"] == "completed", final
        assert origin.requests[71210] == 1
        assert circuit_state(api, origin) == 0


def circuit_state(api: httpx.Client, origin: OriginServer) -> int:
    """The test origin's breaker as /metrics shows it (other tests' origins are listed too)."""
    series = f'download_origin_circuit_state{{origin="http:127.0.0.1:{origin.server_address[1]}"}} '
    for line in api.get("/metrics").text.splitlines():
        if line.startswith(series):
            return int(float(line.removeprefix(series)))
    raise AssertionError(f"no {series} in /metrics")


def test_a_job_past_its_time_limit_fails_download_timeout_and_leaves_nothing(
    time_limit_stack: Stack, origin: OriginServer, token: str
) -> None:
    """The attempt's own deadline (the thread pool has no Celery time limit) ends the
    download between two chunks, a part already stored: the job fails DOWNLOAD_TIMEOUT on
    time, not retried, and its multipart upload is aborted."""
    stack = time_limit_stack
    origin.add(71300, FileScript(size=12 * MiB, rate_bps=2 * MiB))  # 6 s of transfer
    with stack.client(token) as api:
        job_id = initiate(api, 71300)
        final = wait_until_finished(api, job_id, timeout_s=30)

    assert final["status"] == "failed", final
    assert final["error"] == {
        "code": "DOWNLOAD_TIMEOUT",
        "message": "File download exceeded 3 s",
        "retryable": False,
    }
    row = DownloadJob.objects.get(job_id=job_id)
    assert row.attempts == 1
    assert row.dead_lettered_at is None  # not retryable: nothing for an operator to re-queue
    assert row.started_at is not None
    assert row.failed_at is not None
    ran_s = (row.failed_at - row.started_at).total_seconds()
    assert 2.5 <= ran_s <= 4.5, ran_s
    assert stored_files(stack, job_id) == []
