"""Writes: every change of a download job's state happens here.

Each state change is a compare-and-swap (`UPDATE ... WHERE status = <expected>`), checked
against the one table of allowed transitions in `models.py`. A worker's writes also carry
its attempt number, so the writes of an attempt that was cancelled or replaced are refused.
Work that must follow a write (dispatching the task, publishing an event) runs on commit.
"""

import logging
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django import db
from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from jobs import hotstate, queues
from jobs.errors import ORIGIN_FAILURE_CODES, ErrorCode, JobCancelled, JobError, JobSuperseded
from jobs.events import job_event_publish
from jobs.hotstate import HotProgress
from jobs.models import ACTIVE_STATUSES, DownloadJob, Priority, Status, can_transition
from jobs.ops import metrics
from jobs.selectors import download_job_for_idempotency_key, download_job_status, iso
from jobs.transfer.breaker import OriginBreaker, origin_breaker_name
from jobs.transfer.origins import get_origin
from jobs.transfer.staging import Checkpoint, StagedFile, StoredFileFacts, stage_file
from jobs.transfer.storage import downloads_storage, stored_file_delete, stored_file_sha256

logger = logging.getLogger(__name__)


class InvalidTransition(Exception):
    def __init__(self, job: DownloadJob, to_status: str) -> None:
        super().__init__(f"{job.job_id}: {job.status} -> {to_status} is not allowed")
        self.job = job
        self.to_status = to_status


class JobStateConflict(Exception):
    """The row changed under us (another process moved it first)."""


class ActiveLimitExceeded(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"Maximum {limit} concurrent downloads per user")
        self.limit = limit


# --- transitions ----------------------------------------------------------------------------


def _transition(job: DownloadJob, to_status: str, *, attempt: int | None = None, **fields: Any) -> None:
    """Moves `job` to `to_status` if the row still has the status (and attempt) we read."""
    if not can_transition(job.status, to_status):
        raise InvalidTransition(job, to_status)
    fields["updated_at"] = timezone.now()
    rows = DownloadJob.objects.filter(pk=job.pk, status=job.status)
    if attempt is not None:
        rows = rows.filter(attempts=attempt)
    if not _write(rows, job, status=to_status, **fields):
        raise JobStateConflict(f"{job.job_id} is no longer {job.status}")
    job.status = to_status
    for name, value in fields.items():
        setattr(job, name, value)


def _on_commit(callback: Callable[[], Any]) -> None:
    """Runs `callback` once the transaction commits. Robust: one that fails is logged and
    the others still run (a Redis error at a cancel must not skip the upload's abort), and
    a committed change is never answered as a failure."""
    transaction.on_commit(callback, robust=True)


def _write(rows: QuerySet[DownloadJob], job: DownloadJob, **fields: Any) -> bool:
    """Every write of a job row goes through here: `rows` is the compare-and-swap (the
    row of `job` as the caller expects it). Raises the row's version and, once the write
    commits, replaces the job's card in Redis. True if the row was written."""
    if rows.update(version=F("version") + 1, **fields) != 1:
        return False
    _card_replace_on_commit(job)
    return True


def _card_replace_on_commit(job: DownloadJob) -> None:
    """Drops the job's card now, so that until the write commits a poll reads the row,
    and writes the new one from the committed row after. Never fails the caller: a card
    that could not be written is read from the row by the next poll, and a stale one
    lives at most JOB_CARD_TTL_S (the version check keeps out any older copy)."""
    job_id, pk = job.job_id, job.pk
    try:
        hotstate.card_forget(job_id)
    except Exception:
        logger.warning("Could not drop the card of %s", job_id, exc_info=True)

    def replace() -> None:
        try:
            values = DownloadJob.objects.filter(pk=pk).values(*hotstate.card_fields()).first()
            if values is not None:
                hotstate.card_write(hotstate.JobCard(**values))
        except Exception:
            logger.warning("Could not write the card of %s", job_id, exc_info=True)

    _on_commit(replace)


def _publish_on_commit(job: DownloadJob, event_type: str, **extra: Any) -> None:
    event = {
        **download_job_status(job=job, hot=None),
        "type": event_type,
        "timestamp": iso(timezone.now()),
        **extra,
    }
    _on_commit(lambda: job_event_publish(job.job_id, event))


def _dispatch_on_commit(job: DownloadJob, *, countdown_s: float = 0) -> None:
    def send() -> None:
        try:
            queues.stage_send(job_pk=job.pk, priority=job.priority, countdown_s=countdown_s)
        except Exception:
            # The row stays queued; the reaper re-dispatches jobs queued for too long.
            logger.exception("Could not dispatch %s to the broker", job.job_id)

    _on_commit(send)


# --- create and cancel ----------------------------------------------------------------------


def download_job_create(
    *,
    owner: User,
    file_id: int,
    priority: str = Priority.NORMAL,
    metadata: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> tuple[DownloadJob, bool]:
    """Creates a queued job and dispatches it, or returns the job that the same
    idempotency key made within 24 hours. Returns (job, created).

    A file that a job staged and that is still retained (see JOB_REUSE) is not fetched
    again: the new job is created completed, pointing at the stored object."""
    with transaction.atomic():
        # Locking the owner's row serialises this user's initiates, so parallel requests
        # cannot all pass the active-jobs check.
        User.objects.select_for_update().filter(pk=owner.pk).first()
        if idempotency_key:
            if existing := download_job_for_idempotency_key(owner=owner, key=idempotency_key):
                return existing, False
            # An older job of the key gives it up, for the unique constraint.
            if existing := DownloadJob.objects.filter(owner=owner, idempotency_key=idempotency_key).first():
                _write(
                    DownloadJob.objects.filter(pk=existing.pk),
                    existing,
                    idempotency_key="",
                    updated_at=timezone.now(),
                )
        if source := _reusable_job(owner=owner, file_id=file_id):
            return _create_reused(owner, source, priority, metadata, idempotency_key), True
        active = DownloadJob.objects.filter(owner=owner, status__in=ACTIVE_STATUSES).count()
        if active >= settings.JOB_MAX_ACTIVE_PER_USER:
            raise ActiveLimitExceeded(settings.JOB_MAX_ACTIVE_PER_USER)
        try:
            with transaction.atomic():
                job = DownloadJob.objects.create(
                    owner=owner,
                    file_id=file_id,
                    priority=priority,
                    metadata=metadata or {},
                    idempotency_key=idempotency_key or "",
                    max_attempts=settings.JOB_MAX_ATTEMPTS,
                )
        except IntegrityError:
            if not idempotency_key:
                raise
            return DownloadJob.objects.get(owner=owner, idempotency_key=idempotency_key), False
        _card_replace_on_commit(job)
        _dispatch_on_commit(job)
    return job, True


def _reusable_job(*, owner: User, file_id: int) -> DownloadJob | None:
    """The completed job whose stored file of `file_id` stays retained longest, if it
    stays at least JOB_REUSE_MIN_REMAINING_S and is still in storage."""
    scope = settings.JOB_REUSE
    if scope == "off":
        return None
    retained_until = timezone.now() + timedelta(seconds=settings.JOB_REUSE_MIN_REMAINING_S)
    candidates = DownloadJob.objects.filter(
        file_id=file_id, status=Status.COMPLETED, expires_at__gt=retained_until
    ).exclude(storage_key="")
    if scope == "owner":
        candidates = candidates.filter(owner=owner)
    source = candidates.order_by("-expires_at").first()
    if source is None:
        return None
    try:
        if downloads_storage().exists(source.storage_key):
            return source
    except Exception:
        logger.exception("Could not check the stored file of %s; fetching it again", source.job_id)
        return None
    logger.warning("%s is completed but its file %s is gone", source.job_id, source.storage_key)
    return None


def _create_reused(
    owner: User,
    source: DownloadJob,
    priority: str,
    metadata: dict[str, Any] | None,
    idempotency_key: str | None,
) -> DownloadJob:
    """A job completed at once from `source`'s stored object. It shares the object and
    its retention (the file is deleted once, when they all expire)."""
    now = timezone.now()
    job = DownloadJob.objects.create(
        owner=owner,
        file_id=source.file_id,
        priority=priority,
        metadata=metadata or {},
        idempotency_key=idempotency_key or "",
        max_attempts=settings.JOB_MAX_ATTEMPTS,
        status=Status.COMPLETED,
        progress=100,
        bytes_done=source.file_size_bytes or 0,
        bytes_total=source.file_size_bytes,
        started_at=now,
        completed_at=now,
        duration_seconds=0.0,
        expires_at=source.expires_at,
        storage_key=source.storage_key,
        file_name=source.file_name,
        file_size_bytes=source.file_size_bytes,
        content_type=source.content_type,
        sha256=source.sha256,
        reused_from=source,
    )
    _card_replace_on_commit(job)
    _publish_on_commit(job, "completed")
    _on_commit(lambda: metrics.job_reused())
    logger.info("%s completed at once from the stored file of %s", job.job_id, source.job_id)
    return job


def download_job_cancel(*, job: DownloadJob) -> DownloadJob:
    """Cancels a queued or processing job. A processing worker sees the flag within one
    chunk, aborts its upload and leaves nothing in storage."""
    key, upload_id = job.storage_key, job.upload_id
    with transaction.atomic():
        _transition(
            job,
            Status.CANCELLED,
            cancelled_at=timezone.now(),
            next_retry_at=None,
            upload_id="",
            upload_parts=[],
        )
        _on_commit(lambda: hotstate.cancel_flag_set(job.job_id))
        # A job waiting for its retry keeps the upload of its last attempt: no worker
        # holds it, so it is aborted here (a running worker aborts its own as well).
        _on_commit(lambda: _upload_abort(key, upload_id, job.job_id))
        _publish_on_commit(job, "cancelled")
        _on_commit(lambda: metrics.job_ended("cancelled"))
    return job


# --- the worker's side ----------------------------------------------------------------------


def _storage_key(job: DownloadJob, *, attempt: int) -> str:
    """Each attempt writes its own key: a late attempt that lost the race to complete
    removes only its own file, never the one the job completed with."""
    return f"{settings.DOWNLOADS_LOCATION}/{job.owner_id}/{job.job_id}-{attempt}"


def download_job_start(*, job_pk: int, task_id: str = "") -> DownloadJob | None:
    """Marks the job processing as a new attempt, or returns None if there is nothing to
    do (finished, cancelled, or taken by another worker). A job found already processing
    was redelivered after its worker died: its leftover upload is aborted and it restarts,
    unless that was its last attempt.

    Only a redelivery of the message that runs the attempt (same `task_id`) may restart
    it: another message for the job (the reaper's, or a duplicate dispatch) that finds it
    processing lost the race to start it, and does nothing."""
    job = DownloadJob.objects.filter(pk=job_pk).first()
    if job is None or job.status not in ACTIVE_STATUSES:
        return None
    if job.status == Status.PROCESSING and job.task_id and task_id and job.task_id != task_id:
        return None
    if job.status == Status.PROCESSING and _complete_from_storage(job):
        return None
    if job.status == Status.PROCESSING and job.attempts >= job.max_attempts:
        _fail(
            job,
            attempt=job.attempts,
            error=JobError(ErrorCode.PROCESSING_ERROR, "The worker stopped during the last attempt"),
            dead_letter=True,
        )
        return None
    now = timezone.now()
    # An upload in which an earlier attempt stored parts stays, under its key, for this
    # attempt to resume; one with none is of no use and is aborted. So does one that an
    # earlier attempt committed (it recorded the file) but could not complete.
    resumable = bool(job.upload_id and (job.upload_parts or job.file_size_bytes is not None))
    if job.upload_id and not resumable:
        _upload_abort(job.storage_key, job.upload_id, job.job_id)
    storage_key = job.storage_key if resumable else _storage_key(job, attempt=job.attempts + 1)
    try:
        with transaction.atomic():
            _transition(
                job,
                Status.PROCESSING,
                attempt=job.attempts,
                attempts=job.attempts + 1,
                started_at=now,
                next_retry_at=None,
                progress=0,
                bytes_done=0,
                bytes_total=None,
                storage_key=storage_key,
                upload_id=job.upload_id if resumable else "",
                upload_parts=job.upload_parts if resumable else [],
                **({} if resumable else {"file_size_bytes": None, "sha256": ""}),
                heartbeat_at=now,
                task_id=task_id,
            )
            _publish_on_commit(job, "status_update")
    except JobStateConflict:
        return None
    return job


def _upload_abort(key: str, upload_id: str, job_id: str) -> None:
    """Aborts an unfinished upload that no attempt will resume."""
    if not upload_id:
        return
    try:
        stored_file_delete(key, upload_id=upload_id)
    except Exception:
        logger.exception("Could not abort the leftover upload of %s", job_id)


class _AttemptHooks:
    """Progress of one attempt: pushed to Redis and the job's watchers on each whole
    percent (at most every PROGRESS_PUSH_INTERVAL_S), written to the row at most every
    PROGRESS_DB_INTERVAL_S. Between chunks it checks the cancel flag and stops the work."""

    def __init__(self, job: DownloadJob) -> None:
        self.job = job
        self.attempt = job.attempts
        self.last_push_at = 0.0
        self.last_percent = -1
        self.last_db_at = time.monotonic()

    def upload_opened(
        self,
        *,
        upload_id: str,
        parts: list[dict[str, Any]],
        bytes_total: int | None,
        resumed_bytes: int,
        validator: str,
    ) -> None:
        if resumed_bytes:
            logger.info(
                "%s attempt %s resumes after %s stored bytes", self.job.job_id, self.attempt, resumed_bytes
            )
        self._write_row(
            upload_id=upload_id,
            upload_parts=parts,
            origin_validator=validator,
            bytes_total=bytes_total,
            bytes_done=resumed_bytes,
        )
        self.chunk_staged(bytes_done=resumed_bytes, bytes_total=bytes_total)

    def part_stored(self, *, parts: list[dict[str, Any]]) -> None:
        self._write_row(upload_parts=parts)

    def before_commit(self, *, file: StoredFileFacts) -> None:
        # Recorded before the commit: an attempt that finds the file stored completes with it.
        self._write_row(
            file_size_bytes=file.size,
            file_name=file.file_name,
            content_type=file.content_type,
            sha256=file.sha256,
        )

    def chunk_staged(self, *, bytes_done: int, bytes_total: int | None) -> None:
        if hotstate.cancel_flag_is_set(self.job.job_id):
            raise JobCancelled(self.job.job_id)
        # 100 % is said by the completion, not while the upload is being finished.
        percent = min(99, bytes_done * 100 // bytes_total) if bytes_total else 0
        now = time.monotonic()
        due = now - self.last_push_at >= settings.PROGRESS_PUSH_INTERVAL_S
        if due and (percent != self.last_percent or not bytes_total):
            self.last_push_at, self.last_percent = now, percent
            self._push(percent, bytes_done, bytes_total)
        if now - self.last_db_at >= settings.PROGRESS_DB_INTERVAL_S:
            self.last_db_at = now
            self._write_row(progress=percent, bytes_done=bytes_done, bytes_total=bytes_total)

    def _push(self, percent: int, bytes_done: int, bytes_total: int | None) -> None:
        job_id = self.job.job_id
        hotstate.progress_write(
            job_id=job_id,
            progress=HotProgress(self.attempt, bytes_done, bytes_total, percent),
        )
        job_event_publish(
            job_id,
            {
                "type": "progress",
                "job_id": job_id,
                "status": Status.PROCESSING,
                "progress": percent,
                "bytes_done": bytes_done,
                "bytes_total": bytes_total,
                "timestamp": iso(timezone.now()),
            },
        )

    def _write_row(self, **fields: Any) -> None:
        """Every write of the attempt is fenced by its number: once the reaper or a newer
        attempt has taken the job, this attempt's writes are refused and it stops."""
        rows = DownloadJob.objects.filter(pk=self.job.pk, status=Status.PROCESSING, attempts=self.attempt)
        now = timezone.now()
        # The same write is the attempt's heartbeat, which the reaper watches.
        if not _write(rows, self.job, updated_at=now, heartbeat_at=now, **fields):
            raise JobSuperseded(self.job.job_id)
        for name, value in fields.items():
            setattr(self.job, name, value)


def download_job_run(*, job_pk: int, task_id: str = "") -> None:
    """One attempt of a job: start it, stage the file, then complete, retry or fail.

    While the origin's circuit breaker is open, a queued job does not start: it waits
    for the breaker without using up an attempt. The attempt's outcome is reported to
    the breaker: a failure of the origin's (network, 5xx, timeout, 429) counts against
    it, any answer of the origin's (a file, a 404) for it."""
    breaker = OriginBreaker(origin_breaker_name())
    queued = DownloadJob.objects.filter(pk=job_pk, status=Status.QUEUED).first()
    # A redelivered job (processing) goes on: its attempt had got past the breaker.
    if queued is not None and (wait_s := breaker.allow()) is not None:
        _wait_for_origin(queued, wait_s)
        return
    job = download_job_start(job_pk=job_pk, task_id=task_id)
    if job is None:
        return
    try:
        staged = _attempt_run(job)
    except JobError as error:
        # The attempt has been ended (retry or fail) by _attempt_run; only the breaker
        # is left to tell.
        if error.code in ORIGIN_FAILURE_CODES:
            breaker.record_failure()
        elif error.code != ErrorCode.STORAGE_ERROR:
            breaker.record_success()  # the origin answered, if not with the file
        return
    if staged is not None:
        breaker.record_success()


def _wait_for_origin(job: DownloadJob, wait_s: float) -> None:
    """Sends the queued job again once the breaker lets a request through. Its attempt
    count stays: the origin, not the job, is failing."""
    now = timezone.now()
    countdown_s = wait_s * random.uniform(1.0, 1.0 + settings.JOB_RETRY_JITTER)  # noqa: S311 (jitter)
    error = JobError(ErrorCode.TEMPORARY_UNAVAILABLE, "The origin is failing; waiting for it to recover")
    fields = {
        "next_retry_at": now + timedelta(seconds=countdown_s),
        "error_code": error.code,
        "error_message": error.message,
        "error_retryable": True,
        "updated_at": now,
    }
    rows = DownloadJob.objects.filter(pk=job.pk, status=Status.QUEUED, attempts=job.attempts)
    with transaction.atomic():
        if not _write(rows, job, **fields):
            return  # cancelled, or taken by another message meanwhile
        for name, value in fields.items():
            setattr(job, name, value)
        _publish_on_commit(job, "status_update")
        _dispatch_on_commit(job, countdown_s=countdown_s)
        _on_commit(lambda: metrics.job_ended("held", error.code))
    logger.info("%s waits %.0f s for the origin's circuit breaker", job.job_id, countdown_s)


def _attempt_run(job: DownloadJob) -> StagedFile | None:
    """Stages the file and completes, retries or fails the attempt. Returns the staged
    file if it completed; re-raises a JobError (after handling it) for the breaker."""
    attempt = job.attempts
    if stored := _complete_from_storage(job):
        return stored
    checkpoint = (
        Checkpoint(upload_id=job.upload_id, parts=job.upload_parts, validator=job.origin_validator)
        if job.upload_id
        else None
    )
    try:
        staged = stage_file(
            origin=get_origin(),
            file_id=job.file_id,
            key=job.storage_key,
            hooks=_AttemptHooks(job),
            checkpoint=checkpoint,
        )
    except (JobCancelled, JobSuperseded):
        logger.info("%s attempt %s stopped: cancelled or superseded", job.job_id, attempt)
        hotstate.progress_clear(job.job_id)
        return None
    except JobError as error:
        _fail(job, attempt=attempt, error=error)
        raise
    except SoftTimeLimitExceeded:
        limit_s = settings.JOB_SOFT_TIME_LIMIT_S
        _fail(
            job,
            attempt=attempt,
            error=JobError(ErrorCode.DOWNLOAD_TIMEOUT, f"File download exceeded {limit_s} s"),
        )
        return None
    except Exception:
        logger.exception("%s attempt %s failed unexpectedly", job.job_id, attempt)
        _fail(job, attempt=attempt, error=JobError(ErrorCode.PROCESSING_ERROR, "Failed to process file"))
        return None
    download_job_complete(job=job, attempt=attempt, staged=staged)
    return staged


def _stored_file(job: DownloadJob) -> StagedFile | None:
    """The file an earlier attempt of the job committed to storage and recorded on the row
    (`before_commit`), if it is there, whole: its completion write was lost."""
    if not job.upload_id or job.file_size_bytes is None:
        return None
    storage = downloads_storage()
    try:
        if not storage.exists(job.storage_key) or storage.size(job.storage_key) != job.file_size_bytes:
            return None
        sha256 = job.sha256 or stored_file_sha256(job.storage_key)
    except Exception:
        logger.warning("Could not check the stored file of %s", job.job_id, exc_info=True)
        return None
    return StagedFile(
        key=job.storage_key,
        file_name=job.file_name,
        content_type=job.content_type,
        size=job.file_size_bytes,
        sha256=sha256,
        resumed_bytes=job.file_size_bytes,
    )


def _complete_from_storage(job: DownloadJob) -> StagedFile | None:
    """Completes the processing job with the file its attempt already stored, if any,
    without a byte from the origin. Returns the file if the job completed with it (by
    this call or another)."""
    staged = _stored_file(job)
    if staged is None:
        return None
    logger.info("%s: its file is stored; completing without fetching it again", job.job_id)
    download_job_complete(job=job, attempt=job.attempts, staged=staged)
    job.refresh_from_db(fields=["status"])
    return staged if job.status == Status.COMPLETED else None


# A stored file is worth a wait: a brief database outage at the final write is waited out
# (31 s in all, well inside JOB_HEARTBEAT_STALE_S) rather than leaving the file to the reaper.
COMPLETION_RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0)


def download_job_complete(*, job: DownloadJob, attempt: int, staged: StagedFile) -> None:
    """Completes the attempt with its stored file. A transient database error is retried
    with backoff; past the last try it propagates, and the next attempt finds the stored
    file and completes with it."""
    for delay_s in (*COMPLETION_RETRY_DELAYS_S, None):
        try:
            _complete(job, attempt=attempt, staged=staged)
            return
        except (db.OperationalError, db.InterfaceError) as error:
            if delay_s is None:
                raise
            logger.warning(
                "%s attempt %s: the completion write failed (%s); again in %.0f s",
                job.job_id,
                attempt,
                error,
                delay_s,
            )
            if not db.connection.in_atomic_block:
                db.connection.close_if_unusable_or_obsolete()
            time.sleep(delay_s)


def _complete(job: DownloadJob, *, attempt: int, staged: StagedFile) -> None:
    now = timezone.now()
    try:
        with transaction.atomic():
            _transition(
                job,
                Status.COMPLETED,
                attempt=attempt,
                progress=100,
                bytes_done=staged.size,
                bytes_total=staged.size,
                completed_at=now,
                duration_seconds=(now - job.started_at).total_seconds() if job.started_at else None,
                expires_at=now + timedelta(seconds=settings.JOB_RETENTION_S),
                upload_id="",
                upload_parts=[],
                resumed_bytes=staged.resumed_bytes,
                file_name=staged.file_name,
                file_size_bytes=staged.size,
                content_type=staged.content_type,
                sha256=staged.sha256,
                error_code="",
                error_message="",
                error_retryable=None,
            )
            _publish_on_commit(job, "completed")
            _on_commit(lambda: metrics.job_completed(job, size=staged.size))
    except JobStateConflict:
        # Cancelled (or superseded) after the last chunk: the file must not stay behind,
        # unless the job completed with it, or goes on with the same key (its next attempt
        # completes with the stored file).
        job.refresh_from_db(fields=["status", "storage_key"])
        keeps_it = job.status in (Status.COMPLETED, *ACTIVE_STATUSES) and job.storage_key == staged.key
        if not keeps_it:
            stored_file_delete(staged.key)
        logger.info("%s attempt %s finished after it was cancelled or superseded", job.job_id, attempt)
    hotstate.progress_clear(job.job_id)


def retry_delay_s(attempt: int) -> float:
    """Exponential backoff with jitter: 5, 10, 20 s ... by default, each +/- 20 %."""
    base = min(settings.JOB_RETRY_BACKOFF_MAX_S, settings.JOB_RETRY_BACKOFF_S * 2 ** (attempt - 1))
    jitter = settings.JOB_RETRY_JITTER
    return base * random.uniform(1 - jitter, 1 + jitter)  # noqa: S311 (jitter, not a secret)


def _fail(job: DownloadJob, *, attempt: int, error: JobError, dead_letter: bool = False) -> None:
    """Ends an attempt that failed: queued again after a backoff if the error is
    retryable and attempts remain, otherwise failed (dead-lettered if it was retryable)."""
    now = timezone.now()
    error_fields = {
        "error_code": error.code,
        "error_message": error.message,
        "error_retryable": error.retryable,
    }
    try:
        with transaction.atomic():
            if error.retryable and attempt < job.max_attempts and not dead_letter:
                delay_s = retry_delay_s(attempt)
                # The upload and its recorded parts stay: the next attempt resumes them.
                _transition(
                    job,
                    Status.QUEUED,
                    attempt=attempt,
                    next_retry_at=now + timedelta(seconds=delay_s),
                    **error_fields,
                )
                _publish_on_commit(job, "status_update")
                _dispatch_on_commit(job, countdown_s=delay_s)
                _on_commit(lambda: metrics.job_ended("retried", error.code))
                logger.info(
                    "%s attempt %s failed with %s; retry in %.1f s", job.job_id, attempt, error.code, delay_s
                )
            else:
                exhausted = error.retryable or dead_letter
                key, upload_id = job.storage_key, job.upload_id
                _transition(
                    job,
                    Status.FAILED,
                    attempt=attempt,
                    failed_at=now,
                    upload_id="",
                    upload_parts=[],
                    dead_lettered_at=now if exhausted else None,
                    **error_fields,
                )
                # No attempt follows: nothing of the file may stay in storage.
                _on_commit(lambda: _upload_abort(key, upload_id, job.job_id))
                _publish_on_commit(job, "error")
                _on_commit(lambda: metrics.job_ended("failed", error.code))
                logger.warning("%s failed with %s after %s attempt(s)", job.job_id, error.code, attempt)
    except JobStateConflict:
        logger.info("%s attempt %s failed after it was cancelled or superseded", job.job_id, attempt)
    hotstate.progress_clear(job.job_id)


# --- operator retry (admin) -----------------------------------------------------------------


class NotDeadLettered(InvalidTransition):
    def __str__(self) -> str:
        return f"{self.job.job_id} is not dead-lettered"


def download_job_retry(*, job: DownloadJob, dead_lettered_only: bool = False) -> DownloadJob:
    """Queues a failed or cancelled job again as a fresh run of attempts.

    `attempts` is never reset: it is the fencing token, so a late worker of an earlier
    attempt stays refused and each attempt keeps its own storage key. The job gets
    JOB_MAX_ATTEMPTS more attempts on top of those it has used. The cancel flag is cleared
    before the task is sent, or the worker would stop the new attempt at its first chunk."""
    # The table also allows processing -> queued, for a worker's own retry; an operator
    # retries only a job that has ended.
    if job.status not in (Status.FAILED, Status.CANCELLED):
        raise InvalidTransition(job, Status.QUEUED)
    if dead_lettered_only and (job.status != Status.FAILED or job.dead_lettered_at is None):
        raise NotDeadLettered(job, Status.QUEUED)
    with transaction.atomic():
        _transition(
            job,
            Status.QUEUED,
            max_attempts=job.attempts + settings.JOB_MAX_ATTEMPTS,
            next_retry_at=None,
            dead_lettered_at=None,
            failed_at=None,
            cancelled_at=None,
            progress=0,
            bytes_done=0,
            bytes_total=None,
            upload_id="",
            upload_parts=[],
            error_code="",
            error_message="",
            error_retryable=None,
        )
        _on_commit(lambda: hotstate.cancel_flag_clear(job.job_id))
        _publish_on_commit(job, "status_update")
        _dispatch_on_commit(job)
    return job


# --- maintenance (beat): retention and the reaper -------------------------------------------


def download_jobs_expire(*, now: datetime | None = None, batch: int = 500) -> int:
    """Deletes the files of completed jobs past their retention and marks them expired;
    returns how many it expired. At most `batch` per call (beat calls again).

    The file is deleted before the row changes: a delete that fails leaves the job
    completed, to be tried again next time, rather than a file no row points to. The row
    keeps its `storage_key` as a record of where the file was. Two runs at once are safe:
    deleting is idempotent and only one compare-and-swap to expired succeeds."""
    now = now or timezone.now()
    due = DownloadJob.objects.filter(status=Status.COMPLETED, expires_at__lte=now).order_by("expires_at")
    expired = 0
    for job in due[:batch]:
        shared = (
            DownloadJob.objects.filter(
                status=Status.COMPLETED, storage_key=job.storage_key, expires_at__gt=job.expires_at
            )
            .exclude(pk=job.pk)
            .exists()
        )
        try:
            if not shared:  # a job that reused the file and is retained longer keeps it
                stored_file_delete(job.storage_key)
        except Exception:
            logger.exception("Could not delete the file of %s; it stays completed", job.job_id)
            continue
        try:
            _transition(job, Status.EXPIRED)
        except JobStateConflict:
            continue
        expired += 1
    if expired:
        logger.info("Expired %s job(s) past their retention", expired)
    return expired


def download_jobs_purge(*, now: datetime | None = None, batch: int = 1000) -> int:
    """Deletes the rows of jobs that ended (failed, cancelled, expired) more than
    JOB_AUDIT_RETENTION_DAYS ago; returns how many. At most `batch` per call (beat calls
    again). Their files are long gone: a failed or cancelled job leaves none, an expired
    one's was deleted at expiry. A job that reused one of them keeps its row."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.JOB_AUDIT_RETENTION_DAYS)
    ended = DownloadJob.objects.filter(
        status__in=(Status.FAILED, Status.CANCELLED, Status.EXPIRED), updated_at__lt=cutoff
    )
    pks = list(ended.order_by("pk").values_list("pk", flat=True)[:batch])
    if not pks:
        return 0
    deleted = DownloadJob.objects.filter(pk__in=pks).delete()[1].get(DownloadJob._meta.label, 0)
    logger.info("Purged %s job row(s) ended before %s", deleted, iso(cutoff))
    return deleted


def _stale_heartbeat(cutoff: datetime) -> Q:
    # A row written before heartbeats existed has none: its last write stands in for it.
    return Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, updated_at__lt=cutoff)


def download_jobs_reap(*, now: datetime | None = None, batch: int = 500) -> int:
    """Sends again the jobs the broker lost; returns how many it re-queued or failed.

    A processing job whose heartbeat is older than JOB_HEARTBEAT_STALE_S lost its worker.
    Before anything is sent, a compare-and-swap that holds only while the heartbeat is
    still stale moves it back to queued (or to failed, dead-lettered, on its last
    attempt): the old attempt's next progress write or completion is then refused, so it
    can never finish beside the new one. The new attempt starts from queued through the
    same compare-and-swap as any other message, so if the broker also redelivers the old
    message, exactly one of the two starts it and the other does nothing.

    A queued job untouched for JOB_QUEUED_STALE_S (and not waiting for a retry) is sent
    again; a duplicate message is harmless for the same reason."""
    now = now or timezone.now()
    heartbeat_cutoff = now - timedelta(seconds=settings.JOB_HEARTBEAT_STALE_S)
    queued_cutoff = now - timedelta(seconds=settings.JOB_QUEUED_STALE_S)
    reaped = 0
    stalled = DownloadJob.objects.filter(_stale_heartbeat(heartbeat_cutoff), status=Status.PROCESSING)
    for job in stalled.order_by("pk")[:batch]:
        reaped += _reap_stalled(job, heartbeat_cutoff=heartbeat_cutoff)
    lost = DownloadJob.objects.filter(status=Status.QUEUED, updated_at__lt=queued_cutoff).filter(
        Q(next_retry_at__isnull=True) | Q(next_retry_at__lt=queued_cutoff)
    )
    for job in lost.order_by("pk")[:batch]:
        reaped += _reap_lost(job)
    return reaped


def _reap_stalled(job: DownloadJob, *, heartbeat_cutoff: datetime) -> int:
    if _complete_from_storage(job):
        return 1  # its attempt stored the file but could not complete
    now = timezone.now()
    # An attempt that still wrote heartbeats past the job time limit was ended by Celery's
    # hard limit (its soft-limit handler never ran; Celery acks such a task as failed): it
    # fails DOWNLOAD_TIMEOUT, as it would have, instead of running past the limit again.
    ran_s = (job.heartbeat_at - job.started_at).total_seconds() if job.heartbeat_at and job.started_at else 0
    timed_out = ran_s >= settings.JOB_SOFT_TIME_LIMIT_S
    last_attempt = job.attempts >= job.max_attempts or timed_out
    to_status = Status.FAILED if last_attempt else Status.QUEUED
    if not can_transition(job.status, to_status):
        raise InvalidTransition(job, to_status)
    # Re-queued, the job keeps its upload for the next attempt to resume; the fencing
    # below refuses whatever the old attempt still tries to record or complete.
    fields: dict[str, Any] = {"heartbeat_at": None, "next_retry_at": None}
    error = JobError(ErrorCode.PROCESSING_ERROR, "The worker stopped during the last attempt")
    if timed_out:
        error = JobError(
            ErrorCode.DOWNLOAD_TIMEOUT, f"File download exceeded {settings.JOB_SOFT_TIME_LIMIT_S} s"
        )
    if last_attempt:
        fields |= {
            "upload_id": "",
            "upload_parts": [],
            "failed_at": now,
            "dead_lettered_at": None if timed_out else now,
            "error_code": error.code,
            "error_message": error.message,
            "error_retryable": error.retryable,
        }
    leftover_key, leftover_upload_id, last_heartbeat = job.storage_key, job.upload_id, job.heartbeat_at
    rows = DownloadJob.objects.filter(
        _stale_heartbeat(heartbeat_cutoff), pk=job.pk, status=Status.PROCESSING, attempts=job.attempts
    )
    with transaction.atomic():
        if not _write(rows, job, status=to_status, updated_at=now, **fields):
            return 0  # it wrote a heartbeat meanwhile, or moved on
        job.status = to_status
        for name, value in fields.items():
            setattr(job, name, value)
        if last_attempt:
            _publish_on_commit(job, "error")
            _on_commit(lambda: metrics.job_ended("failed", error.code))
        else:
            _publish_on_commit(job, "status_update")
            _dispatch_on_commit(job)
    if last_attempt:
        _upload_abort(leftover_key, leftover_upload_id, job.job_id)
    hotstate.progress_clear(job.job_id)
    logger.warning(
        "%s attempt %s wrote no heartbeat since %s: %s",
        job.job_id,
        job.attempts,
        iso(last_heartbeat),
        f"failed {error.code}" if last_attempt else "re-queued",
    )
    return 1


def _reap_lost(job: DownloadJob) -> int:
    """Touching `updated_at` in the same compare-and-swap keeps two reapers (or the next
    run, while the broker is merely backed up) from sending it again at once."""
    rows = DownloadJob.objects.filter(
        pk=job.pk, status=Status.QUEUED, attempts=job.attempts, updated_at=job.updated_at
    )
    with transaction.atomic():
        if not _write(rows, job, updated_at=timezone.now()):
            return 0
        _dispatch_on_commit(job)
    logger.warning("%s queued since %s and no worker took it: sent again", job.job_id, iso(job.updated_at))
    return 1
