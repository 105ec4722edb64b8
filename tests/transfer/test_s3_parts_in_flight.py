"""S3 parts uploaded concurrently while the origin is read (STAGING_PARTS_IN_FLIGHT): a
bounded number in flight, the recorded parts always a stored prefix, a failing part a
STORAGE_ERROR, and resume after an interrupted concurrent upload. Against the moto
endpoint; the storage's own boto3 client is wrapped to see (and slow down, or misdirect)
its `upload_part` calls."""

import time
import tracemalloc
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import pytest

from jobs import services
from jobs.errors import ErrorCode, JobError
from jobs.models import Status
from jobs.parts import StoredPart
from jobs.transfer.origins import synthetic_chunks
from jobs.transfer.origins.local import SyntheticOrigin
from jobs.transfer.s3_multipart import S3MultipartWrite
from jobs.transfer.staging import NoHooks, stage_file
from jobs.transfer.storage import staged_write_open
from tests import factories
from tests.support.origin_server import FileScript, OriginServer
from tests.support.s3 import Bucket, UploadCalls

MiB = 1024 * 1024
PART = 5 * MiB
FILE_ID = 71500


def content_of(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + b"t" * (size % 256)


def chunks_write(write: Any, content: bytes, after: Callable[[], None] = lambda: None) -> None:
    for offset in range(0, len(content), MiB):
        write.write(content[offset : offset + MiB])
        after()


# --- the write ----------------------------------------------------------------------------


def test_parts_are_uploaded_concurrently_up_to_the_limit(bucket, s3_storage, s3_key, monkeypatch):
    calls = UploadCalls(s3_storage, monkeypatch, delay_s=lambda n: 0.3)
    content = content_of(6 * PART + 123)
    write = staged_write_open(s3_key, content_type="text/plain", part_bytes=PART, parts_in_flight=3)

    started = time.monotonic()
    chunks_write(write, content)
    write.commit()

    assert calls.most_active == 3  # overlapping, and never more than the limit
    # 7 parts of 0.3 s each, 3 at a time: about 3 rounds, not 7.
    assert time.monotonic() - started < 7 * 0.3
    assert [part.number for part in write.parts] == [1, 2, 3, 4, 5, 6, 7]
    assert bucket.read(s3_key)["Body"].read() == content
    assert bucket.open_uploads(s3_key) == []


def test_write_waits_while_the_limit_is_in_flight_so_memory_stays_bounded(
    bucket, s3_storage, s3_key, monkeypatch
):
    """Slow uploads and a fast origin: without the bound every part would be held at once."""
    in_flight = 2
    calls = UploadCalls(s3_storage, monkeypatch, delay_s=lambda n: 0.2)
    content = content_of(8 * PART)
    write = staged_write_open(s3_key, content_type="text/plain", part_bytes=PART, parts_in_flight=in_flight)
    assert isinstance(write, S3MultipartWrite)
    seen: list[int] = []

    tracemalloc.start()
    try:
        chunks_write(write, content, after=lambda: seen.append(write.in_flight))
        write.commit()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert max(seen) == in_flight
    assert calls.most_active <= in_flight
    # Part k starts only once k - in_flight parts (any of them) have finished.
    for number, start, _ in calls.calls:
        assert sum(end <= start for _, _, end in calls.calls) >= number - in_flight
    # The parts in flight and the one being filled (briefly joined into one body), with
    # room for botocore, well under the 8 parts of the file.
    assert peak < (in_flight + 2) * PART, f"{peak / MiB:.1f} MiB held"
    assert bucket.read(s3_key)["Body"].read() == content


def test_recorded_parts_are_always_a_stored_prefix(bucket, s3_storage, s3_key, monkeypatch):
    """Part 1 is slow: parts 2 to 4 are stored before it, and recorded only after it."""
    calls = UploadCalls(s3_storage, monkeypatch, delay_s=lambda n: 0.6 if n in (1, 5) else 0.0)
    recorded: list[tuple[float, list[int]]] = []

    class Recording(NoHooks):
        def part_stored(self, *, parts: Sequence[StoredPart]) -> None:
            recorded.append((time.monotonic(), [part.number for part in parts]))

    size = 7 * PART + 123
    staged = stage_file(
        origin=SyntheticOrigin(size_bytes=size, rate_bps=0), file_id=FILE_ID, key=s3_key, hooks=Recording()
    )

    assert staged.size == size
    numbers = [record for _, record in recorded]
    assert numbers, "no part was recorded"
    for record in numbers:
        assert record == list(range(1, len(record) + 1))
    assert [len(record) for record in numbers] == sorted({len(record) for record in numbers})
    assert numbers[-1] == list(range(1, 8))  # all whole parts, before the commit stored the last
    for at, record in recorded:
        assert all(calls.ended(number) <= at for number in record)
    # Parts finished out of order, yet none was recorded before the parts before it.
    assert calls.ended(2) < calls.ended(1)
    expected = b"".join(synthetic_chunks(FILE_ID, size, MiB))
    assert bucket.read(s3_key)["Body"].read() == expected


def test_a_failing_part_fails_the_write_and_abort_leaves_no_upload(bucket, s3_storage, s3_key, monkeypatch):
    calls = UploadCalls(s3_storage, monkeypatch, delay_s=lambda n: 0.1, refused=frozenset({2}))
    write = staged_write_open(s3_key, content_type="text/plain", part_bytes=PART, parts_in_flight=4)

    def stage() -> None:
        chunks_write(write, content_of(6 * PART))
        write.commit()

    with pytest.raises(JobError) as caught:
        stage()
    aborting = time.monotonic()
    write.abort()

    assert (caught.value.code, caught.value.message) == (
        ErrorCode.STORAGE_ERROR,
        "Storage refused the upload",
    )
    assert [part.number for part in write.parts] in ([], [1])  # never past the failed part
    assert all(end <= aborting for _, _, end in calls.calls)  # no part lands after the abort
    assert bucket.open_uploads(s3_key) == []
    assert not bucket.has(s3_key)


def test_abort_while_parts_are_in_flight_leaves_no_upload(bucket, s3_storage, s3_key, monkeypatch):
    calls = UploadCalls(s3_storage, monkeypatch, delay_s=lambda n: 0.3)
    write = staged_write_open(s3_key, content_type="text/plain", part_bytes=PART, parts_in_flight=4)
    chunks_write(write, content_of(3 * PART))
    # The process's upload threads have taken all three parts.
    deadline = time.monotonic() + 5
    while calls.active < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert calls.active == 3

    write.abort()

    assert len(calls.calls) == 3
    assert calls.active == 0
    assert bucket.open_uploads(s3_key) == []


# --- jobs: a failing part, and resume after an interrupted concurrent upload -----------------


make_job = partial(factories.make_job, file_id=FILE_ID)
committed = pytest.mark.django_db(transaction=True)


def open_uploads(bucket: Bucket, prefix: str) -> list[str]:
    listed = bucket.client.list_multipart_uploads(Bucket=bucket.name, Prefix=prefix)
    return [upload["Key"] for upload in listed.get("Uploads", [])]


@committed
def test_a_job_whose_part_fails_fails_with_storage_error_and_no_upload(
    user, origin: OriginServer, dispatched, bucket, s3_storage, settings, monkeypatch
):
    settings.STAGING_CHUNK_BYTES = 256 * 1024
    origin.add(FILE_ID, FileScript(size=6 * PART))
    UploadCalls(s3_storage, monkeypatch, delay_s=lambda n: 0.05, refused=frozenset({3}))
    job = make_job(user, max_attempts=1)

    services.download_job_run(job_pk=job.pk)

    job.refresh_from_db()
    assert (job.status, job.error_code) == (Status.FAILED, ErrorCode.STORAGE_ERROR)
    assert open_uploads(bucket, f"downloads/{user.pk}/{job.job_id}") == []
    assert not bucket.has(job.storage_key)


@committed
def test_a_retry_resumes_after_the_parts_in_flight_when_the_origin_dropped(
    user, origin: OriginServer, dispatched, bucket, s3_storage, settings, monkeypatch
):
    """The drop comes at half, with parts 1 to 4 handed over and still uploading (slowly):
    the attempt waits for them and records them, and the retry goes on after them."""
    settings.JOB_RETRY_JITTER = 0
    settings.STAGING_CHUNK_BYTES = 256 * 1024
    size = 9 * PART + 123
    script = origin.add(FILE_ID, FileScript(size=size, faults=["drop"]))
    calls = UploadCalls(s3_storage, monkeypatch, delay_s=lambda n: 0.4 if n <= 4 else 0.0)
    job = make_job(user)

    services.download_job_run(job_pk=job.pk)
    returned = time.monotonic()

    job.refresh_from_db()
    assert (job.status, job.error_code) == (Status.QUEUED, ErrorCode.NETWORK_ERROR)
    assert [(part.number, part.size) for part in factories.recorded_parts(job)] == [
        (n, PART) for n in range(1, 5)
    ]
    assert all(end <= returned for _, _, end in calls.calls)  # nothing left uploading

    services.download_job_run(job_pk=job.pk)

    job.refresh_from_db()
    assert (job.status, job.attempts, job.resumed_bytes) == (Status.COMPLETED, 2, 4 * PART)
    assert job.sha256 == script.sha256(FILE_ID)
    assert bucket.read(job.storage_key)["Body"].read() == script.content(FILE_ID)
    assert open_uploads(bucket, f"downloads/{user.pk}/{job.job_id}") == []
    # The retry uploaded parts 5 on, not 1 to 4 again.
    assert sorted(number for number, _, _ in calls.calls) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
