"""The library against a real server and worker (uvicorn + Celery, local files or S3), with
real proxies in between where the network has to fail."""

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from downloads_client import (
    Client,
    JobAlreadyFinished,
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobNotReady,
    Progress,
    RateLimited,
    Unauthenticated,
)

from tests.support.stack import Stack, stack_env

from .proxies import CuttingProxy, UpgradeRefusingProxy
from .stack_api import MiB, active_job, job_status, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_download_follows_the_socket_and_saves_the_verified_file(
    stack: Stack, add_file: Callable[..., Any], token: str, tmp_path: Path
) -> None:
    file_id = 72001
    # ~1 s at 3 MiB/s: the socket carries progress.
    script = add_file(file_id, 3 * MiB + 17, rate_bps=3 * MiB, file_name="report 2024.pdf")
    seen: list[Progress] = []
    with Client(stack.base_url, token) as client:
        result = client.download(file_id, tmp_path, priority="high", on_progress=seen.append)
        final = client.status(result.job_id)
        listed = list(client.jobs())

    expected = script.sha256(file_id)
    assert result.path == tmp_path / "report 2024.pdf"
    assert result.size == script.size
    assert result.sha256 == expected
    assert hashlib.sha256(result.path.read_bytes()).hexdigest() == expected
    assert not (tmp_path / "report 2024.pdf.part").exists()

    preparing = [p for p in seen if p.phase in ("queued", "processing")]
    assert {p.transport for p in preparing if p.transport} == {"websocket"}, preparing
    processing = [p for p in seen if p.phase == "processing"]
    assert any(0 < (p.bytes_done or 0) < script.size for p in processing), processing
    assert [p.percent for p in processing] == sorted(p.percent for p in processing)
    downloading = [p for p in seen if p.phase == "downloading"]
    assert downloading[-1].bytes_done == downloading[-1].bytes_total == script.size
    assert downloading[-1].percent == 100

    assert final.status == "completed"
    assert final.file_size == script.size
    assert final.file_name == "report 2024.pdf"
    assert [job.job_id for job in listed] == [result.job_id]
    assert listed[0].priority == "high"


def test_a_refused_socket_falls_back_to_polling(
    local_stack: Stack, add_file: Callable[..., Any], token: str, tmp_path: Path
) -> None:
    file_id = 72002
    script = add_file(file_id, 3 * MiB, rate_bps=MiB)  # 3 s: polls see it processing
    proxy = UpgradeRefusingProxy(local_stack.port)
    seen: list[Progress] = []
    try:
        with Client(proxy.url, token) as client:
            result = client.download(file_id, tmp_path / "file.bin", on_progress=seen.append)
    finally:
        proxy.stop()

    assert result.sha256 == script.sha256(file_id)
    assert proxy.refused >= 1
    transports = {p.transport for p in seen if p.phase != "downloading" and p.transport}
    assert transports == {"polling"}, seen
    assert any(p.phase == "processing" for p in seen)


def test_a_socket_refused_4401_reopens_with_the_fresh_ticket_of_a_status(
    local_stack: Stack, add_file: Callable[..., Any], token: str
) -> None:
    """A ticket past its TTL is closed 4401, as this forged one is: polling takes over, and
    the status it reads carries a fresh websocket_url, which the next try opens."""
    file_id = 72008
    add_file(file_id, 3 * MiB, rate_bps=MiB)
    seen: list[Progress] = []
    with Client(local_stack.base_url, token) as client:
        job = client.initiate(file_id)
        assert job.websocket_url is not None
        forged = job.websocket_url.split("?ticket=")[0] + "?ticket=forged"
        final = client.wait(job.job_id, websocket_url=forged, polling_interval_s=0.5, on_progress=seen.append)

    assert final.status == "completed"
    transports = [p.transport for p in seen if p.transport]
    assert transports[0] == "polling", transports
    assert "websocket" in transports, transports


def test_a_dropped_download_resumes_with_a_fresh_link(
    stack: Stack,
    add_file: Callable[..., Any],
    token: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The connection of the file drops after 1 MiB, then its next request is refused (as
    an expired link is): the client asks for a fresh link and goes on from the bytes it has."""
    file_id = 72003
    script = add_file(file_id, 3 * MiB + 5)
    cut_after = MiB
    proxy = CuttingProxy(cut_after_bytes=cut_after)
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("http_proxy", proxy.url)
    try:
        with Client(stack.base_url, token) as client:
            result = client.download(file_id, tmp_path / "file.bin")
    finally:
        proxy.stop()

    assert result.size == script.size
    assert result.sha256 == script.sha256(file_id)
    assert hashlib.sha256((tmp_path / "file.bin").read_bytes()).hexdigest() == result.sha256

    cut, refused, resumed = proxy.file_requests()
    assert (cut.range, cut.status, cut.action) == (None, 200, "cut")
    assert (refused.range, refused.action) == (f"bytes={cut_after}-", "refused")
    assert resumed.range == f"bytes={cut_after}-"
    if stack.name == "s3":
        assert resumed.status == 206  # the rest only
    else:
        # The local storage's signed links ignore Range: the whole file again.
        assert resumed.status == 200
    # The first link, then a fresh one after the refusal.
    assert len(proxy.api_requests(f"/v1/download/{result.job_id}")) == 2
    assert any(seen.action == "tunnel" for seen in proxy.seen)  # the socket went through too


def test_a_failed_job_raises_job_failed_with_its_code(
    local_stack: Stack, add_file: Callable[..., Any], token: str, tmp_path: Path
) -> None:
    file_id = 72004
    add_file(file_id, MiB, faults=["404"])
    with Client(local_stack.base_url, token) as client:
        with pytest.raises(JobFailed) as failed:
            client.download(file_id, tmp_path)
        job_id = failed.value.job_id
        assert job_id is not None
        # Awaited again, or collected, it says the same.
        with pytest.raises(JobFailed) as again:
            client.wait(job_id)
        with pytest.raises(JobNotReady) as not_ready:
            client.fetch(job_id, tmp_path)

    assert failed.value.code == again.value.code == "FILE_NOT_FOUND"
    assert failed.value.retryable is False
    assert failed.value.message
    assert not_ready.value.status == 409
    assert list(tmp_path.iterdir()) == []


def test_cancel_status_and_errors_of_the_api(
    local_stack: Stack, add_file: Callable[..., Any], token: str
) -> None:
    file_id = 72005
    add_file(file_id, 4 * MiB, rate_bps=MiB)
    with Client(local_stack.base_url, token) as client:
        job = client.initiate(file_id, priority="low", metadata={"by": "test"})
        assert job.status == "queued"
        assert job.websocket_url
        assert "?ticket=" in job.websocket_url
        wait_for(lambda: active_job(local_stack, token), timeout_s=10, what="the job processing")
        assert [j.job_id for j in client.jobs(active=True)] == [job.job_id]
        processing = client.status(job.job_id)
        assert processing.status == "processing"
        assert processing.websocket_url  # a fresh ticket for a later reconnect

        waiter: dict[str, BaseException] = {}

        def wait() -> None:
            try:
                client.wait(job.job_id)
            except BaseException as exc:
                waiter["raised"] = exc

        thread = threading.Thread(target=wait)
        thread.start()
        time.sleep(0.5)
        client.cancel(job.job_id)
        thread.join(10)
        assert isinstance(waiter.get("raised"), JobCancelled), waiter

        with pytest.raises(JobAlreadyFinished) as finished:
            client.cancel(job.job_id)
        assert (finished.value.status, finished.value.details["status"]) == (409, "cancelled")
        assert list(client.jobs(active=True)) == []
        with pytest.raises(JobNotFound):
            client.status("job_" + "0" * 32)

    assert job_status(local_stack, token, job.job_id)["status"] == "cancelled"
    with Client(local_stack.base_url, "not-a-token") as stranger, pytest.raises(Unauthenticated) as refused:
        stranger.status(job.job_id)
    assert (refused.value.code, refused.value.status) == ("UNAUTHENTICATED", 401)


# --- rate limits ---------------------------------------------------------------------------

# A web process only (no worker, so jobs stay queued: active), one active job per user, and
# a second's wait after a refusal. Redis database 4 is free of the other test stacks.
RATE_LIMIT_BROKER_DB = 4


@pytest.fixture(scope="module")
def limited_stack(django_db_setup: None, origin_server: Any) -> Iterator[Stack]:
    redis.Redis.from_url(f"{settings.REDIS_URL}/{RATE_LIMIT_BROKER_DB}").flushdb()
    env = stack_env(
        origin_server,
        {"JOB_MAX_ACTIVE_PER_USER": "1", "JOB_ACTIVE_LIMIT_RETRY_AFTER_S": "1"},
        broker_db=RATE_LIMIT_BROKER_DB,
    )
    stack = Stack("client-rate-limit", env).start(worker=False)
    yield stack
    stack.stop()
    redis.Redis.from_url(f"{settings.REDIS_URL}/{RATE_LIMIT_BROKER_DB}").flushdb()


def test_a_rate_limited_initiate_waits_for_retry_after_when_asked(limited_stack: Stack, token: str) -> None:
    with Client(limited_stack.base_url, token) as client:
        first = client.initiate(72006)
        with pytest.raises(RateLimited) as limited:
            client.initiate(72007)
        assert (limited.value.status, limited.value.retry_after) == (429, 1.0)
        assert "Maximum 1 concurrent" in limited.value.message

        # The first job ends in a while; the second initiate waits until then.
        timer = threading.Timer(1.5, client.cancel, args=[first.job_id])
        timer.start()
        started = time.monotonic()
        second = client.initiate(72007, retry_rate_limited=True)
        timer.join()

    assert time.monotonic() - started >= 1.0
    assert second.job_id != first.job_id
    assert second.status == "queued"
