"""What a user or an operator does to a job: cancel it, retry it."""

import logging
from typing import Any

import redis
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs import hotstate, metrics
from jobs.models import AttemptOutcome, DownloadJob, Status
from jobs.services.attempt_log import attempt_log_end
from jobs.services.stored_files import upload_abort
from jobs.services.writes import (
    InvalidTransition,
    dispatch_on_commit,
    hot_on_commit,
    on_commit,
    publish_on_commit,
    transition,
)

logger = logging.getLogger(__name__)


def download_job_cancel(*, job: DownloadJob) -> DownloadJob:
    """Cancels a queued or processing job. A processing worker sees the flag within one
    chunk, aborts its upload and leaves nothing in storage. The job keeps the progress it
    stopped at."""
    key, upload_id = job.storage_key, job.upload_id
    running = job.status == Status.PROCESSING
    now = timezone.now()
    with transaction.atomic():
        transition(
            job,
            Status.CANCELLED,
            cancelled_at=now,
            next_retry_at=None,
            upload_id="",
            **_progress_reached(job),
        )
        if running:  # its worker, if it is still there, has nothing more to say
            attempt_log_end(
                job_pk=job.pk, number=job.attempts, outcome=AttemptOutcome.CANCELLED, ended_at=now
            )
        on_commit(lambda: hotstate.cancel_flag_set(job.job_id))
        hot_on_commit(
            job.job_id, "fence off the attempt", lambda: hotstate.run_fence(job.job_id, attempt=job.attempts)
        )
        # A job waiting for its retry keeps the upload of its last attempt: no worker
        # holds it, so it is aborted here (a running worker aborts its own as well).
        on_commit(lambda: upload_abort(key, upload_id, job.job_id))
        publish_on_commit(job, "cancelled")
        on_commit(lambda: metrics.job_ended("cancelled"))
    return job


def _progress_reached(job: DownloadJob) -> dict[str, Any]:
    """A processing job's live progress, as row fields: its attempt keeps it in hot-state
    Redis only, and drops it when it stops. Without Redis, the row's own (its attempt's
    start) stands: a cancel never waits for, or fails on, the hot state."""
    if job.status != Status.PROCESSING:
        return {}
    try:
        hot = hotstate.progress_read_many([job.job_id]).get(job.job_id)
    except redis.RedisError:
        logger.warning("Could not read the progress of %s at its cancel", job.job_id, exc_info=True)
        return {}
    if hot is None or hot.attempt != job.attempts or hot.bytes_done < job.bytes_done:
        return {}
    reached: dict[str, Any] = {"progress": hot.progress, "bytes_done": hot.bytes_done}
    if hot.bytes_total is not None:
        reached["bytes_total"] = hot.bytes_total
    return reached


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
        transition(
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
            error_code="",
            error_message="",
            error_retryable=None,
        )
        on_commit(lambda: hotstate.cancel_flag_clear(job.job_id))
        hot_on_commit(job.job_id, "drop the attempt state", lambda: hotstate.run_forget(job.job_id))
        publish_on_commit(job, "status_update")
        dispatch_on_commit(job)
    return job
