"""Resume: an attempt after a crash or a retryable fault goes on from the last part an
earlier attempt stored, asking the origin for the rest with `Range` + `If-Range`; the
attempts are fenced by their number. Attempts run in process against the real local
HTTP origin, on local storage and on the moto S3 endpoint. The broker send is the one
fake (`dispatched`); the crash of a real worker is in test_e2e."""

from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.exceptions import SoftTimeLimitExceeded
from django.core.files.storage import storages
from django.db import OperationalError
from django.utils import timezone

from jobs import hotstate, services
from jobs.errors import ErrorCode, JobSuperseded
from jobs.models import DownloadJob, Status
from jobs.parts import StoredPart
from jobs.services import attempt, attempt_end
from jobs.services.attempt_hooks import AttemptHooks
from jobs.transfer.staging import StoredFileFacts
from tests import factories
from tests.support.origin_server import FileScript, OriginServer
from tests.support.s3 import Bucket, s3_downloads_storage

FILE_ID = 71000
MiB = 1024 * 1024
PART = 5 * MiB
SIZE = 12 * MiB + 123  # the drop comes at half: after one stored part of 5 MiB

committed = pytest.mark.django_db(transaction=True)


class Storage:
    """What one test leaves in its storage: local files, or S3 objects and open uploads."""

    def __init__(self, root: Path | None = None, bucket: Bucket | None = None) -> None:
        self.root = root
        self.bucket = bucket

    def leftovers(self, job: DownloadJob) -> list[str]:
        """Everything of the job's keys but its completed file: parts, open uploads."""
        prefix = f"downloads/{job.owner_id}/{job.job_id}"
        if self.root is not None:
            return sorted(
                str(path.relative_to(self.root))
                for path in (self.root / "downloads").rglob("*")
                if path.is_file()
                and str(path.relative_to(self.root)).startswith(prefix)
                and str(path.relative_to(self.root)) != job.storage_key
            )
        assert self.bucket is not None
        uploads = self.bucket.client.list_multipart_uploads(Bucket=self.bucket.name, Prefix=prefix)
        return [f"upload of {upload['Key']}" for upload in uploads.get("Uploads", [])]

    def objects(self, job: DownloadJob) -> list[str]:
        prefix = f"downloads/{job.owner_id}/{job.job_id}"
        if self.root is not None:
            return sorted(
                str(path.relative_to(self.root))
                for path in (self.root / "downloads").rglob("*")
                if path.is_file()
                and not path.name.endswith(".part")
                and str(path.relative_to(self.root)).startswith(prefix)
            )
        assert self.bucket is not None
        listed = self.bucket.client.list_objects_v2(Bucket=self.bucket.name, Prefix=prefix)
        return sorted(item["Key"] for item in listed.get("Contents", []))


@pytest.fixture(params=["local", "s3"])
def storage(request: Any, settings: Any, origin: OriginServer, dispatched: Any, tmp_path: Path) -> Storage:
    settings.STAGING_CHUNK_BYTES = 256 * 1024
    settings.STAGING_PART_BYTES = PART
    settings.JOB_RETRY_JITTER = 0
    settings.JOB_MAX_ATTEMPTS = 3
    if request.param == "local":
        settings.STORAGES = {
            **settings.STORAGES,
            "downloads": {
                "BACKEND": "jobs.transfer.links.SignedFileSystemStorage",
                "OPTIONS": {"location": str(tmp_path), "base_url": "/files/"},
            },
        }
        (tmp_path / "downloads").mkdir()
        return Storage(root=tmp_path)
    s3 = request.getfixturevalue("s3")
    settings.STORAGES = {**settings.STORAGES, "downloads": s3_downloads_storage(s3)}
    return Storage(bucket=Bucket(s3))


make_job = partial(factories.make_job, file_id=FILE_ID)


def stored_bytes(job: DownloadJob) -> bytes:
    with storages["downloads"].open(job.storage_key, "rb") as handle:
        return handle.read()


@committed
def test_a_retry_resumes_after_the_last_stored_part(user, origin, storage):
    script = origin.add(FILE_ID, FileScript(size=SIZE, faults=["drop"]))
    job = make_job(user)

    services.download_job_run(job_pk=job.pk)

    job.refresh_from_db()
    assert (job.status, job.error_code) == (Status.QUEUED, ErrorCode.NETWORK_ERROR)
    assert [part.size for part in factories.recorded_parts(job)] == [PART]
    assert job.upload_id
    assert job.origin_validator == script.etag(FILE_ID)

    services.download_job_run(job_pk=job.pk)

    job.refresh_from_db()
    assert (job.status, job.attempts, job.resumed_bytes) == (Status.COMPLETED, 2, PART)
    assert job.storage_key == f"downloads/{user.pk}/{job.job_id}-1"  # the upload of attempt 1
    assert (job.upload_id, factories.recorded_parts(job)) == ("", ())
    assert job.sha256 == script.sha256(FILE_ID)
    assert stored_bytes(job) == script.content(FILE_ID)
    assert storage.objects(job) == [job.storage_key]
    assert storage.leftovers(job) == []
    # Attempt 1 sent half the file; attempt 2 only what was not stored.
    assert origin.requests[FILE_ID] == 2
    assert origin.bytes_sent[FILE_ID] <= SIZE // 2 + 256 * 1024 + (SIZE - PART)


@committed
def test_a_job_writes_its_row_five_times_whatever_its_parts_and_heartbeats(user, origin, storage, settings):
    """The insert, the start, the upload's opening, the file's facts before the commit,
    the completion: the parts and the heartbeats (here one per chunk) go to Redis."""
    settings.JOB_HEARTBEAT_INTERVAL_S = 0
    settings.STAGING_CHUNK_BYTES = 256 * 1024
    script = origin.add(FILE_ID, FileScript(size=5 * PART + 7))
    job = make_job(user)

    services.download_job_run(job_pk=job.pk)

    job.refresh_from_db()
    assert (job.status, job.sha256) == (Status.COMPLETED, script.sha256(FILE_ID))
    assert factories.row_writes(job) == 5


@committed
def test_a_retried_job_adds_three_row_writes_per_attempt(user, origin, storage, settings):
    """The failed attempt's end, the next attempt's start and its upload's opening."""
    settings.JOB_HEARTBEAT_INTERVAL_S = 0
    origin.add(FILE_ID, FileScript(size=SIZE, faults=["drop"]))
    job = make_job(user)

    services.download_job_run(job_pk=job.pk)
    services.download_job_run(job_pk=job.pk)

    job.refresh_from_db()
    assert (job.status, job.attempts, job.resumed_bytes) == (Status.COMPLETED, 2, PART)
    assert factories.row_writes(job) == 8


@committed
def test_an_origin_without_ranges_sends_the_whole_file_again(user, origin, storage):
    script = origin.add(FILE_ID, FileScript(size=SIZE, faults=["drop"], ranges=False))
    job = make_job(user)

    services.download_job_run(job_pk=job.pk)
    services.download_job_run(job_pk=job.pk)

    job.refresh_from_db()
    assert (job.status, job.attempts, job.resumed_bytes) == (Status.COMPLETED, 2, 0)
    assert job.sha256 == script.sha256(FILE_ID)
    assert stored_bytes(job) == script.content(FILE_ID)
    assert storage.leftovers(job) == []  # the first upload was aborted


@committed
def test_a_file_without_a_validator_is_fetched_whole_again(user, origin, storage):
    """Without an ETag or Last-Modified, `If-Range` cannot guard the rest: no resume."""
    script = origin.add(FILE_ID, FileScript(size=SIZE, faults=["drop"], validators=False))
    job = make_job(user)

    services.download_job_run(job_pk=job.pk)
    services.download_job_run(job_pk=job.pk)

    job.refresh_from_db()
    assert (job.status, job.resumed_bytes, job.origin_validator) == (Status.COMPLETED, 0, "")
    assert stored_bytes(job) == script.content(FILE_ID)
    assert storage.leftovers(job) == []


@committed
def test_a_file_changed_at_the_origin_is_fetched_whole_again(user, origin, storage):
    script = origin.add(FILE_ID, FileScript(size=SIZE, faults=["drop"]))
    job = make_job(user)
    services.download_job_run(job_pk=job.pk)
    script.version = 2  # If-Range names the old ETag: the origin answers 200, the whole file

    services.download_job_run(job_pk=job.pk)

    job.refresh_from_db()
    assert (job.status, job.resumed_bytes) == (Status.COMPLETED, 0)
    assert job.origin_validator == script.etag(FILE_ID)
    assert stored_bytes(job) == script.content(FILE_ID)
    assert storage.leftovers(job) == []


@committed
def test_a_fenced_attempt_can_no_longer_record_parts_or_commit(user, origin, storage, settings):
    origin.add(FILE_ID, FileScript(size=SIZE, faults=["drop"]))
    job = make_job(user)
    services.download_job_run(job_pk=job.pk)  # one part stored, queued for a retry
    started = services.download_job_start(job_pk=job.pk)
    assert started is not None
    old_attempt = AttemptHooks(started)  # the worker's copy of attempt 2
    recorded = factories.recorded_parts(job)
    # Attempt 2's worker goes silent; the reaper presumes it dead and fences it out.
    later = timezone.now() + timedelta(seconds=settings.JOB_HEARTBEAT_STALE_S + 1)
    assert services.download_jobs_reap(now=later) == 1

    with pytest.raises(JobSuperseded):
        old_attempt.part_stored(parts=[*recorded, StoredPart(number=2, size=PART, etag='"late"')])
    with pytest.raises(JobSuperseded):
        old_attempt.before_commit(file=StoredFileFacts(size=SIZE, file_name="f", content_type="", sha256=""))

    job.refresh_from_db()
    assert (job.status, factories.recorded_parts(job)) == (Status.QUEUED, recorded)
    # The next attempt resumes what the fenced one could not spoil, and completes.
    services.download_job_run(job_pk=job.pk)
    job.refresh_from_db()
    assert (job.status, job.attempts, job.resumed_bytes) == (Status.COMPLETED, 3, PART)


@committed
def test_a_job_past_its_time_limit_fails_and_leaves_no_partial_object(user, origin, storage, monkeypatch):
    origin.add(FILE_ID, FileScript(size=SIZE))
    job = make_job(user)
    real_part_stored = AttemptHooks.part_stored

    def time_is_up(self: AttemptHooks, *, parts: list[dict[str, Any]]) -> None:
        real_part_stored(self, parts=parts)
        raise SoftTimeLimitExceeded()  # as Celery raises it in the middle of the work

    monkeypatch.setattr(AttemptHooks, "part_stored", time_is_up)

    services.download_job_run(job_pk=job.pk)

    job.refresh_from_db()
    assert (job.status, job.error_code, job.error_retryable) == (
        Status.FAILED,
        ErrorCode.DOWNLOAD_TIMEOUT,
        False,
    )
    assert (job.upload_id, factories.recorded_parts(job)) == ("", ())
    assert storage.objects(job) == []
    assert storage.leftovers(job) == []


@committed
def test_cancelling_a_job_that_waits_for_its_retry_aborts_its_upload(user, origin, storage):
    origin.add(FILE_ID, FileScript(size=SIZE, faults=["drop"]))
    job = make_job(user)
    services.download_job_run(job_pk=job.pk)
    job.refresh_from_db()
    assert job.status == Status.QUEUED
    assert factories.recorded_parts(job)

    services.download_job_cancel(job=job)

    job.refresh_from_db()
    assert (job.status, job.upload_id) == (Status.CANCELLED, "")
    assert storage.leftovers(job) == []
    assert storage.objects(job) == []


@committed
def test_the_last_attempt_failing_aborts_the_upload(user, origin, storage):
    origin.add(FILE_ID, FileScript(size=SIZE, faults=["drop", "drop", "drop"]))
    job = make_job(user)

    for _ in range(3):
        services.download_job_run(job_pk=job.pk)

    job.refresh_from_db()
    assert (job.status, job.attempts, job.dead_lettered_at is not None) == (Status.FAILED, 3, True)
    assert storage.leftovers(job) == []
    assert storage.objects(job) == []


@committed
def test_a_cancel_before_the_origin_answers_leaves_no_upload(user, origin, storage):
    """The user cancels while the origin delays its headers: the attempt opens its upload
    only after, its first write is refused, and the upload it opened must not stay."""
    origin.add(FILE_ID, FileScript(size=SIZE))
    job = make_job(user)
    started = services.download_job_start(job_pk=job.pk)
    assert started is not None
    services.download_job_cancel(job=DownloadJob.objects.get(pk=job.pk))

    assert attempt._attempt_run(started) is None

    assert storage.leftovers(job) == []
    assert storage.objects(job) == []


@committed
def test_a_redis_error_at_cancel_neither_skips_the_abort_nor_fails_the_request(
    user, origin, storage, api_client, monkeypatch
):
    origin.add(FILE_ID, FileScript(size=SIZE, faults=["drop"]))
    job = make_job(user)
    services.download_job_run(job_pk=job.pk)  # one part stored, queued for its retry
    job.refresh_from_db()
    assert factories.recorded_parts(job)

    def redis_down(job_id: str) -> None:
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(hotstate, "cancel_flag_set", redis_down)
    response = api_client.delete(f"/v1/download/{job.job_id}")

    assert response.status_code == 200
    job.refresh_from_db()
    assert (job.status, job.upload_id) == (Status.CANCELLED, "")
    assert storage.leftovers(job) == []


@committed
def test_a_database_blip_at_completion_is_retried_and_the_file_kept(user, origin, storage, monkeypatch):
    origin.add(FILE_ID, FileScript(size=SIZE))
    job = make_job(user)
    real_transition = attempt_end.transition
    failures = [OperationalError("server closed the connection unexpectedly")] * 2
    waits: list[float] = []

    def flaky(job: DownloadJob, to_status: str, **kwargs: Any) -> None:
        if to_status == Status.COMPLETED and failures:
            raise failures.pop()
        real_transition(job, to_status, **kwargs)

    monkeypatch.setattr(attempt_end, "transition", flaky)
    monkeypatch.setattr(attempt_end.time, "sleep", waits.append)

    services.download_job_run(job_pk=job.pk)

    job.refresh_from_db()
    assert job.status == Status.COMPLETED
    assert storage.objects(job) == [job.storage_key]
    assert waits == [1.0, 2.0]  # backoff


def _completion_write_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every completion write fails (the database is down past the retries)."""
    real_transition = attempt_end.transition

    def down(job: DownloadJob, to_status: str, **kwargs: Any) -> None:
        if to_status == Status.COMPLETED:
            raise OperationalError("the database system is shutting down")
        real_transition(job, to_status, **kwargs)

    monkeypatch.setattr(attempt_end, "transition", down)
    monkeypatch.setattr(attempt_end.time, "sleep", lambda s: None)


@committed
@pytest.mark.parametrize("max_attempts", [3, 1], ids=["attempts-left", "last-attempt"])
def test_a_stored_file_whose_completion_write_was_lost_completes_without_fetching_again(
    user, origin, storage, settings, monkeypatch, max_attempts
):
    """The file is stored, then every completion write fails; the worker gives up. The
    reaper finds the job silent: whoever takes it next (a new attempt, or the reaper on
    the last one) completes it from the stored file, neither fetching it again nor
    deleting it."""
    script = FileScript(size=SIZE)
    origin.add(FILE_ID, script)
    job = DownloadJob.objects.create(owner=user, file_id=FILE_ID, max_attempts=max_attempts)
    with monkeypatch.context() as patch:
        _completion_write_fails(patch)
        with pytest.raises(OperationalError):
            services.download_job_run(job_pk=job.pk)
    stored_key = DownloadJob.objects.get(pk=job.pk).storage_key

    later = timezone.now() + timedelta(seconds=settings.JOB_HEARTBEAT_STALE_S + 1)
    services.download_jobs_reap(now=later)
    services.download_job_run(job_pk=job.pk)  # the re-sent message, if any

    job.refresh_from_db()
    assert (job.status, job.storage_key) == (Status.COMPLETED, stored_key)
    assert job.sha256 == script.sha256(FILE_ID)
    assert job.file_size_bytes == SIZE
    assert stored_bytes(job) == script.content(FILE_ID)
    assert origin.requests[FILE_ID] == 1
    assert storage.leftovers(job) == []


@committed
def test_an_origin_content_type_longer_than_its_column_still_completes(user, origin, storage):
    """On PostgreSQL a value longer than the column fails the final write (DataError) and
    the stored file was thrown away; the origin's header is capped before it gets there."""
    origin.add(FILE_ID, FileScript(size=SIZE, content_type="application/" + "x" * 300))
    job = make_job(user)

    services.download_job_run(job_pk=job.pk)

    job.refresh_from_db()
    assert (job.status, job.content_type) == (Status.COMPLETED, "application/octet-stream")
    assert storage.objects(job) == [job.storage_key]
