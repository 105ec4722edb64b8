"""An attempt's own time limit, as the thread pool needs it (it has no Celery time limit):
the http origin checks the deadline between the network reads that make up a chunk, so a
trickling origin ends DOWNLOAD_TIMEOUT on time and is blamed for it; the chunks it hands on
keep their size and its caps whatever the reads; `stage_file` blames the origin only when
waiting for it spent the time; and the job reports that blame to the origin's breaker.

Against real local servers: the fault-scripted origin (a byte every 0.2 s) and a
`ReplyServer` that writes its body in small paced pieces."""

import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from jobs import services
from jobs.errors import ErrorCode, JobError
from jobs.models import DownloadJob, Status
from jobs.transfer import staging
from jobs.transfer.breaker import OriginBreaker, origin_breaker_name
from jobs.transfer.deadline import Deadline
from jobs.transfer.origins import HttpOrigin
from jobs.transfer.origins.local import SyntheticOrigin
from jobs.transfer.staging import NoHooks, stage_file
from jobs.transfer.storage import StagedWrite
from tests.support.origin_server import FileScript, OriginServer, Reply

FILE_ID = 70000
KiB = 1024
MiB = 1024 * KiB


def http_origin(url_template: str) -> HttpOrigin:
    """Read timeout 2 s: longer than the trickle's gaps, so only the deadline can end it."""
    return HttpOrigin(url_template=url_template, connect_timeout_s=2.0, read_timeout_s=2.0)


@pytest.fixture
def trickle(origin: OriginServer, monkeypatch: pytest.MonkeyPatch) -> OriginServer:
    """The test origin, trickling a byte every 0.2 s (never silent for a read timeout)."""
    monkeypatch.setattr(origin, "trickle_s", 0.2)
    return origin


@pytest.fixture
def network_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Spy: the size of each network read the http origin gets from httpx's raw stream
    (the reads pass through unchanged)."""
    sizes: list[int] = []
    real = httpx.Response.iter_raw

    def iter_raw(self: httpx.Response, chunk_size: int | None = None) -> Iterator[bytes]:
        for data in real(self, chunk_size):
            sizes.append(len(data))
            yield data

    monkeypatch.setattr(httpx.Response, "iter_raw", iter_raw)
    return sizes


def paced(body: bytes, **reply: Any) -> Reply:
    """`body` in pieces of 700 bytes, 5 ms apart: read in many small network reads."""
    return Reply(body=body, piece_bytes=700, piece_pause_s=0.005, **reply)


def read_into(received: list[bytes], origin: HttpOrigin, *, chunk_bytes: int, **open_kwargs: Any) -> None:
    """Reads the file chunk by chunk, keeping what arrived before a failure."""
    with origin.open(FILE_ID, chunk_bytes=chunk_bytes, **open_kwargs) as opened:
        for chunk in opened.chunks:
            received.append(chunk)


# --- the http origin: the deadline between network reads -----------------------------------


def test_a_trickling_origin_ends_download_timeout_at_the_deadline_as_the_origins_fault(trickle):
    # 25 bytes take 5 s: without the deadline the read would end well, with no error.
    trickle.add(FILE_ID, FileScript(size=25, faults=["trickle"]))
    deadline = Deadline.after(1.0)
    received: list[bytes] = []

    with pytest.raises(JobError) as caught:
        read_into(received, http_origin(trickle.url_template), chunk_bytes=16, deadline=deadline)
    ended_s = time.monotonic() - (deadline.at - deadline.limit_s)

    error = caught.value
    assert (error.code, error.message, error.origin_fault, error.retryable) == (
        ErrorCode.DOWNLOAD_TIMEOUT,
        "File download exceeded 1 s",
        True,
        False,
    )
    assert 1.0 <= ended_s < 1.5, ended_s
    assert received == []  # not one whole chunk in a second
    assert 3 <= trickle.bytes_sent[FILE_ID] <= 8


def test_chunks_keep_their_size_when_the_network_reads_are_small(reply_server, network_reads):
    body = os.urandom(25_000)
    reply_server.replies["/files/70000"] = paced(body)
    received: list[bytes] = []

    read_into(
        received,
        http_origin(reply_server.url("/files/{file_id}")),
        chunk_bytes=10_000,
        deadline=Deadline.after(30),
    )

    assert [len(chunk) for chunk in received] == [10_000, 10_000, 5_000]
    assert b"".join(received) == body
    assert len(network_reads) >= 15, network_reads  # each chunk made of several reads
    assert max(network_reads) < 10_000


@pytest.mark.parametrize(
    ("limit", "sent", "handed_on", "code"),
    [
        pytest.param(20_000, 20_000, 20_000, None, id="at-the-limit"),
        pytest.param(20_000, 20_001, 20_000, ErrorCode.FILE_TOO_LARGE, id="one-byte-past"),
        pytest.param(15_000, 25_000, 10_000, ErrorCode.FILE_TOO_LARGE, id="within-a-chunk"),
    ],
)
def test_the_size_cap_cuts_at_its_byte_whatever_the_reads(
    reply_server, network_reads, settings, limit, sent, handed_on, code
):
    """No Content-Length: only the bytes as they arrive say how large the file is."""
    settings.JOB_MAX_FILE_BYTES = limit
    body = os.urandom(sent)
    reply_server.replies["/files/70000"] = paced(body, content_length=False)
    received: list[bytes] = []

    if code is None:
        read_into(received, http_origin(reply_server.url("/files/{file_id}")), chunk_bytes=10_000)
    else:
        with pytest.raises(JobError) as caught:
            read_into(received, http_origin(reply_server.url("/files/{file_id}")), chunk_bytes=10_000)
        assert caught.value.code == code

    assert b"".join(received) == body[:handed_on]
    assert len(network_reads) > len(received)  # chunks made of several reads


@pytest.mark.parametrize(
    ("sent", "handed_on", "message"),
    [
        pytest.param(20_000, 20_000, None, id="as-announced"),
        pytest.param(
            20_001, 20_000, "Origin sent more than the 20000 bytes it announced", id="one-byte-more"
        ),
        pytest.param(19_999, 19_999, "Origin sent 19999 of 20000 bytes", id="one-byte-short"),
    ],
)
def test_the_announced_size_cuts_at_its_byte_whatever_the_reads(
    reply_server, network_reads, sent, handed_on, message
):
    """The rest of a file from offset 100, announced by its Content-Range (20,000 bytes),
    without a Content-Length: the chunks handed on stop where the announcement does."""
    body = os.urandom(sent)
    headers = {"Content-Range": "bytes 100-20099/20100", "ETag": '"v1"'}
    reply_server.replies["/files/70000"] = paced(body, status=206, headers=headers, content_length=False)
    received: list[bytes] = []
    origin = http_origin(reply_server.url("/files/{file_id}"))

    if message is None:
        read_into(received, origin, chunk_bytes=4_000, offset=100, validator='"v1"')
    else:
        with pytest.raises(JobError) as caught:
            read_into(received, origin, chunk_bytes=4_000, offset=100, validator='"v1"')
        assert (caught.value.code, caught.value.message) == (ErrorCode.NETWORK_ERROR, message)

    assert b"".join(received) == body[:handed_on]
    assert len(network_reads) > len(received)  # chunks made of several reads


# --- stage_file: whose fault the time limit is ---------------------------------------------


class SlowWrite:
    """A staged write that takes `delay_s` more for each chunk: a slow store."""

    def __init__(self, write: StagedWrite, delay_s: float) -> None:
        self.inner = write
        self.delay_s = delay_s

    def write(self, data: bytes) -> bool:
        time.sleep(self.delay_s)
        return self.inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def slow_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """Named fake: every staged write of this test is a SlowWrite of 50 ms a chunk around
    the real one (a store slow to take the bytes cannot be made on this machine)."""
    real = staging.staged_write_open
    monkeypatch.setattr(
        staging, "staged_write_open", lambda key, **kwargs: SlowWrite(real(key, **kwargs), 0.05)
    )


class Counting(NoHooks):
    def __init__(self) -> None:
        self.chunks = 0

    def chunk_staged(self, *, bytes_done: int, bytes_total: int | None) -> None:
        self.chunks += 1


def test_a_deadline_spent_on_a_slow_store_is_not_the_origins_fault(local_storage, slow_store, settings):
    settings.STAGING_CHUNK_BYTES = 64 * KiB
    hooks = Counting()

    with pytest.raises(JobError) as caught:
        stage_file(
            origin=SyntheticOrigin(size_bytes=10 * MiB, rate_bps=0),  # 160 chunks: 8 s at 50 ms
            file_id=FILE_ID,
            key="downloads/1/job_slow_store-1",
            hooks=hooks,
            deadline=Deadline.after(0.5),
        )

    assert (caught.value.code, caught.value.origin_fault) == (ErrorCode.DOWNLOAD_TIMEOUT, False)
    assert 5 <= hooks.chunks <= 12, hooks.chunks


def test_a_deadline_spent_waiting_for_a_slow_origin_is_the_origins_fault(local_storage, settings):
    settings.STAGING_CHUNK_BYTES = 64 * KiB
    hooks = Counting()

    with pytest.raises(JobError) as caught:
        stage_file(
            origin=SyntheticOrigin(size_bytes=10 * MiB, rate_bps=MiB),  # 62 ms a chunk: 10 s
            file_id=FILE_ID,
            key="downloads/1/job_slow_origin-1",
            hooks=hooks,
            deadline=Deadline.after(0.5),
        )

    assert (caught.value.code, caught.value.origin_fault) == (ErrorCode.DOWNLOAD_TIMEOUT, True)
    assert 5 <= hooks.chunks <= 10, hooks.chunks


def test_the_deadline_is_kept_between_chunks(local_storage, settings):
    """A clock of the test's own, which each chunk moves on by one second: a deadline of
    3 s lets exactly three chunks through and stops the fourth before it is stored."""
    settings.STAGING_CHUNK_BYTES = 64 * KiB
    now = [0.0]

    class Ticking(Counting):
        def chunk_staged(self, *, bytes_done: int, bytes_total: int | None) -> None:
            super().chunk_staged(bytes_done=bytes_done, bytes_total=bytes_total)
            now[0] += 1.0

    hooks = Ticking()
    with pytest.raises(JobError) as caught:
        stage_file(
            origin=SyntheticOrigin(size_bytes=MiB, rate_bps=0),
            file_id=FILE_ID,
            key="downloads/1/job_ticking-1",
            hooks=hooks,
            deadline=Deadline.after(3, clock=lambda: now[0]),
        )

    assert (caught.value.code, caught.value.message) == (
        ErrorCode.DOWNLOAD_TIMEOUT,
        "File download exceeded 3 s",
    )
    assert hooks.chunks == 3


# --- the job: the breaker hears the blame --------------------------------------------------


@pytest.fixture
def breaker(origin: OriginServer) -> OriginBreaker:
    """The test origin's breaker, as the job names it."""
    return OriginBreaker(origin_breaker_name())


@pytest.mark.django_db
def test_a_job_past_its_limit_on_a_trickling_origin_counts_against_the_origin(
    user, trickle, breaker, local_storage, settings
):
    settings.JOB_SOFT_TIME_LIMIT_S = 1
    trickle.add(FILE_ID, FileScript(size=25, faults=["trickle"]))
    job = DownloadJob.objects.create(owner=user, file_id=FILE_ID, max_attempts=3)

    started = time.monotonic()
    services.download_job_run(job_pk=job.pk)

    job.refresh_from_db()
    assert (job.status, job.error_code, job.error_retryable, job.attempts) == (
        Status.FAILED,
        ErrorCode.DOWNLOAD_TIMEOUT,
        False,
        1,
    )
    assert time.monotonic() - started < 2
    state = breaker.state()
    assert (state.failures, state.successes) == (1, 0)


@pytest.mark.django_db
def test_a_job_past_its_limit_on_a_slow_store_counts_neither_for_nor_against_the_origin(
    user, origin, breaker, local_storage, slow_store, settings
):
    settings.JOB_SOFT_TIME_LIMIT_S = 1
    settings.STAGING_CHUNK_BYTES = 64 * KiB
    origin.add(FILE_ID, FileScript(size=4 * MiB))  # at full speed; 64 chunks: 3 s at 50 ms
    job = DownloadJob.objects.create(owner=user, file_id=FILE_ID, max_attempts=3)

    services.download_job_run(job_pk=job.pk)

    job.refresh_from_db()
    assert (job.status, job.error_code) == (Status.FAILED, ErrorCode.DOWNLOAD_TIMEOUT)
    state = breaker.state()
    assert (state.failures, state.successes) == (0, 0)
