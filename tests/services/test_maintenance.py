"""Beat's maintenance: retention (files deleted, jobs expired), the reaper of jobs the
broker lost, and the S3 lifecycle rule. Storage is a temporary directory or the moto S3
endpoint; the broker send is the one fake (`dispatched`)."""

import io
import json
import threading
import time
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from botocore.exceptions import ClientError
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from downloads_project.celery import app
from infra.redis import state_client
from jobs import hotstate, services
from jobs.errors import JobSuperseded
from jobs.models import AttemptOutcome, DownloadJob, JobAttempt, Status
from jobs.parts import StoredPart
from jobs.services import attempt_end
from jobs.services.attempt_hooks import AttemptHooks
from jobs.transfer.links import SignedFileSystemStorage
from jobs.transfer.staging import StagedFile
from tests import factories
from tests.support.celery_tasks import tasks_modules_import
from tests.support.origin_server import FileScript
from tests.support.s3 import s3_downloads_storage

FILE_ID = 70000
STALE_S = 90


@pytest.fixture
def reaper_settings(settings: Any) -> Any:
    settings.JOB_HEARTBEAT_STALE_S = STALE_S
    settings.JOB_QUEUED_STALE_S = 600
    return settings


@pytest.fixture
def on_commit(django_capture_on_commit_callbacks: Any) -> Any:
    """Runs the on-commit work (dispatch, events) of the block as it ends."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


make_job = partial(factories.make_job, file_id=FILE_ID)


def ago(seconds: float) -> Any:
    return timezone.now() - timedelta(seconds=seconds)


def completed_job(owner: User, *, expires_at: Any, content: bytes = b"file") -> DownloadJob:
    job = make_job(owner, status=Status.COMPLETED, attempts=1, expires_at=expires_at)
    job.storage_key = f"downloads/{owner.pk}/{job.job_id}-1"
    job.save(update_fields=["storage_key"])
    storages["downloads"].save(job.storage_key, ContentFile(content))
    return job


def stored_files(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


# --- retention -----------------------------------------------------------------------------


def test_expire_deletes_the_files_of_due_jobs_and_marks_only_them_expired(user, local_storage):
    due = completed_job(user, expires_at=ago(1))
    not_due = completed_job(user, expires_at=ago(-3600))
    failed = make_job(user, status=Status.FAILED, expires_at=ago(1))
    queued = make_job(user, expires_at=ago(1))

    assert services.download_jobs_expire() == 1

    statuses = dict(DownloadJob.objects.values_list("pk", "status"))
    assert statuses == {
        due.pk: Status.EXPIRED,
        not_due.pk: Status.COMPLETED,
        failed.pk: Status.FAILED,
        queued.pk: Status.QUEUED,
    }
    assert stored_files(Path(local_storage.location)) == [not_due.storage_key]
    due.refresh_from_db()
    assert due.storage_key == f"downloads/{user.pk}/{due.job_id}-1"  # kept as a record


def test_expire_is_idempotent_and_limited_to_its_batch(user, local_storage):
    jobs = [completed_job(user, expires_at=ago(10 - index)) for index in range(3)]

    assert services.download_jobs_expire(batch=2) == 2
    assert services.download_jobs_expire(batch=2) == 1
    assert services.download_jobs_expire(batch=2) == 0

    assert set(DownloadJob.objects.values_list("status", flat=True)) == {Status.EXPIRED}
    assert stored_files(Path(local_storage.location)) == []
    assert len(jobs) == 3


def test_expire_takes_now_as_its_clock(user, local_storage):
    job = completed_job(user, expires_at=ago(-3600))

    assert services.download_jobs_expire(now=timezone.now() + timedelta(hours=2)) == 1

    job.refresh_from_db()
    assert job.status == Status.EXPIRED


def test_a_file_that_is_already_gone_still_expires(user, local_storage):
    job = completed_job(user, expires_at=ago(1))
    local_storage.delete(job.storage_key)

    assert services.download_jobs_expire() == 1


def test_expire_deletes_the_s3_object(user, settings, s3):
    settings.STORAGES = {**settings.STORAGES, "downloads": s3_downloads_storage(s3)}
    due = completed_job(user, expires_at=ago(1))
    not_due = completed_job(user, expires_at=ago(-3600))
    assert {due.storage_key, not_due.storage_key} <= set(s3.keys())

    assert services.download_jobs_expire() == 1

    keys = set(s3.keys())
    assert due.storage_key not in keys
    assert not_due.storage_key in keys
    due.refresh_from_db()
    assert due.status == Status.EXPIRED
    storages["downloads"].delete(not_due.storage_key)


def test_the_link_of_an_expired_job_answers_410(user, api_client, local_storage):
    job = completed_job(user, expires_at=ago(1))
    services.download_jobs_expire()

    response = api_client.get(f"/v1/download/{job.job_id}")

    assert response.status_code == 410
    assert response.json()["error"]["code"] == "DOWNLOAD_EXPIRED"


# --- the reaper: processing jobs whose worker went silent -----------------------------------


def stalled_job(owner: User, media: Path, **fields: Any) -> DownloadJob:
    """A processing job whose worker died mid-upload: a leftover part, an old heartbeat."""
    fields.setdefault("attempts", 1)
    job = make_job(owner, status=Status.PROCESSING, task_id="first-message", upload_id="cafe", **fields)
    job.storage_key = f"downloads/{owner.pk}/{job.job_id}-{job.attempts}"
    job.save(update_fields=["storage_key"])
    factories.beat(job, seconds_ago=STALE_S + 5)
    leftover = media / f"{job.storage_key}.cafe.part"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"half a file")
    job.refresh_from_db()
    return job


def test_reap_fences_a_stalled_job_out_and_dispatches_it_again(
    user, local_storage, reaper_settings, dispatched, on_commit
):
    media = Path(local_storage.location)
    job = stalled_job(user, media)
    JobAttempt.objects.create(job=job, number=1, started_at=job.started_at or timezone.now())
    old_attempt = AttemptHooks(DownloadJob.objects.get(pk=job.pk))  # the worker's copy

    with on_commit():
        assert services.download_jobs_reap() == 1

    job.refresh_from_db()
    assert (job.status, job.attempts, job.upload_id) == (Status.QUEUED, 1, "cafe")
    # Its history says the attempt was lost (and the late completion below changes nothing).
    assert list(JobAttempt.objects.filter(job=job).values_list("outcome", "error_code")) == [
        (AttemptOutcome.LOST, "PROCESSING_ERROR")
    ]
    assert dispatched == [{"args": (job.pk,), "queue": "downloads.normal", "countdown": 0}]
    # The upload stays for the next attempt to resume.
    assert stored_files(media) == [f"{job.storage_key}.cafe.part"]
    # The old attempt, had it only stalled, may no longer write or complete.
    reaper_settings.JOB_HEARTBEAT_INTERVAL_S = 0
    with pytest.raises(JobSuperseded):
        old_attempt.chunk_staged(bytes_done=10, bytes_total=100)
    staged = StagedFile(key=f"{job.storage_key}-late", file_name="f", content_type="x", size=4, sha256="0")
    services.download_job_complete(job=old_attempt.job, attempt=1, staged=staged)
    job.refresh_from_db()
    assert (job.status, job.sha256) == (Status.QUEUED, "")
    assert JobAttempt.objects.get(job=job).outcome == AttemptOutcome.LOST


def test_reap_fails_download_timeout_for_an_attempt_that_ran_past_the_time_limit(
    user, local_storage, reaper_settings, dispatched, on_commit
):
    """Celery's hard limit killed it while it still worked (heartbeats past the soft
    limit): another attempt would only run past the limit again."""
    media = Path(local_storage.location)
    soft_s = reaper_settings.JOB_SOFT_TIME_LIMIT_S
    job = stalled_job(user, media, started_at=ago(STALE_S + 5 + soft_s + 10))

    with on_commit():
        assert services.download_jobs_reap() == 1

    job.refresh_from_db()
    assert (job.status, job.error_code, job.error_retryable) == (Status.FAILED, "DOWNLOAD_TIMEOUT", False)
    assert job.dead_lettered_at is None
    assert dispatched == []
    assert stored_files(media) == []  # its upload was aborted


@pytest.mark.parametrize("first", ["reaper-message", "first-message"])
def test_after_a_reap_exactly_one_of_redelivery_and_new_message_starts_the_job(
    user, local_storage, reaper_settings, dispatched, on_commit, first
):
    """The broker may redeliver the dead worker's message as well as deliver the reaper's:
    whichever comes first starts attempt 2, the other finds it taken and does nothing."""
    job = stalled_job(user, Path(local_storage.location))
    with on_commit():
        services.download_jobs_reap()
    second = "first-message" if first == "reaper-message" else "reaper-message"

    winner = services.download_job_start(job_pk=job.pk, task_id=first)
    loser = services.download_job_start(job_pk=job.pk, task_id=second)

    assert winner is not None
    assert loser is None
    job.refresh_from_db()
    assert (job.status, job.attempts, job.task_id) == (Status.PROCESSING, 2, first)


def test_reap_fails_a_stalled_job_on_its_last_attempt(
    user, local_storage, reaper_settings, dispatched, on_commit
):
    job = stalled_job(user, Path(local_storage.location), attempts=3)

    with on_commit():
        assert services.download_jobs_reap() == 1

    job.refresh_from_db()
    assert (job.status, job.error_code, job.error_retryable) == (Status.FAILED, "PROCESSING_ERROR", True)
    assert job.dead_lettered_at is not None
    assert dispatched == []


def test_reap_leaves_a_job_with_a_fresh_heartbeat_alone(user, reaper_settings, dispatched, on_commit):
    job = make_job(user, status=Status.PROCESSING, attempts=1, task_id="live")
    factories.beat(job, seconds_ago=STALE_S - 10)

    with on_commit():
        assert services.download_jobs_reap() == 0

    job.refresh_from_db()
    assert (job.status, job.attempts) == (Status.PROCESSING, 1)
    assert dispatched == []


def test_a_started_job_has_a_fresh_heartbeat_and_its_beats_renew_it(
    user, reaper_settings, dispatched, on_commit
):
    job = make_job(user)
    with on_commit():
        started = services.download_job_start(job_pk=job.pk, task_id="t")
    assert started is not None
    state = hotstate.run_read(job.job_id)
    assert state is not None
    assert (state.attempt, state.live) == (1, True)
    assert time.time() - state.beat < 5
    factories.beat(started, seconds_ago=STALE_S + 5)
    reaper_settings.JOB_HEARTBEAT_INTERVAL_S = 0
    writes = factories.row_writes(job)

    AttemptHooks(started).chunk_staged(bytes_done=10, bytes_total=100)

    with on_commit():
        assert services.download_jobs_reap() == 0
    job.refresh_from_db()
    assert job.status == Status.PROCESSING
    assert factories.row_writes(job) == writes  # the beat went to Redis, not to the row


def test_a_processing_job_without_a_heartbeat_in_redis_gets_a_grace_period_then_is_reaped(
    user, local_storage, reaper_settings, dispatched, on_commit
):
    """Redis lost the attempt's state (restarted empty): the reaper cannot tell a live
    attempt from a dead one, so it gives it one threshold to beat again."""
    job = stalled_job(user, Path(local_storage.location))
    hotstate.run_forget(job.job_id)

    with on_commit():
        assert services.download_jobs_reap() == 0
    state = hotstate.run_read(job.job_id)
    assert state is not None
    assert (state.attempt, state.live) == (1, True)
    assert dispatched == []

    later = timezone.now() + timedelta(seconds=STALE_S + 1)
    with on_commit():
        assert services.download_jobs_reap(now=later) == 1
    job.refresh_from_db()
    assert (job.status, job.attempts) == (Status.QUEUED, 1)
    assert len(dispatched) == 1


def test_a_live_attempt_writes_its_lost_state_again_at_its_next_beat(user, reaper_settings, on_commit):
    job = make_job(user)
    with on_commit():
        started = services.download_job_start(job_pk=job.pk, task_id="t")
    assert started is not None
    hotstate.run_forget(job.job_id)  # Redis restarted empty
    reaper_settings.JOB_HEARTBEAT_INTERVAL_S = 0

    AttemptHooks(started).part_stored(parts=[StoredPart(number=1, size=5, etag='"a"')])

    state = hotstate.run_read(job.job_id)
    assert state is not None
    assert (state.attempt, state.live, state.parts) == (1, True, (StoredPart(number=1, size=5, etag='"a"'),))


def test_stored_parts_are_kept_in_redis_as_the_json_every_version_reads(user, on_commit):
    """The run key holds the parts as the service has always written them (`n`, `size`,
    and `etag`, `crc32` only where the storage gave them): an attempt reads the parts an
    older worker recorded, and an older worker those a newer one recorded."""
    job = make_job(user)
    with on_commit():
        started = services.download_job_start(job_pk=job.pk, task_id="t")
    assert started is not None
    run_key = f"job:{job.job_id}:run"
    recorded = [
        {"n": 1, "etag": '"a"', "size": 5242880, "crc32": "AAAAAA=="},
        {"n": 2, "etag": '"b"', "size": 17},
    ]
    state_client().hset(run_key, "parts", json.dumps(recorded))

    state = hotstate.run_read(job.job_id)

    assert state is not None
    assert state.parts == (
        StoredPart(number=1, size=5242880, etag='"a"', crc32="AAAAAA=="),
        StoredPart(number=2, size=17, etag='"b"'),
    )
    local = (StoredPart(number=1, size=1048576), StoredPart(number=2, size=3))
    assert hotstate.run_beat(job.job_id, attempt=1, parts=[*state.parts, *local])
    assert json.loads(state_client().hget(run_key, "parts")) == [
        *recorded,
        {"n": 1, "size": 1048576},
        {"n": 2, "size": 3},
    ]


def test_an_older_attempt_is_refused_once_a_newer_one_started(
    user, local_storage, reaper_settings, on_commit
):
    job = stalled_job(user, Path(local_storage.location))
    old_attempt = AttemptHooks(DownloadJob.objects.get(pk=job.pk))
    with on_commit():
        assert services.download_job_start(job_pk=job.pk, task_id="first-message") is not None

    with pytest.raises(JobSuperseded):
        old_attempt.part_stored(parts=[StoredPart(number=1, size=5, etag='"late"')])
    reaper_settings.JOB_HEARTBEAT_INTERVAL_S = 0
    with pytest.raises(JobSuperseded):
        old_attempt.chunk_staged(bytes_done=10, bytes_total=100)
    state = hotstate.run_read(job.job_id)
    assert state is not None
    assert (state.attempt, state.live, state.parts) == (2, True, ())


def test_while_redis_is_down_no_processing_job_is_reaped_and_queued_ones_still_are(
    user, local_storage, reaper_settings, dispatched, on_commit, monkeypatch
):
    stalled = stalled_job(user, Path(local_storage.location))
    lost = make_job(user)
    DownloadJob.objects.filter(pk=lost.pk).update(updated_at=ago(601))

    def redis_down(job_ids: list[str]) -> None:
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(hotstate, "run_read_many", redis_down)
    with on_commit():
        assert services.download_jobs_reap() == 1

    stalled.refresh_from_db()
    assert stalled.status == Status.PROCESSING
    assert dispatched == [{"args": (lost.pk,), "queue": "downloads.normal", "countdown": 0}]


# --- the reaper: queued jobs no worker took ------------------------------------------------


def test_reap_dispatches_a_job_queued_too_long_once(user, reaper_settings, dispatched, on_commit):
    job = make_job(user, priority="high")
    DownloadJob.objects.filter(pk=job.pk).update(updated_at=ago(601))

    with on_commit():
        assert services.download_jobs_reap() == 1
    with on_commit():
        assert services.download_jobs_reap() == 0  # sent again only after another 600 s

    assert dispatched == [{"args": (job.pk,), "queue": "downloads.high", "countdown": 0}]


@pytest.mark.parametrize(
    ("updated_s_ago", "next_retry_s_ago"),
    [(10, None), (601, -30), (601, 10)],
    ids=["fresh", "retry-not-due", "retry-recently-due"],
)
def test_reap_leaves_a_queued_job_alone_until_it_is_overdue(
    user, reaper_settings, dispatched, on_commit, updated_s_ago, next_retry_s_ago
):
    job = make_job(user)
    next_retry_at = ago(next_retry_s_ago) if next_retry_s_ago is not None else None
    DownloadJob.objects.filter(pk=job.pk).update(updated_at=ago(updated_s_ago), next_retry_at=next_retry_at)

    with on_commit():
        assert services.download_jobs_reap() == 0

    assert dispatched == []


# --- one start per job ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_starts_of_a_job_start_it_once(user: User) -> None:
    job = make_job(user)
    barrier = threading.Barrier(2)
    results: dict[str, DownloadJob | None] = {}

    def start(task_id: str) -> None:
        try:
            barrier.wait(timeout=5)
            results[task_id] = services.download_job_start(job_pk=job.pk, task_id=task_id)
        finally:
            connection.close()

    threads = [threading.Thread(target=start, args=(task_id,)) for task_id in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    winners = [task_id for task_id, started in results.items() if started is not None]
    assert len(results) == 2
    assert len(winners) == 1
    job.refresh_from_db()
    assert (job.status, job.attempts, job.task_id) == (Status.PROCESSING, 1, winners[0])


def test_a_redelivery_of_the_same_message_restarts_its_attempt(user, local_storage):
    job = stalled_job(user, Path(local_storage.location))

    restarted = services.download_job_start(job_pk=job.pk, task_id="first-message")

    assert restarted is not None
    assert (restarted.attempts, restarted.task_id) == (2, "first-message")


def test_another_message_leaves_a_processing_job_and_its_upload_alone(user, local_storage):
    media = Path(local_storage.location)
    job = stalled_job(user, media)

    assert services.download_job_start(job_pk=job.pk, task_id="duplicate") is None

    job.refresh_from_db()
    assert (job.status, job.attempts, job.upload_id) == (Status.PROCESSING, 1, "cafe")
    assert stored_files(media) == [f"{job.storage_key}.cafe.part"]


# --- beat ----------------------------------------------------------------------------------


def test_beat_sends_registered_tasks_to_a_queue_every_worker_serves(settings):
    tasks_modules_import()  # as a worker's autodiscovery does at start
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        assert entry["task"] in app.tasks
        assert entry["options"]["queue"] == "downloads.high"


# --- the S3 lifecycle rule -----------------------------------------------------------------


@pytest.fixture
def s3_bucket(settings: Any, s3: Any) -> Any:
    """The moto bucket as downloads storage, with no lifecycle before or after the test."""
    settings.STORAGES = {**settings.STORAGES, "downloads": s3_downloads_storage(s3)}
    client = s3.client()
    client.delete_bucket_lifecycle(Bucket=s3.bucket)
    yield client
    client.delete_bucket_lifecycle(Bucket=s3.bucket)


def lifecycle_rules(client: Any, bucket: str) -> list[dict[str, Any]]:
    try:
        return client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "NoSuchLifecycleConfiguration":
            return []
        raise


RULE = {
    "ID": "downloads-retention",
    "Filter": {"Prefix": "downloads/"},
    "Status": "Enabled",
    "Expiration": {"Days": 2},
    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
}


def test_lifecycle_install_puts_the_retention_rule_rounded_up_to_days(s3, s3_bucket, settings):
    settings.JOB_RETENTION_S = 24 * 3600 + 1
    other = {"ID": "logs", "Filter": {"Prefix": "logs/"}, "Status": "Enabled", "Expiration": {"Days": 30}}
    s3_bucket.put_bucket_lifecycle_configuration(Bucket=s3.bucket, LifecycleConfiguration={"Rules": [other]})
    out = io.StringIO()

    call_command("s3_lifecycle_install", stdout=out)
    call_command("s3_lifecycle_install", stdout=out)  # again: replaces its rule, adds none

    rules = {rule["ID"]: rule for rule in lifecycle_rules(s3_bucket, s3.bucket)}
    assert set(rules) == {"logs", "downloads-retention"}
    installed = rules["downloads-retention"]
    assert installed["Filter"] == RULE["Filter"]
    assert installed["Expiration"] == {"Days": 2}
    assert installed["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert "expires downloads after 2 day(s)" in out.getvalue()


def test_lifecycle_install_dry_run_prints_the_json_and_changes_nothing(s3, s3_bucket):
    out = io.StringIO()

    call_command("s3_lifecycle_install", "--dry-run", stdout=out)

    assert json.loads(out.getvalue()) == {"Rules": [{**RULE, "Expiration": {"Days": 1}}]}
    assert lifecycle_rules(s3_bucket, s3.bucket) == []


def test_lifecycle_install_refuses_a_storage_that_is_not_s3(local_storage):
    with pytest.raises(CommandError, match="SignedFileSystemStorage, not S3"):
        call_command("s3_lifecycle_install")
    assert isinstance(local_storage, SignedFileSystemStorage)


def test_a_redelivered_message_reads_the_row_once_and_looks_for_the_stored_file_once(
    user, local_storage, origin, on_commit, monkeypatch
):
    """The dead worker's message comes again for a job whose last attempt recorded a file
    it committed, which storage does not hold as recorded: the attempt restarts and stages
    the file. The message reads the job's row once (the start is a compare-and-swap on
    that row) and asks storage for the recorded file once, not again when the restarted
    attempt begins."""
    origin.add(FILE_ID, FileScript(size=1000))
    job = stalled_job(user, Path(local_storage.location), file_size_bytes=5000, sha256="")
    looked_for: list[str] = []
    real_size = attempt_end.stored_file_size

    def size_of(key: str) -> int | None:  # counts the calls, answers as storage does
        looked_for.append(key)
        return real_size(key)

    monkeypatch.setattr(attempt_end, "stored_file_size", size_of)

    with CaptureQueriesContext(connection) as queries, on_commit():
        services.download_job_run(job_pk=job.pk, task_id="first-message")

    job.refresh_from_db()
    assert (job.status, job.attempts, job.file_size_bytes) == (Status.COMPLETED, 2, 1000)
    assert looked_for == [job.storage_key]
    row_reads = [
        query["sql"]
        for query in queries.captured_queries
        if query["sql"].startswith("SELECT") and 'FROM "jobs_downloadjob"' in query["sql"]
    ]
    assert len(row_reads) == 1, row_reads
