"""Maintenance that beat sends: retention (files, then rows) and the reaper of jobs whose
worker or message was lost."""

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from jobs import hotstate
from jobs.errors import ErrorCode, JobError
from jobs.models import DownloadJob, Status, can_transition
from jobs.ops import metrics
from jobs.selectors import iso
from jobs.services.attempt import complete_from_storage
from jobs.services.writes import (
    InvalidTransition,
    JobStateConflict,
    dispatch_on_commit,
    on_commit,
    publish_on_commit,
    transition,
    upload_abort,
    write,
)
from jobs.transfer.storage import stored_file_delete

logger = logging.getLogger(__name__)


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
            transition(job, Status.EXPIRED)
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
    if complete_from_storage(job):
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
        if not write(rows, job, status=to_status, updated_at=now, **fields):
            return 0  # it wrote a heartbeat meanwhile, or moved on
        job.status = to_status
        for name, value in fields.items():
            setattr(job, name, value)
        if last_attempt:
            publish_on_commit(job, "error")
            on_commit(lambda: metrics.job_ended("failed", error.code))
        else:
            publish_on_commit(job, "status_update")
            dispatch_on_commit(job)
    if last_attempt:
        upload_abort(leftover_key, leftover_upload_id, job.job_id)
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
        if not write(rows, job, updated_at=timezone.now()):
            return 0
        dispatch_on_commit(job)
    logger.warning("%s queued since %s and no worker took it: sent again", job.job_id, iso(job.updated_at))
    return 1
