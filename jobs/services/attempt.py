"""The worker's side: one attempt of a job, from its start through staging to its
completion, retry or failure, and what the origin's limits and circuit breaker decide
before it."""

import logging
import random
import time
from datetime import timedelta
from typing import Any

import redis
from celery.exceptions import SoftTimeLimitExceeded
from django import db
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs import completions, hotstate
from jobs.errors import ErrorCode, JobCancelled, JobError, JobSuperseded
from jobs.models import ACTIVE_STATUSES, DownloadJob, Status
from jobs.ops import metrics
from jobs.services.progress import AttemptHooks
from jobs.services.writes import (
    JobStateConflict,
    connection_release,
    dispatch_on_commit,
    hot_on_commit,
    on_commit,
    progress_forget,
    publish_on_commit,
    storage_key_for,
    transition,
    upload_abort,
    write,
)
from jobs.transfer.breaker import OriginBreaker, origin_breaker_name
from jobs.transfer.deadline import Deadline
from jobs.transfer.origin_limits import OriginLimits
from jobs.transfer.origins import get_origin
from jobs.transfer.staging import Checkpoint, StagedFile, stage_file
from jobs.transfer.storage import stored_file_delete, stored_file_sha256, stored_file_size

logger = logging.getLogger(__name__)


def download_job_start(
    *, job_pk: int, task_id: str = "", row: DownloadJob | None = None
) -> DownloadJob | None:
    """Marks the job processing as a new attempt, or returns None if there is nothing to
    do (finished, cancelled, or taken by another worker). A job found already processing
    was redelivered after its worker died: its leftover upload is aborted and it restarts,
    unless that was its last attempt.

    Only a redelivery of the message that runs the attempt (same `task_id`) may restart
    it: another message for the job (the reaper's, or a duplicate dispatch) that finds it
    processing lost the race to start it, and does nothing. `row` is the job's row as the
    caller just read it, if it did."""
    job = row if row is not None else DownloadJob.objects.filter(pk=job_pk).first()
    if job is None or job.status not in ACTIVE_STATUSES:
        return None
    if job.status == Status.PROCESSING and job.task_id and task_id and job.task_id != task_id:
        return None
    if job.status == Status.PROCESSING and complete_from_storage(job):
        return None
    if job.status == Status.PROCESSING and job.attempts >= job.max_attempts:
        attempt_fail(
            job,
            attempt=job.attempts,
            error=JobError(ErrorCode.PROCESSING_ERROR, "The worker stopped during the last attempt"),
            dead_letter=True,
        )
        return None
    now = timezone.now()
    due_since = job.due_since  # read before the transition rewrites the fields it comes from
    # An upload in which an earlier attempt stored parts stays, under its key, for this
    # attempt to resume; one with none is of no use and is aborted. So does one that an
    # earlier attempt committed (it recorded the file) but could not complete.
    parts = _stored_parts(job, attempts=(job.attempts,))
    resumable = bool(job.upload_id and (parts or job.file_size_bytes is not None))
    if job.upload_id and not resumable:
        upload_abort(job.storage_key, job.upload_id, job.job_id)
    storage_key = job.storage_key if resumable else storage_key_for(job, attempt=job.attempts + 1)
    try:
        with transaction.atomic():
            transition(
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
                **({} if resumable else {"file_size_bytes": None, "sha256": ""}),
                task_id=task_id,
            )
            publish_on_commit(job, "status_update")
            hot_on_commit(job.job_id, "claim the attempt", lambda: _claim(job, parts if resumable else []))
            on_commit(lambda: metrics.attempt_started(due_since=due_since, started_at=now))
    except JobStateConflict:
        return None
    return job


def _stored_parts(job: DownloadJob, *, attempts: tuple[int, ...]) -> list[dict[str, Any]]:
    """The parts that the job's attempt `attempts` stored, as it recorded them in Redis.
    Empty if that state was lost or cannot be read: the file then restarts from zero."""
    try:
        state = hotstate.run_read(job.job_id)
    except redis.RedisError:
        logger.warning("Could not read the stored parts of %s; its file restarts", job.job_id, exc_info=True)
        return []
    return state.parts if state is not None and state.attempt in attempts else []


def _resumed_parts(job: DownloadJob) -> list[dict[str, Any]]:
    """The parts the started attempt resumes after: those its start claimed, or the last
    attempt's if that claim was lost."""
    return _stored_parts(job, attempts=(job.attempts, job.attempts - 1))


def _claim(job: DownloadJob, parts: list[dict[str, Any]]) -> None:
    """The new attempt takes the job over in Redis, fencing off the attempt before it;
    its first heartbeat does the same if this write is lost."""
    hotstate.run_beat(job.job_id, attempt=job.attempts, parts=parts)


def download_job_run(*, job_pk: int, task_id: str = "") -> None:
    """One attempt of a job: start it, stage the file, then complete, retry or fail.

    A queued job starts only if the origin's limits (jobs/transfer/origin_limits.py) and
    its circuit breaker let it: otherwise it waits, queued, without using up an attempt.
    The limits are asked first, so that a job they hold back never takes the breaker's
    half-open probe. The running attempt holds its in-flight lease until it ends, however
    it ends. The attempt's outcome is reported to the breaker: a failure of the origin's
    (network, 5xx, timeout, 429, and a time limit the origin's slowness spent) counts
    against it, any answer of the origin's (a file, a 404) for it."""
    deadline = Deadline.after(settings.JOB_SOFT_TIME_LIMIT_S)
    name = origin_breaker_name()
    breaker = OriginBreaker(name)
    limits = OriginLimits(name)
    queued = DownloadJob.objects.filter(pk=job_pk, status=Status.QUEUED).first()
    # A redelivered job (processing) goes on: its attempt had got past the limits and the breaker.
    if queued is not None:
        # Its last wait for the limits, from which the next one grows.
        waited_s = (
            (queued.next_retry_at - queued.updated_at).total_seconds()
            if queued.error_code == ErrorCode.ORIGIN_BUSY and queued.next_retry_at
            else 0.0
        )
        if busy := limits.take(job_id=queued.job_id, waited_s=waited_s):
            _wait_for_origin(queued, busy.wait_s, JobError(ErrorCode.ORIGIN_BUSY, busy.message), why=busy.why)
            return
        if (wait_s := breaker.allow()) is not None:
            limits.release(job_id=queued.job_id)
            countdown_s = wait_s * random.uniform(1.0, 1.0 + settings.JOB_RETRY_JITTER)  # noqa: S311 (jitter)
            message = "The origin is failing; waiting for it to recover"
            error = JobError(ErrorCode.TEMPORARY_UNAVAILABLE, message)
            _wait_for_origin(queued, countdown_s, error, why="the origin's circuit breaker")
            return
        limits.start_count()
    job = None
    try:
        # The row just read: its start is a compare-and-swap on it, so a change since is seen.
        job = download_job_start(job_pk=job_pk, task_id=task_id, row=queued)
    finally:
        if job is None and queued is not None:
            limits.release(job_id=queued.job_id)  # it did not start: its lease goes back
    if job is None:
        return
    # The attempt holds no connection while it waits on the origin and the store.
    connection_release()
    try:
        # Its lease runs from its start (a redelivered attempt keeps its own, or takes it back).
        limits.renew(job_id=job.job_id)
        staged = _attempt_run(job, deadline=deadline)
    except JobError as error:
        # The attempt has been ended (retry or fail) by _attempt_run; only the breaker
        # is left to tell.
        if error.origin_fault:
            breaker.record_failure()
        elif error.code not in (ErrorCode.STORAGE_ERROR, ErrorCode.STORAGE_FULL, ErrorCode.DOWNLOAD_TIMEOUT):
            breaker.record_success()  # the origin answered, if not with the file
        return
    finally:
        limits.release(job_id=job.job_id)  # the attempt has ended, however it ended
    if staged is not None:
        breaker.record_success()


def _wait_for_origin(job: DownloadJob, countdown_s: float, error: JobError, *, why: str) -> None:
    """Sends the queued job again in `countdown_s`, once the origin's limits or its
    breaker may let it through. Its attempt count stays: the origin, not the job, is
    the reason it waits; its row says why (`error`)."""
    now = timezone.now()
    fields = {
        "next_retry_at": now + timedelta(seconds=countdown_s),
        "error_code": error.code,
        "error_message": error.message,
        "error_retryable": True,
        "updated_at": now,
    }
    rows = DownloadJob.objects.filter(pk=job.pk, status=Status.QUEUED, attempts=job.attempts)
    with transaction.atomic():
        if not write(rows, job, **fields):
            return  # cancelled, or taken by another message meanwhile
        for name, value in fields.items():
            setattr(job, name, value)
        publish_on_commit(job, "status_update")
        dispatch_on_commit(job, countdown_s=countdown_s)
        on_commit(lambda: metrics.job_ended("held", error.code))
    logger.info("%s waits %.0f s for %s", job.job_id, countdown_s, why)


def _attempt_run(job: DownloadJob, *, deadline: Deadline | None = None) -> StagedFile | None:
    """Stages the file and completes, retries or fails the attempt. Returns the staged
    file if it completed; re-raises a JobError (after handling it) for the breaker.

    The attempt ends DOWNLOAD_TIMEOUT at its `deadline` (JOB_SOFT_TIME_LIMIT_S after its
    task started), kept by the staging itself: the thread pool has no Celery time limit.
    The prefork pool's soft time limit, at the same moment, interrupts a wait the
    staging could not."""
    attempt = job.attempts
    deadline = deadline or Deadline.after(settings.JOB_SOFT_TIME_LIMIT_S)
    if stored := complete_from_storage(job):
        return stored
    checkpoint = (
        Checkpoint(upload_id=job.upload_id, parts=_resumed_parts(job), validator=job.origin_validator)
        if job.upload_id
        else None
    )
    try:
        staged = stage_file(
            origin=get_origin(),
            file_id=job.file_id,
            key=job.storage_key,
            hooks=AttemptHooks(job),
            checkpoint=checkpoint,
            deadline=deadline,
        )
    except (JobCancelled, JobSuperseded):
        logger.info("%s attempt %s stopped: cancelled or superseded", job.job_id, attempt)
        progress_forget(job.job_id)
        return None
    except JobError as error:
        attempt_fail(job, attempt=attempt, error=error)
        raise
    except SoftTimeLimitExceeded:
        limit_s = settings.JOB_SOFT_TIME_LIMIT_S
        attempt_fail(
            job,
            attempt=attempt,
            error=JobError(ErrorCode.DOWNLOAD_TIMEOUT, f"File download exceeded {limit_s} s"),
        )
        return None
    except Exception:
        logger.exception("%s attempt %s failed unexpectedly", job.job_id, attempt)
        attempt_fail(
            job, attempt=attempt, error=JobError(ErrorCode.PROCESSING_ERROR, "Failed to process file")
        )
        return None
    download_job_complete(job=job, attempt=attempt, staged=staged)
    return staged


def _stored_file(job: DownloadJob) -> StagedFile | None:
    """The file an earlier attempt of the job committed to storage and recorded on the row
    (`before_commit`), if it is there, whole: its completion write was lost."""
    if not job.upload_id or job.file_size_bytes is None:
        return None
    try:
        if stored_file_size(job.storage_key) != job.file_size_bytes:
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


def complete_from_storage(job: DownloadJob) -> StagedFile | None:
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
            transition(
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
                resumed_bytes=staged.resumed_bytes,
                file_name=staged.file_name,
                file_size_bytes=staged.size,
                content_type=staged.content_type,
                sha256=staged.sha256,
                error_code="",
                error_message="",
                error_retryable=None,
            )
            publish_on_commit(job, "completed")
            hot_on_commit(job.job_id, "drop the attempt state", lambda: hotstate.run_forget(job.job_id))
            on_commit(lambda: metrics.job_completed(job, size=staged.size))
            hot_on_commit(job.job_id, "count the completion", lambda: completions.completion_record(job))
    except JobStateConflict:
        # Cancelled (or superseded) after the last chunk: the file must not stay behind,
        # unless the job completed with it, or goes on with the same key (its next attempt
        # completes with the stored file).
        job.refresh_from_db(fields=["status", "storage_key"])
        keeps_it = job.status in (Status.COMPLETED, *ACTIVE_STATUSES) and job.storage_key == staged.key
        if not keeps_it:
            stored_file_delete(staged.key)
        logger.info("%s attempt %s finished after it was cancelled or superseded", job.job_id, attempt)
    progress_forget(job.job_id)


def retry_delay_s(attempt: int) -> float:
    """Exponential backoff with jitter: 5, 10, 20 s ... by default, each +/- 20 %."""
    base = min(settings.JOB_RETRY_BACKOFF_MAX_S, settings.JOB_RETRY_BACKOFF_S * 2 ** (attempt - 1))
    jitter = settings.JOB_RETRY_JITTER
    return base * random.uniform(1 - jitter, 1 + jitter)  # noqa: S311 (jitter, not a secret)


def attempt_fail(job: DownloadJob, *, attempt: int, error: JobError, dead_letter: bool = False) -> None:
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
                transition(
                    job,
                    Status.QUEUED,
                    attempt=attempt,
                    next_retry_at=now + timedelta(seconds=delay_s),
                    **error_fields,
                )
                publish_on_commit(job, "status_update")
                # Its parts stay in Redis for the next attempt; this one may write no more.
                hot_on_commit(
                    job.job_id,
                    "fence off the attempt",
                    lambda: hotstate.run_fence(job.job_id, attempt=attempt),
                )
                dispatch_on_commit(job, countdown_s=delay_s)
                on_commit(lambda: metrics.job_ended("retried", error.code))
                logger.info(
                    "%s attempt %s failed with %s; retry in %.1f s", job.job_id, attempt, error.code, delay_s
                )
            else:
                exhausted = error.retryable or dead_letter
                key, upload_id = job.storage_key, job.upload_id
                transition(
                    job,
                    Status.FAILED,
                    attempt=attempt,
                    failed_at=now,
                    upload_id="",
                    dead_lettered_at=now if exhausted else None,
                    **error_fields,
                )
                # No attempt follows: nothing of the file may stay in storage.
                on_commit(lambda: upload_abort(key, upload_id, job.job_id))
                hot_on_commit(job.job_id, "drop the attempt state", lambda: hotstate.run_forget(job.job_id))
                publish_on_commit(job, "error")
                on_commit(lambda: metrics.job_ended("failed", error.code))
                logger.warning("%s failed with %s after %s attempt(s)", job.job_id, error.code, attempt)
    except JobStateConflict:
        logger.info("%s attempt %s failed after it was cancelled or superseded", job.job_id, attempt)
    progress_forget(job.job_id)
