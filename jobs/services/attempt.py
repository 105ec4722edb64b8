"""The worker's side: one attempt of a job, from its start through staging, and what the
origin's limits and circuit breaker decide before it. How the attempt ends (completed,
retried, failed) is jobs/services/attempt_end.py."""

import logging
import random
from datetime import timedelta

import redis
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs import hotstate, metrics
from jobs.errors import ErrorCode, JobCancelled, JobError, JobSuperseded
from jobs.models import ACTIVE_STATUSES, AttemptOutcome, DownloadJob, Status
from jobs.parts import StoredPart
from jobs.services.attempt_end import (
    attempt_fail,
    committed_file,
    download_job_complete,
    download_job_complete_stored,
)
from jobs.services.attempt_hooks import AttemptHooks
from jobs.services.attempt_log import attempt_log_end, attempt_log_start
from jobs.services.stored_files import storage_key_for, upload_abort
from jobs.services.writes import (
    JobStateConflict,
    connection_release,
    dispatch_on_commit,
    hot_on_commit,
    on_commit,
    progress_forget,
    publish_on_commit,
    transition,
)
from jobs.transfer.breaker import OriginBreaker, origin_breaker_name
from jobs.transfer.deadline import Deadline
from jobs.transfer.origin_limits import OriginLimits
from jobs.transfer.origins import get_origin
from jobs.transfer.staging import Checkpoint, StagedFile, stage_file

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
    caller just read it, if it did.

    A job whose earlier attempt committed its file and recorded it on the row, but whose
    completion write was lost, completes here with the stored file, without a byte from
    the origin: at once if it was processing, after the start of its new attempt if it was
    queued again. Then there is nothing left to run, and this returns None too."""
    job = row if row is not None else DownloadJob.objects.filter(pk=job_pk).first()
    if job is None:
        return None
    taken = _attempt_take(job, task_id=task_id)
    return taken if isinstance(taken, DownloadJob) else None


def _attempt_take(job: DownloadJob, *, task_id: str) -> DownloadJob | StagedFile | None:
    """`download_job_start` on the row as read: the started job, or the stored file the
    job completed with, or None."""
    if job.status not in ACTIVE_STATUSES:
        return None
    redelivered = job.status == Status.PROCESSING
    if redelivered and job.task_id and task_id and job.task_id != task_id:
        return None
    stored = committed_file(job)
    if redelivered and stored is None and job.attempts >= job.max_attempts:
        attempt_fail(
            job,
            attempt=job.attempts,
            error=JobError(ErrorCode.PROCESSING_ERROR, "The worker stopped during the last attempt"),
            dead_letter=True,
        )
        return None
    # A redelivered attempt that stored its file completes as the attempt it is.
    if not (redelivered and stored is not None) and not _attempt_begin(job, task_id=task_id):
        return None
    if stored is not None:
        return download_job_complete_stored(job=job, staged=stored)
    return job


def _attempt_begin(job: DownloadJob, *, task_id: str) -> bool:
    """Moves the job to processing as its next attempt; False if the row changed since it
    was read (cancelled, or started by another message)."""
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
    taken_over = job.status == Status.PROCESSING
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
            attempt_log_start(job=job, started_at=now, taken_over=taken_over)
            publish_on_commit(job, "status_update")
            hot_on_commit(job.job_id, "claim the attempt", lambda: _claim(job, parts if resumable else ()))
            on_commit(lambda: metrics.attempt_started(due_since=due_since, started_at=now))
    except JobStateConflict:
        return False
    return True


def _stored_parts(job: DownloadJob, *, attempts: tuple[int, ...]) -> tuple[StoredPart, ...]:
    """The parts that the job's attempt `attempts` stored, as it recorded them in Redis.
    Empty if that state was lost or cannot be read: the file then restarts from zero."""
    try:
        state = hotstate.run_read(job.job_id)
    except redis.RedisError:
        logger.warning("Could not read the stored parts of %s; its file restarts", job.job_id, exc_info=True)
        return ()
    return state.parts if state is not None and state.attempt in attempts else ()


def _resumed_parts(job: DownloadJob) -> tuple[StoredPart, ...]:
    """The parts the started attempt resumes after: those its start claimed, or the last
    attempt's if that claim was lost."""
    return _stored_parts(job, attempts=(job.attempts, job.attempts - 1))


def _claim(job: DownloadJob, parts: tuple[StoredPart, ...]) -> None:
    """The new attempt takes the job over in Redis, fencing off the attempt before it;
    its first heartbeat does the same if this write is lost."""
    hotstate.run_beat(job.job_id, attempt=job.attempts, parts=parts)


def download_job_run(*, job_pk: int, task_id: str = "", breaker: OriginBreaker | None = None) -> None:
    """One attempt of a job: start it, stage the file, then complete, retry or fail.

    A queued job starts only if the origin's limits (jobs/transfer/origin_limits.py) and
    its circuit breaker let it: otherwise it waits, queued, without using up an attempt.
    The limits are asked first, so that a job they hold back never takes the breaker's
    half-open probe. The running attempt holds its in-flight lease until it ends, however
    it ends. The attempt's outcome is reported to the breaker: a failure of the origin's
    (network, 5xx, timeout, 429, and a time limit the origin's slowness spent) counts
    against it, any answer of the origin's (a file, a 404) for it. `breaker` is the origin's
    (a test gives one with its own clock).

    The job's row is read once: what the limits decide and the attempt's start (a
    compare-and-swap on the row as read here, so a change since is seen) both work on it."""
    deadline = Deadline.after(settings.JOB_SOFT_TIME_LIMIT_S)
    name = origin_breaker_name()
    breaker = breaker or OriginBreaker(name)
    limits = OriginLimits(name)
    row = DownloadJob.objects.filter(pk=job_pk).first()
    if row is None:
        return
    queued = row if row.status == Status.QUEUED else None
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
    taken = None
    try:
        taken = _attempt_take(row, task_id=task_id)
    finally:
        if not isinstance(taken, DownloadJob) and queued is not None:
            limits.release(job_id=queued.job_id)  # it did not start: its lease goes back
    if isinstance(taken, StagedFile) and queued is not None:
        # The origin sent the file to an earlier attempt, whose completion (and its report
        # to the breaker) was lost.
        breaker.record_success()
    if not isinstance(taken, DownloadJob):
        return
    job = taken
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
    try:
        with transaction.atomic():
            # `next_retry_at - updated_at` is this wait: the next one grows from it.
            transition(
                job,
                Status.QUEUED,
                attempt=job.attempts,
                updated_at=now,
                next_retry_at=now + timedelta(seconds=countdown_s),
                error_code=error.code,
                error_message=error.message,
                error_retryable=True,
            )
            publish_on_commit(job, "status_update")
            dispatch_on_commit(job, countdown_s=countdown_s)
            on_commit(lambda: metrics.job_ended("held", error.code))
    except JobStateConflict:
        return  # cancelled, or taken by another message meanwhile
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
    checkpoint = (
        Checkpoint(upload_id=job.upload_id, parts=_resumed_parts(job), validator=job.origin_validator)
        if job.upload_id
        else None
    )
    hooks = AttemptHooks(job)
    try:
        staged = stage_file(
            origin=get_origin(),
            file_id=job.file_id,
            key=job.storage_key,
            hooks=hooks,
            checkpoint=checkpoint,
            deadline=deadline,
        )
    except (JobCancelled, JobSuperseded) as stop:
        logger.info("%s attempt %s stopped: cancelled or superseded", job.job_id, attempt)
        outcome = AttemptOutcome.CANCELLED if isinstance(stop, JobCancelled) else AttemptOutcome.LOST
        attempt_log_end(job_pk=job.pk, number=attempt, outcome=outcome, bytes_done=hooks.bytes_done)
        progress_forget(job.job_id)
        return None
    except JobError as error:
        attempt_fail(job, attempt=attempt, error=error, bytes_done=hooks.bytes_done)
        raise
    except SoftTimeLimitExceeded:
        limit_s = settings.JOB_SOFT_TIME_LIMIT_S
        attempt_fail(
            job,
            attempt=attempt,
            error=JobError(ErrorCode.DOWNLOAD_TIMEOUT, f"File download exceeded {limit_s} s"),
            bytes_done=hooks.bytes_done,
        )
        return None
    except Exception:
        logger.exception("%s attempt %s failed unexpectedly", job.job_id, attempt)
        attempt_fail(
            job,
            attempt=attempt,
            error=JobError(ErrorCode.PROCESSING_ERROR, "Failed to process file"),
            bytes_done=hooks.bytes_done,
        )
        return None
    download_job_complete(job=job, attempt=attempt, staged=staged)
    return staged
