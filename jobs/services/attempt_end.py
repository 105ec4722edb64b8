"""How an attempt ends: completed with its stored file, queued again after a backoff, or
failed (dead-lettered once its retries are spent). Also the completion of a job whose
file an earlier attempt stored but could not record as complete: the next attempt's start
and the reaper both find it here."""

import logging
import random
import time
from datetime import timedelta

from django import db
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs import completions, hotstate, metrics
from jobs.errors import JobError
from jobs.models import ACTIVE_STATUSES, AttemptOutcome, DownloadJob, Status
from jobs.services.attempt_log import attempt_log_end
from jobs.services.stored_files import upload_abort
from jobs.services.writes import (
    JobStateConflict,
    dispatch_on_commit,
    hot_on_commit,
    on_commit,
    progress_forget,
    publish_on_commit,
    transition,
)
from jobs.transfer.staging import StagedFile
from jobs.transfer.storage import stored_file_delete, stored_file_sha256, stored_file_size

logger = logging.getLogger(__name__)


def committed_file(job: DownloadJob) -> StagedFile | None:
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
    without a byte from the origin (the reaper's check of a silent attempt). Returns the
    file if the job completed with it (by this call or another)."""
    staged = committed_file(job)
    return download_job_complete_stored(job=job, staged=staged) if staged is not None else None


def download_job_complete_stored(*, job: DownloadJob, staged: StagedFile) -> StagedFile | None:
    """Completes the processing job with `staged`, the file `committed_file` found. Returns
    it if the job completed with it (by this call or another)."""
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
            attempt_log_end(
                job_pk=job.pk,
                number=attempt,
                outcome=AttemptOutcome.COMPLETED,
                bytes_done=staged.size,
                ended_at=now,
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


def attempt_fail(
    job: DownloadJob, *, attempt: int, error: JobError, dead_letter: bool = False, bytes_done: int = 0
) -> None:
    """Ends an attempt that failed: queued again after a backoff if the error is
    retryable and attempts remain, otherwise failed (dead-lettered if it was retryable).
    `bytes_done`: how far the attempt got, for its history."""
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
                attempt_log_end(
                    job_pk=job.pk,
                    number=attempt,
                    outcome=AttemptOutcome.RETRIED,
                    error_code=error.code,
                    bytes_done=bytes_done,
                    ended_at=now,
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
                attempt_log_end(
                    job_pk=job.pk,
                    number=attempt,
                    outcome=AttemptOutcome.FAILED,
                    error_code=error.code,
                    bytes_done=bytes_done,
                    ended_at=now,
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
