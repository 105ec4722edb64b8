"""Maintenance that beat sends: retention (files, then rows) and the reaper of jobs whose
worker or message was lost."""

import base64
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from infra.redis import broker_client
from jobs import hotstate, metrics, queues
from jobs.errors import ErrorCode, JobError
from jobs.models import ACTIVE_STATUSES, DownloadJob, Status, can_transition
from jobs.selectors import iso
from jobs.services.attempt_end import complete_from_storage
from jobs.services.stored_files import upload_abort
from jobs.services.writes import (
    InvalidTransition,
    JobStateConflict,
    dispatch_on_commit,
    hot_on_commit,
    on_commit,
    progress_forget,
    publish_on_commit,
    transition,
    write,
)
from jobs.signals import job_finished_send
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
            with transaction.atomic():  # the expiry and what `job_finished` records with it
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


def download_jobs_reap(*, now: datetime | None = None, batch: int = 500) -> int:
    """Sends again the jobs the broker lost; returns how many it re-queued or failed.

    A processing job whose attempt beat last (in hot-state Redis) more than
    JOB_HEARTBEAT_STALE_S ago lost its worker. Before anything is sent, one Lua step that
    holds only while that heartbeat is still stale fences the attempt off, and a
    compare-and-swap on the attempt number moves the row back to queued (or to failed,
    dead-lettered, on its last attempt): the old attempt's next beat, part record, row
    write or completion is then refused, so it can never finish beside the new one. The
    new attempt starts from queued through the same compare-and-swap as any other message,
    so if the broker also redelivers the old message, exactly one of the two starts it and
    the other does nothing.

    A processing job with no heartbeat in Redis (Redis lost it, or the start's write of it
    was lost) is given one now: a live attempt beats again within JOB_HEARTBEAT_INTERVAL_S,
    a dead one is reaped a threshold later. While Redis cannot be read, no processing job
    is reaped.

    A queued job untouched for JOB_QUEUED_STALE_S (and not waiting for a retry) is sent
    again; a duplicate message is harmless for the same reason.

    Last, the broker's unacknowledged messages of jobs that ended are dropped (see
    `_unacked_of_ended_jobs_drop`)."""
    now = now or timezone.now()
    queued_cutoff = now - timedelta(seconds=settings.JOB_QUEUED_STALE_S)
    stale_before = now.timestamp() - settings.JOB_HEARTBEAT_STALE_S
    reaped = 0
    try:
        stalled = _stalled(stale_before=stale_before, batch=batch)
    except redis.RedisError:
        logger.warning("Cannot read heartbeats from Redis; no processing job is reaped now", exc_info=True)
        stalled = []
    for job, beat in stalled:
        reaped += _reap_stalled(
            job, last_beat=beat, stale_before=now.timestamp() - settings.JOB_HEARTBEAT_STALE_S
        )
    lost = DownloadJob.objects.filter(status=Status.QUEUED, updated_at__lt=queued_cutoff).filter(
        Q(next_retry_at__isnull=True) | Q(next_retry_at__lt=queued_cutoff)
    )
    for job in lost.order_by("pk")[:batch]:
        reaped += _reap_lost(job)
    try:
        _unacked_of_ended_jobs_drop(batch=batch)
    except redis.RedisError:
        logger.warning("Cannot read the broker's unacknowledged messages now", exc_info=True)
    return reaped


def _transport_key(option: str, default: str) -> str:
    """The name of one of kombu's keys in the broker, as its transport options set it."""
    return str(settings.CELERY_BROKER_TRANSPORT_OPTIONS.get(option, default))


def _stage_job_pk(raw: bytes | str) -> int | None:
    """The job of an attempt's message as kombu's Redis transport keeps it unacknowledged
    (`[payload, exchange, routing_key]`, the body base64 of Celery's `[args, kwargs,
    embed]`); None for any other message."""
    try:
        payload = json.loads(raw)[0]
        if payload["headers"]["task"] != queues.STAGE_TASK:
            return None
        body = payload["body"]
        if payload["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        return int(json.loads(body)[0][0])
    except (ValueError, TypeError, KeyError, IndexError):
        return None


def _unacked_of_ended_jobs_drop(*, batch: int) -> int:
    """Drops the broker's unacknowledged attempt messages of jobs that ended; returns how
    many.

    A message delivered to a worker waits in kombu's `unacked` hash until the worker
    acknowledges it. When the broker's Redis restarts (with its append-only file) while
    attempts run, their workers lose the connection and end those attempts, and the copy
    that would hand each message back is made over the connection that is gone: the
    messages stay there, unacknowledged, until the visibility timeout (an hour or more)
    delivers them again, long after the reaper has sent their jobs again and they
    completed. A message of a job that ended can do nothing (an attempt starts only from
    an active job), so it is dropped here, from the hash and its index at once, as an
    acknowledgement would. A message of an active job is left alone: it may be running;
    so is one whose row this database does not hold (the visibility timeout returns it,
    and its delivery does nothing)."""
    client = broker_client()
    unacked = _transport_key("unacked_key", "unacked")
    index = _transport_key("unacked_index_key", "unacked_index")
    by_job: dict[int, list[bytes]] = {}
    for tag, raw in client.hscan_iter(unacked, count=batch):
        if (job_pk := _stage_job_pk(raw)) is not None:
            by_job.setdefault(job_pk, []).append(tag)
        if len(by_job) >= batch:
            break
    if not by_job:
        return 0
    ended_jobs = DownloadJob.objects.filter(pk__in=by_job).exclude(status__in=ACTIVE_STATUSES)
    ended = [tag for job_pk in ended_jobs.values_list("pk", flat=True) for tag in by_job[job_pk]]
    if not ended:
        return 0
    pipe = client.pipeline(transaction=True)
    pipe.zrem(index, *ended)
    pipe.hdel(unacked, *ended)
    pipe.execute()
    logger.info("Dropped %s unacknowledged message(s) of jobs that ended from the broker", len(ended))
    return len(ended)


def _stalled(*, stale_before: float, batch: int) -> list[tuple[DownloadJob, float]]:
    """The processing jobs whose attempt beat last before `stale_before`, with that beat
    (at most `batch`). Every processing job is looked at, a page at a time."""
    found: list[tuple[DownloadJob, float]] = []
    running = DownloadJob.objects.filter(status=Status.PROCESSING).values_list("pk", "job_id", "attempts")
    page: list[tuple[int, str, int]] = []
    for row in running.order_by("pk").iterator(chunk_size=batch):
        page.append(row)
        if len(page) == batch:
            found += _stalled_in(page, stale_before=stale_before)
            page = []
        if len(found) >= batch:
            return found[:batch]
    return (found + _stalled_in(page, stale_before=stale_before))[:batch]


def _stalled_in(page: list[tuple[int, str, int]], *, stale_before: float) -> list[tuple[DownloadJob, float]]:
    states = hotstate.run_read_many([job_id for _, job_id, _ in page])
    stale: dict[int, float] = {}
    for pk, job_id, attempts in page:
        state = states.get(job_id)
        if state is None or state.attempt < attempts:
            # No heartbeat of this attempt: it gets one now, and a threshold to beat again.
            hotstate.run_beat(job_id, attempt=attempts)
        elif state.attempt == attempts and (state.beat < stale_before or not state.live):
            stale[pk] = state.beat
    jobs = DownloadJob.objects.filter(pk__in=stale, status=Status.PROCESSING).order_by("pk")
    return [(job, stale[job.pk]) for job in jobs]


def _reap_stalled(job: DownloadJob, *, last_beat: float, stale_before: float) -> int:
    if complete_from_storage(job):
        return 1  # its attempt stored the file but could not complete
    now = timezone.now()
    # An attempt that still beat past the job time limit was ended by Celery's hard limit
    # (its soft-limit handler never ran; Celery acks such a task as failed): it fails
    # DOWNLOAD_TIMEOUT, as it would have, instead of running past the limit again.
    ran_s = last_beat - job.started_at.timestamp() if job.started_at else 0
    timed_out = ran_s >= settings.JOB_SOFT_TIME_LIMIT_S
    last_attempt = job.attempts >= job.max_attempts or timed_out
    to_status = Status.FAILED if last_attempt else Status.QUEUED
    if not can_transition(job.status, to_status):
        raise InvalidTransition(job, to_status)
    # Re-queued, the job keeps its upload (and Redis the parts) for the next attempt to
    # resume; the fence refuses whatever the old attempt still tries to record or complete.
    fields: dict[str, Any] = {"next_retry_at": None}
    error = JobError(ErrorCode.PROCESSING_ERROR, "The worker stopped during the last attempt")
    if timed_out:
        error = JobError(
            ErrorCode.DOWNLOAD_TIMEOUT, f"File download exceeded {settings.JOB_SOFT_TIME_LIMIT_S} s"
        )
    if last_attempt:
        fields |= {
            "upload_id": "",
            "failed_at": now,
            "dead_lettered_at": None if timed_out else now,
            "error_code": error.code,
            "error_message": error.message,
            "error_retryable": error.retryable,
        }
    if not hotstate.run_fence(job.job_id, attempt=job.attempts, stale_before=stale_before):
        return 0  # it beat meanwhile, or a newer attempt holds the job
    leftover_key, leftover_upload_id = job.storage_key, job.upload_id
    rows = DownloadJob.objects.filter(pk=job.pk, status=Status.PROCESSING, attempts=job.attempts)
    with transaction.atomic():
        if not write(rows, job, status=to_status, updated_at=now, **fields):
            return 0  # it moved on (completed, failed, cancelled) before the fence
        job.status = to_status
        for name, value in fields.items():
            setattr(job, name, value)
        if last_attempt:
            job_finished_send(job)
            publish_on_commit(job, "error")
            hot_on_commit(job.job_id, "drop the attempt state", lambda: hotstate.run_forget(job.job_id))
            on_commit(lambda: metrics.job_ended("failed", error.code))
        else:
            publish_on_commit(job, "status_update")
            dispatch_on_commit(job)
    if last_attempt:
        upload_abort(leftover_key, leftover_upload_id, job.job_id)
    progress_forget(job.job_id)
    logger.warning(
        "%s attempt %s sent no heartbeat since %s: %s",
        job.job_id,
        job.attempts,
        iso(datetime.fromtimestamp(last_beat, tz=UTC)),
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
