"""The services called directly: the transition table, and attempts of a job run in
process against the real local HTTP origin, with storage in a temporary directory (or
the moto S3 endpoint). The broker send is the one fake (`dispatched`)."""

import asyncio
import threading
import time
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
from channels.layers import get_channel_layer
from django.core.files.storage import storages
from django.db import connection, transaction
from django.utils import timezone

from infra.redis import state_client
from jobs import hotstate, selectors, services
from jobs.errors import JobSuperseded
from jobs.events import job_group_name
from jobs.models import TRANSITIONS, DownloadJob, Status
from jobs.services import writes
from jobs.services.attempt_hooks import AttemptHooks
from jobs.transfer.origins import get_origin
from jobs.transfer.staging import NoHooks, StagedFile, stage_file
from tests import factories
from tests.support.clocks import Clock
from tests.support.origin_server import FileScript
from tests.support.s3 import s3_downloads_storage

FILE_ID = 70000


def stored_files(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


make_job = partial(factories.make_job, file_id=FILE_ID)


def stage(job: DownloadJob) -> StagedFile:
    return stage_file(origin=get_origin(), file_id=job.file_id, key=job.storage_key, hooks=NoHooks())


# --- the transition table ------------------------------------------------------------------

ILLEGAL = [(a, b) for a in Status.values for b in Status.values if b not in TRANSITIONS[a]]
LEGAL = [(a, b) for a in Status.values for b in Status.values if b in TRANSITIONS[a]]


def test_the_transition_table():
    assert {a: sorted(b) for a, b in TRANSITIONS.items()} == {
        "queued": ["cancelled", "failed", "processing", "queued"],
        "processing": ["cancelled", "completed", "failed", "processing", "queued"],
        "completed": ["expired"],
        "failed": ["queued"],
        "cancelled": ["queued"],
        "expired": [],
    }


@pytest.mark.parametrize(("from_status", "to_status"), ILLEGAL)
def test_every_illegal_transition_is_refused(user, from_status, to_status):
    job = make_job(user, status=from_status)
    updated_at = job.updated_at

    with pytest.raises(services.InvalidTransition):
        writes.transition(job, to_status, progress=50)

    job.refresh_from_db()
    assert (job.status, job.progress, job.updated_at) == (from_status, 0, updated_at)


@pytest.mark.parametrize(("from_status", "to_status"), LEGAL)
def test_every_legal_transition_is_written(user, from_status, to_status):
    job = make_job(user, status=from_status)

    writes.transition(job, to_status, progress=50)

    assert job.status == to_status
    job.refresh_from_db()
    assert (job.status, job.progress) == (to_status, 50)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("in_transaction", [True, False], ids=["in-a-transaction", "autocommit"])
def test_the_card_a_write_leaves_is_the_row_it_wrote(user, in_transaction):
    """The card comes from the write's own RETURNING, not from a read after it: it is the
    committed row, column for column, version included."""
    job = make_job(user, status=Status.PROCESSING, attempts=1)
    rows = DownloadJob.objects.filter(pk=job.pk, status=Status.PROCESSING, attempts=1)

    if in_transaction:
        with transaction.atomic():
            assert writes.write(rows, job, bytes_done=123, bytes_total=456, file_name="a.bin")
            assert hotstate.card_read(job.job_id)[0] is None  # until it commits, polls read the row
    else:
        assert writes.write(rows, job, bytes_done=123, bytes_total=456, file_name="a.bin")

    card = hotstate.card_read(job.job_id)[0]
    assert card is not None
    assert card == selectors.download_job_card_from_row(pk=job.pk)
    assert (card.version, card.bytes_done, card.bytes_total, card.file_name) == (
        job.version + 1,
        123,
        456,
        "a.bin",
    )


def test_a_write_that_matches_no_row_writes_no_card(user):
    job = make_job(user, status=Status.QUEUED)
    rows = DownloadJob.objects.filter(pk=job.pk, status=Status.PROCESSING)

    assert not writes.write(rows, job, bytes_done=1)

    assert hotstate.card_read(job.job_id)[0] is None


def test_a_transition_from_a_status_the_row_no_longer_has_is_a_conflict(user):
    stale = make_job(user)
    DownloadJob.objects.filter(pk=stale.pk).update(status=Status.PROCESSING, attempts=1)

    with pytest.raises(services.JobStateConflict):
        services.download_job_cancel(job=stale)

    stale.refresh_from_db()
    assert (stale.status, stale.cancelled_at) == (Status.PROCESSING, None)


def test_a_transition_of_an_attempt_the_row_no_longer_runs_is_a_conflict(user):
    job = make_job(user, status=Status.PROCESSING, attempts=2)

    with pytest.raises(services.JobStateConflict):
        writes.transition(job, Status.COMPLETED, attempt=1, progress=100)

    job.refresh_from_db()
    assert (job.status, job.progress) == (Status.PROCESSING, 0)


def test_cancel_of_a_finished_job_is_an_invalid_transition(user):
    job = make_job(user, status=Status.COMPLETED)

    with pytest.raises(services.InvalidTransition):
        services.download_job_cancel(job=job)


def test_create_refuses_beyond_the_active_limit(user, settings, dispatched):
    settings.JOB_MAX_ACTIVE_PER_USER = 2
    services.download_job_create(owner=user, file_id=1)
    services.download_job_create(owner=user, file_id=2)

    with pytest.raises(services.ActiveLimitExceeded, match="Maximum 2 concurrent downloads per user"):
        services.download_job_create(owner=user, file_id=3)

    assert DownloadJob.objects.count() == 2


def test_create_with_the_same_idempotency_key_returns_the_first_job(user, dispatched):
    first, first_created = services.download_job_create(owner=user, file_id=1, idempotency_key="k")
    second, second_created = services.download_job_create(owner=user, file_id=2, idempotency_key="k")

    assert (first_created, second_created) == (True, False)
    assert second.pk == first.pk
    assert second.file_id == 1


# --- retry delays --------------------------------------------------------------------------


def test_retry_delay_doubles_from_the_backoff(settings):
    settings.JOB_RETRY_JITTER = 0

    assert [services.retry_delay_s(attempt) for attempt in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]


def test_retry_delay_is_capped(settings):
    settings.JOB_RETRY_JITTER = 0
    settings.JOB_RETRY_BACKOFF_MAX_S = 60

    assert [services.retry_delay_s(attempt) for attempt in (4, 5, 10)] == [40.0, 60.0, 60.0]


def test_retry_delay_jitter_stays_within_its_band(settings):
    delays = [services.retry_delay_s(2) for _ in range(200)]

    assert all(8.0 <= delay <= 12.0 for delay in delays)
    assert len(set(delays)) > 1


# --- one attempt against the real origin ---------------------------------------------------

# Attempts that commit as a worker's do, for tests where another thread must see the rows
# or on-commit work (events) must run at the real commit.
committed = pytest.mark.django_db(transaction=True)


class Watcher:
    """Listens on the job's channel group as a WebSocket consumer would, on an event loop of
    its own: the pub/sub channel layer's subscriptions live on the loop that made them."""

    def __init__(self, job_id: str) -> None:
        self.layer = get_channel_layer()
        self.loop = asyncio.new_event_loop()

        async def join() -> str:
            channel: str = await self.layer.new_channel()
            await self.layer.group_add(job_group_name(job_id), channel)
            return channel

        self.channel = self.loop.run_until_complete(join())

    def events(self) -> list[dict[str, Any]]:
        async def drain() -> list[dict[str, Any]]:
            received: list[dict[str, Any]] = []
            while True:
                try:
                    message = await asyncio.wait_for(self.layer.receive(self.channel), timeout=0.5)
                except TimeoutError:
                    return received
                received.append(message["event"])

        try:
            return self.loop.run_until_complete(drain())
        finally:
            self.loop.close()


@committed
@pytest.mark.parametrize("backend", ["local", "s3"])
def test_run_completes_with_the_origin_file(request, user, origin, worker_settings, backend):
    worker_settings.PROGRESS_PUSH_INTERVAL_S = 0
    worker_settings.STAGING_CHUNK_BYTES = 256 * 1024
    worker_settings.STAGING_PART_BYTES = 5 * 1024 * 1024  # two S3 parts
    if backend == "local":
        root = request.getfixturevalue("media")
    else:
        s3 = request.getfixturevalue("s3")
        worker_settings.STORAGES = {**worker_settings.STORAGES, "downloads": s3_downloads_storage(s3)}
    script = origin.add(FILE_ID, FileScript(size=6 * 1024 * 1024 + 7, file_name="report.pdf"))
    job = make_job(user)
    watcher = Watcher(job.job_id)

    services.download_job_run(job_pk=job.pk)

    job.refresh_from_db()
    assert job.status == Status.COMPLETED
    assert (job.attempts, job.progress, job.bytes_done, job.bytes_total) == (1, 100, script.size, script.size)
    assert (job.file_name, job.file_size_bytes, job.content_type) == (
        "report.pdf",
        script.size,
        "application/pdf",
    )
    assert job.sha256 == script.sha256(FILE_ID)
    assert job.storage_key == f"downloads/{user.pk}/{job.job_id}-1"
    assert (job.upload_id, job.error_code, job.error_retryable) == ("", "", None)
    assert job.expires_at == job.completed_at + timedelta(hours=24)
    assert job.duration_seconds is not None
    with storages["downloads"].open(job.storage_key, "rb") as stored:
        assert stored.read() == script.content(FILE_ID)
    if backend == "local":
        assert stored_files(root) == [job.storage_key]
    else:
        assert [key for key in list(s3.keys()) if job.job_id in key] == [job.storage_key]
        assert [u for u in s3.open_multipart_uploads() if job.job_id in u["Key"]] == []
    assert hotstate.progress_read_many([job.job_id]) == {}
    events = watcher.events()
    assert events[0]["type"] == "status_update"
    assert (events[0]["status"], events[0]["progress"]) == ("processing", 0)
    assert events[-1]["type"] == "completed"
    assert (events[-1]["status"], events[-1]["progress"]) == ("completed", 100)
    assert events[-1]["download_url"] == f"/v1/download/{job.job_id}"
    progress = [event["progress"] for event in events if event["type"] == "progress"]
    assert len(progress) >= 10
    assert progress == sorted(progress)
    assert max(progress) == 99


def test_run_names_the_file_after_its_type_without_a_content_disposition(user, origin, media, run_attempt):
    origin.add(FILE_ID, FileScript(size=1000, content_type="text/csv"))
    job = make_job(user)

    run_attempt(job.pk)

    job.refresh_from_db()
    assert (job.status, job.file_name, job.content_type) == (Status.COMPLETED, "file_70000.csv", "text/csv")


def test_run_of_a_missing_file_fails_at_once(user, origin, media, dispatched, run_attempt):
    job = make_job(user)

    run_attempt(job.pk)

    job.refresh_from_db()
    assert job.status == Status.FAILED
    assert (job.error_code, job.error_message, job.error_retryable) == (
        "FILE_NOT_FOUND",
        "Origin answered HTTP 404",
        False,
    )
    assert (job.attempts, job.dead_lettered_at, job.next_retry_at) == (1, None, None)
    assert job.failed_at is not None
    assert dispatched == []
    assert origin.requests[FILE_ID] == 1
    assert stored_files(media) == []


def test_run_of_a_file_too_large_fails_at_once(user, origin, media, worker_settings, dispatched, run_attempt):
    worker_settings.JOB_MAX_FILE_BYTES = 1000
    origin.add(FILE_ID, FileScript(size=1001))
    job = make_job(user)

    run_attempt(job.pk)

    job.refresh_from_db()
    assert (job.status, job.error_code, job.error_retryable) == (Status.FAILED, "FILE_TOO_LARGE", False)
    assert dispatched == []
    assert stored_files(media) == []


def test_run_retries_a_server_error_after_a_backoff_then_completes(
    user, origin, media, dispatched, run_attempt
):
    script = origin.add(FILE_ID, FileScript(size=200_000, faults=["500"]))
    job = make_job(user, priority="low")

    before = timezone.now()
    run_attempt(job.pk)
    after = timezone.now()

    job.refresh_from_db()
    assert job.status == Status.QUEUED
    assert (job.attempts, job.error_code, job.error_message, job.error_retryable) == (
        1,
        "TEMPORARY_UNAVAILABLE",
        "Origin answered HTTP 500",
        True,
    )
    assert before + timedelta(seconds=5) <= job.next_retry_at <= after + timedelta(seconds=5)
    assert (job.failed_at, job.dead_lettered_at) == (None, None)
    assert dispatched == [{"args": (job.pk,), "queue": "downloads.low", "countdown": 5.0}]

    run_attempt(job.pk)

    job.refresh_from_db()
    assert (job.status, job.attempts, job.sha256) == (Status.COMPLETED, 2, script.sha256(FILE_ID))
    assert (job.error_code, job.error_message, job.error_retryable, job.next_retry_at) == ("", "", None, None)
    assert stored_files(media) == [f"downloads/{user.pk}/{job.job_id}-2"]
    assert len(dispatched) == 1


@pytest.mark.parametrize(("fault", "code"), [("500", "TEMPORARY_UNAVAILABLE"), ("drop", "NETWORK_ERROR")])
def test_run_fails_dead_lettered_when_the_last_attempt_fails(
    user, origin, media, dispatched, fault, code, run_attempt
):
    origin.add(FILE_ID, FileScript(size=200_000, faults=[fault]))
    job = make_job(user, attempts=2, error_code="TIMEOUT", error_retryable=True, next_retry_at=timezone.now())

    run_attempt(job.pk)

    job.refresh_from_db()
    assert (job.status, job.attempts, job.error_code, job.error_retryable) == (Status.FAILED, 3, code, True)
    assert job.dead_lettered_at is not None
    assert job.dead_lettered_at == job.failed_at
    assert job.next_retry_at is None
    assert dispatched == []
    assert stored_files(media) == []


def streaming(job: DownloadJob) -> bool:
    """The job's attempt has sent its first progress: bytes flow."""
    hot = hotstate.progress_read_many([job.job_id]).get(job.job_id)
    return hot is not None and hot.bytes_done > 0


@committed
def test_cancel_mid_stream_stops_the_attempt_and_leaves_nothing(user, origin, media, worker_settings):
    worker_settings.JOB_HEARTBEAT_INTERVAL_S = 0
    size = 1024 * 1024
    origin.add(FILE_ID, FileScript(size=size, rate_bps=1024 * 1024))  # a second to cancel in
    job = make_job(user)

    def cancel_once_streaming() -> None:
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                row = DownloadJob.objects.get(pk=job.pk)
                if row.status == Status.PROCESSING and streaming(row):
                    services.download_job_cancel(job=row)
                    return
                time.sleep(0.01)
        finally:
            connection.close()

    canceller = threading.Thread(target=cancel_once_streaming)
    canceller.start()
    services.download_job_run(job_pk=job.pk)
    canceller.join()

    job.refresh_from_db()
    assert job.status == Status.CANCELLED
    assert job.cancelled_at is not None
    assert 0 < origin.bytes_sent[FILE_ID] < size
    assert hotstate.cancel_flag_is_set(job.job_id)
    assert hotstate.progress_read_many([job.job_id]) == {}
    assert stored_files(media) == []


def test_cancel_flag_alone_stops_the_stream(user, origin, media, run_attempt):
    """The worker sees the flag between two chunks, without reading the row."""
    origin.add(FILE_ID, FileScript(size=1024 * 1024))
    job = make_job(user)
    hotstate.cancel_flag_set(job.job_id)

    run_attempt(job.pk)

    assert origin.requests[FILE_ID] == 1
    assert stored_files(media) == []


@committed
def test_a_superseded_attempt_stops_and_the_newer_one_completes(user, origin, media, worker_settings):
    worker_settings.JOB_HEARTBEAT_INTERVAL_S = 0
    script = origin.add(FILE_ID, FileScript(size=1024 * 1024, rate_bps=1024 * 1024))
    job = make_job(user)

    def first_attempt() -> None:
        try:
            services.download_job_run(job_pk=job.pk)
        finally:
            connection.close()

    first = threading.Thread(target=first_attempt)
    first.start()
    deadline = time.monotonic() + 10
    while not streaming(job):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # The message is redelivered while the first worker still streams.
    services.download_job_run(job_pk=job.pk)
    first.join()

    job.refresh_from_db()
    assert (job.status, job.attempts, job.sha256) == (Status.COMPLETED, 2, script.sha256(FILE_ID))
    assert stored_files(media) == [f"downloads/{user.pk}/{job.job_id}-2"]
    assert origin.requests[FILE_ID] == 2
    assert origin.bytes_sent[FILE_ID] < 2 * script.size  # the first attempt stopped early


def test_a_stale_attempt_cannot_write_progress(
    user, origin, media, worker_settings, django_capture_on_commit_callbacks
):
    worker_settings.JOB_HEARTBEAT_INTERVAL_S = 0
    job = make_job(user)
    with django_capture_on_commit_callbacks(execute=True):
        stale = services.download_job_start(job_pk=job.pk)
    with django_capture_on_commit_callbacks(execute=True):
        services.download_job_start(job_pk=job.pk)  # redelivered: attempt 2

    with pytest.raises(JobSuperseded):
        AttemptHooks(stale).chunk_staged(bytes_done=10, bytes_total=100)

    job.refresh_from_db()
    assert (job.attempts, job.bytes_done) == (2, 0)


def test_a_stale_attempt_cannot_complete_and_removes_only_its_own_file(user, origin, media):
    script = origin.add(FILE_ID, FileScript(size=100_000))
    job = make_job(user)
    stale = services.download_job_start(job_pk=job.pk)
    stale_file = stage(stale)
    current = services.download_job_start(job_pk=job.pk)
    current_file = stage(current)
    services.download_job_complete(job=current, attempt=2, staged=current_file)

    services.download_job_complete(job=stale, attempt=1, staged=stale_file)

    job.refresh_from_db()
    assert (job.status, job.attempts, job.storage_key) == (Status.COMPLETED, 2, current_file.key)
    assert stored_files(media) == [current_file.key]
    with storages["downloads"].open(job.storage_key, "rb") as stored:
        assert stored.read() == script.content(FILE_ID)


def test_an_attempt_that_finishes_after_a_cancel_removes_its_file(user, origin, media):
    origin.add(FILE_ID, FileScript(size=100_000))
    job = make_job(user)
    started = services.download_job_start(job_pk=job.pk)
    staged = stage(started)
    services.download_job_cancel(job=DownloadJob.objects.get(pk=job.pk))

    services.download_job_complete(job=started, attempt=1, staged=staged)

    job.refresh_from_db()
    assert (job.status, job.sha256) == (Status.CANCELLED, "")
    assert stored_files(media) == []


def test_a_redelivered_processing_job_restarts_as_a_new_attempt(user, origin, media, run_attempt):
    script = origin.add(FILE_ID, FileScript(size=100_000))
    old_key = f"downloads/{user.pk}/leftover-1"
    leftover = media / f"{old_key}.cafe.part"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a file")
    job = make_job(user, status=Status.PROCESSING, attempts=1, storage_key=old_key, upload_id="cafe")

    run_attempt(job.pk)

    job.refresh_from_db()
    assert (job.status, job.attempts, job.sha256) == (Status.COMPLETED, 2, script.sha256(FILE_ID))
    assert stored_files(media) == [job.storage_key]


def test_a_redelivered_job_on_its_last_attempt_fails_dead_lettered(
    user, origin, media, dispatched, run_attempt
):
    origin.add(FILE_ID, FileScript(size=100_000))
    old_key = f"downloads/{user.pk}/leftover-3"
    leftover = media / f"{old_key}.cafe.part"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a file")
    job = make_job(user, status=Status.PROCESSING, attempts=3, storage_key=old_key, upload_id="cafe")

    run_attempt(job.pk)

    job.refresh_from_db()
    assert job.status == Status.FAILED
    assert (job.attempts, job.error_code, job.error_message, job.error_retryable) == (
        3,
        "PROCESSING_ERROR",
        "The worker stopped during the last attempt",
        True,
    )
    assert job.dead_lettered_at is not None
    assert job.upload_id == ""
    assert origin.requests[FILE_ID] == 0
    assert dispatched == []
    assert stored_files(media) == []


@pytest.mark.parametrize("status", [Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.EXPIRED])
def test_run_of_a_finished_job_does_nothing(user, origin, media, status, run_attempt):
    origin.add(FILE_ID, FileScript(size=1000))
    job = make_job(user, status=status, attempts=1)
    updated_at = job.updated_at

    run_attempt(job.pk)

    job.refresh_from_db()
    assert (job.status, job.attempts, job.updated_at) == (status, 1, updated_at)
    assert origin.requests[FILE_ID] == 0


def test_run_of_a_deleted_job_does_nothing(origin, media, run_attempt):
    run_attempt(123456)

    assert origin.requests == {}


# --- operator retry --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [Status.QUEUED, Status.PROCESSING, Status.COMPLETED, Status.EXPIRED])
def test_retry_of_a_job_neither_failed_nor_cancelled_is_refused(user, status, dispatched):
    job = make_job(user, status=status, attempts=1)

    with pytest.raises(services.InvalidTransition):
        services.download_job_retry(job=job)

    job.refresh_from_db()
    assert (job.status, job.max_attempts, dispatched) == (status, 3, [])


def test_requeue_dead_lettered_refuses_a_failed_job_that_was_not_dead_lettered(user, dispatched):
    job = make_job(user, status=Status.FAILED, attempts=1, failed_at=timezone.now())

    with pytest.raises(services.NotDeadLettered, match=f"{job.job_id} is not dead-lettered"):
        services.download_job_retry(job=job, dead_lettered_only=True)

    job.refresh_from_db()
    assert job.status == Status.FAILED


def test_a_retried_cancelled_job_runs_a_new_attempt_to_completion(
    user, origin, media, dispatched, run_attempt, django_capture_on_commit_callbacks
):
    origin.add(FILE_ID, FileScript(size=1000))
    job = make_job(user, status=Status.PROCESSING, attempts=1)
    stale = AttemptHooks(job)
    services.download_job_cancel(job=job)
    hotstate.cancel_flag_set(job.job_id)

    with django_capture_on_commit_callbacks(execute=True):
        services.download_job_retry(job=job)
    run_attempt(job.pk)

    job.refresh_from_db()
    assert (job.status, job.attempts, job.max_attempts, job.cancelled_at) == (Status.COMPLETED, 2, 4, None)
    assert stored_files(media) == [f"downloads/{user.pk}/{job.job_id}-2"]
    assert [call["args"] for call in dispatched] == [(job.pk,)]
    with pytest.raises(JobSuperseded):  # the cancelled attempt's worker stays fenced off
        stale.upload_opened(upload_id="late", parts=[], bytes_total=1000, resumed_bytes=0, validator="")


# --- the origin's circuit breaker -----------------------------------------------------------


@pytest.fixture
def breaker_settings(worker_settings: Any) -> Any:
    worker_settings.ORIGIN_BREAKER_MIN_CALLS = 3
    worker_settings.ORIGIN_BREAKER_FAILURE_RATIO = 0.5
    worker_settings.ORIGIN_BREAKER_OPEN_S = 1
    worker_settings.JOB_MAX_ATTEMPTS = 5
    return worker_settings


def test_a_failing_origin_opens_the_breaker_and_queued_jobs_wait_without_using_attempts(
    user, origin, media, breaker_settings, dispatched, run_attempt
):
    from jobs.transfer.breaker import OriginBreaker, origin_breaker_name

    # Starts at the real time: Redis expires the breaker's keys by its own.
    clock = Clock(time.time())
    breaker = OriginBreaker(origin_breaker_name(), clock=clock)
    for offset in range(3):
        origin.add(FILE_ID + offset, FileScript(size=1000, faults=["503"]))
        run_attempt(make_job(user, file_id=FILE_ID + offset).pk, breaker=breaker)
    assert breaker.state().state == "open"
    origin.add(FILE_ID + 9, FileScript(size=1000))
    waiting = make_job(user, file_id=FILE_ID + 9)
    dispatched.clear()

    run_attempt(waiting.pk, breaker=breaker)

    waiting.refresh_from_db()
    assert origin.requests[FILE_ID + 9] == 0  # the origin was left alone
    assert (waiting.status, waiting.attempts, waiting.error_code) == (
        Status.QUEUED,
        0,
        "TEMPORARY_UNAVAILABLE",
    )
    assert waiting.next_retry_at is not None
    assert len(dispatched) == 1
    assert 1 <= dispatched[0]["countdown"] <= 1.3

    clock.advance(1.1)  # half-open: this job is the probe; the origin has recovered
    run_attempt(waiting.pk, breaker=breaker)

    waiting.refresh_from_db()
    assert (waiting.status, waiting.attempts) == (Status.COMPLETED, 1)
    assert breaker.state().state == "closed"


def test_a_missing_file_is_not_held_against_the_origin(user, origin, media, breaker_settings, run_attempt):
    from jobs.transfer.breaker import OriginBreaker, origin_breaker_name

    for offset in range(4):
        run_attempt(make_job(user, file_id=FILE_ID + offset).pk)  # 404: the origin answered

    state = OriginBreaker(origin_breaker_name()).state()
    assert (state.state, state.failures, state.successes) == ("closed", 0, 4)


# --- the origin's limits --------------------------------------------------------------------


@pytest.fixture
def origin_limits(worker_settings: Any) -> Any:
    """The configured origin's limits: two jobs at once, no start rate, no lease held."""
    from jobs.transfer.breaker import origin_breaker_name
    from jobs.transfer.origin_limits import OriginLimits

    worker_settings.ORIGIN_MAX_IN_FLIGHT = 2
    worker_settings.ORIGIN_START_RATE = ""
    limits = OriginLimits(origin_breaker_name())
    state_client().delete(limits.key)
    yield limits
    state_client().delete(limits.key)


def leases(limits: Any) -> list[str]:
    return sorted(raw.decode() for raw in cast(list[bytes], state_client().zrange(limits.key, 0, -1)))


class LeaseWatch:
    """Reads the job's lease (its expiry, or None) every 10 ms in a thread of its own while
    the block runs: what another worker would see of it."""

    def __init__(self, limits: Any, job_id: str) -> None:
        self.limits, self.job_id = limits, job_id
        self.expiries: list[float | None] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch)

    def _watch(self) -> None:
        while not self.done.wait(0.01):
            self.expiries.append(state_client().zscore(self.limits.key, self.job_id))

    def __enter__(self) -> "LeaseWatch":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


def test_a_job_past_the_in_flight_limit_waits_queued_without_using_an_attempt_and_says_why(
    user, api_client, origin, media, origin_limits, dispatched, run_attempt, caplog
):
    origin.add(FILE_ID, FileScript(size=1000))
    for elsewhere in ("job_elsewhere_1", "job_elsewhere_2"):  # attempts of other workers
        assert origin_limits.take(job_id=elsewhere) is None
    job = make_job(user)

    with caplog.at_level("INFO", logger="jobs.services.attempt"):
        run_attempt(job.pk)

    job.refresh_from_db()
    assert origin.requests[FILE_ID] == 0  # the origin was left alone
    assert (job.status, job.attempts, job.error_code, job.error_message, job.error_retryable) == (
        Status.QUEUED,
        0,
        "ORIGIN_BUSY",
        "Waiting: the origin already serves 2 jobs at once",
        True,
    )
    assert [call["args"] for call in dispatched] == [(job.pk,)]
    countdown_s = dispatched[0]["countdown"]
    assert 1 <= countdown_s <= 3
    assert job.next_retry_at == job.updated_at + timedelta(seconds=countdown_s)
    assert f"{job.job_id} waits {countdown_s:.0f} s for the origin's in-flight limit (2)" in caplog.messages
    assert leases(origin_limits) == ["job_elsewhere_1", "job_elsewhere_2"]  # it took none
    status = api_client.get(f"/v1/download/status/{job.job_id}").json()["data"]
    assert (status["status"], status["attempts"], status["error"]) == (
        "queued",
        0,
        {
            "code": "ORIGIN_BUSY",
            "message": "Waiting: the origin already serves 2 jobs at once",
            "retryable": True,
        },
    )
    assert status["next_retry_at"]

    origin_limits.release(job_id="job_elsewhere_1")  # one of them ended
    run_attempt(job.pk)

    job.refresh_from_db()
    assert (job.status, job.attempts, job.error_code) == (Status.COMPLETED, 1, "")
    assert leases(origin_limits) == ["job_elsewhere_2"]  # its own lease given back


def test_a_running_attempt_holds_its_lease_renews_it_at_each_heartbeat_and_gives_it_back(
    user, origin, media, worker_settings, origin_limits, run_attempt
):
    worker_settings.JOB_HEARTBEAT_INTERVAL_S = 0.1
    origin.add(FILE_ID, FileScript(size=256 * 1024, rate_bps=512 * 1024))  # ~0.5 s
    job = make_job(user)

    with LeaseWatch(origin_limits, job.job_id) as watch:
        run_attempt(job.pk)

    job.refresh_from_db()
    assert job.status == Status.COMPLETED
    held = [expiry for expiry in watch.expiries if expiry is not None]
    assert len(held) >= 10, watch.expiries
    assert len(set(held)) >= 3  # renewed as it beat
    assert held == sorted(held)
    assert leases(origin_limits) == []


@pytest.mark.parametrize(
    ("faults", "status"), [(["404"], Status.FAILED), (["500"], Status.QUEUED), ([], "exception")]
)
def test_the_lease_goes_back_however_the_attempt_ends(
    user, origin, media, origin_limits, run_attempt, dispatched, monkeypatch, faults, status
):
    from jobs.services import attempt

    origin.add(FILE_ID, FileScript(size=1000, faults=faults))
    job = make_job(user)
    if status == "exception":

        def unexpected(**kwargs: Any) -> None:
            raise RuntimeError("a bug in the completion")

        monkeypatch.setattr(attempt, "download_job_complete", unexpected)  # named fake: a crash
        with pytest.raises(RuntimeError):
            run_attempt(job.pk)
    else:
        run_attempt(job.pk)
        job.refresh_from_db()
        assert (job.status, job.attempts) == (status, 1)

    assert origin.requests[FILE_ID] == 1
    assert leases(origin_limits) == []


@pytest.mark.parametrize("its_lease_left", [True, False])
def test_a_redelivered_attempt_is_not_held_back_by_its_own_lease_nor_a_full_limit(
    user, origin, media, origin_limits, django_capture_on_commit_callbacks, its_lease_left
):
    origin.add(FILE_ID, FileScript(size=1000))
    job = make_job(user, status=Status.PROCESSING, attempts=1, task_id="task-1")
    # Its first attempt's lease (its worker died), or none (expired), and the limit is full:
    # the attempt was let through once and goes on.
    holders = [job.job_id, "job_elsewhere_1"] if its_lease_left else ["job_elsewhere_1", "job_elsewhere_2"]
    for holder in holders:
        assert origin_limits.take(job_id=holder) is None

    with django_capture_on_commit_callbacks(execute=True):
        services.download_job_run(job_pk=job.pk, task_id="task-1")

    job.refresh_from_db()
    assert (job.status, job.attempts) == (Status.COMPLETED, 2)
    assert leases(origin_limits) == sorted(set(holders) - {job.job_id})


def test_a_job_sent_again_retakes_its_own_leftover_lease(user, origin, media, origin_limits, run_attempt):
    origin.add(FILE_ID, FileScript(size=1000))
    job = make_job(user, attempts=1)  # queued again by the reaper: its dead attempt's lease is left
    origin_limits.take(job_id=job.job_id)
    origin_limits.take(job_id="job_elsewhere")

    run_attempt(job.pk)

    job.refresh_from_db()
    assert (job.status, job.attempts) == (Status.COMPLETED, 2)
    assert leases(origin_limits) == ["job_elsewhere"]


def test_a_job_past_the_start_rate_waits_until_the_window_allows_one_more(
    user, origin, media, worker_settings, origin_limits, dispatched, run_attempt
):
    worker_settings.ORIGIN_START_RATE = "1/minute"
    for offset in range(2):
        origin.add(FILE_ID + offset, FileScript(size=1000))
    first, second = make_job(user, file_id=FILE_ID), make_job(user, file_id=FILE_ID + 1)
    run_attempt(first.pk)

    run_attempt(second.pk)

    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, first.attempts) == (Status.COMPLETED, 1)
    assert (second.status, second.attempts, second.error_code, second.error_message) == (
        Status.QUEUED,
        0,
        "ORIGIN_BUSY",
        "Waiting: at most 1/minute jobs may start against the origin",
    )
    assert origin.requests[FILE_ID + 1] == 0
    assert [call["args"] for call in dispatched] == [(second.pk,)]
    assert 58 < dispatched[0]["countdown"] <= 70  # the window's reset, plus at most 10 s
    assert leases(origin_limits) == []  # the refused start gave its lease back


def test_a_job_the_breaker_holds_gives_its_lease_back_and_takes_nothing_from_the_rate(
    user, origin, media, breaker_settings, origin_limits, dispatched, run_attempt
):
    from jobs.transfer.breaker import OriginBreaker, origin_breaker_name

    breaker_settings.ORIGIN_START_RATE = "1/minute"
    breaker = OriginBreaker(origin_breaker_name())
    for _ in range(3):
        breaker.record_failure()
    origin.add(FILE_ID, FileScript(size=1000))
    job = make_job(user)

    run_attempt(job.pk)

    job.refresh_from_db()
    assert (job.status, job.attempts, job.error_code) == (Status.QUEUED, 0, "TEMPORARY_UNAVAILABLE")
    assert leases(origin_limits) == []
    breaker.reset()

    run_attempt(job.pk)

    job.refresh_from_db()
    assert (job.status, job.attempts) == (Status.COMPLETED, 1)  # the rate still had its one start
