"""Reads: finding a user's jobs, describing them as the API and the events do, and
estimating how long a new one will take."""

import logging
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.utils import timezone

from jobs import completions, hotstate, queue_line
from jobs.hotstate import HotProgress, JobCard
from jobs.models import ACTIVE_STATUSES, DownloadJob, Status
from jobs.ops.broker import PRIORITIES, queue_depths
from jobs.transfer.content_headers import attachment_disposition, safe_content_type
from jobs.transfer.storage import downloads_storage

logger = logging.getLogger(__name__)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a `Z`, to the millisecond, as docs/api.md writes timestamps."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def download_job_get_for_owner(*, owner: User, job_id: str) -> DownloadJob:
    """Raises DownloadJob.DoesNotExist for an unknown job and for another user's job alike."""
    return DownloadJob.objects.get(job_id=job_id, owner=owner)


def download_job_card_from_row(**where: Any) -> JobCard | None:
    """The card of the one job row matching `where`, read from the database (one query)."""
    values = DownloadJob.objects.filter(**where).values(*hotstate.card_fields()).first()
    return None if values is None else JobCard(**values)


def download_job_card_for_owner(*, owner_id: int, job_id: str) -> tuple[JobCard, HotProgress | None]:
    """The job's card and, while it is processing, its live progress: what its status
    answer is made of. From hot-state Redis in one round trip; from the row (which then
    writes the card again) when Redis has no card of the job or cannot be reached.
    Raises DownloadJob.DoesNotExist for an unknown job and for another user's job alike."""
    reachable = True
    try:
        card, hot = hotstate.card_read(job_id)
    except redis.RedisError as error:
        logger.warning("Hot state unreachable, reading %s from the database: %s", job_id, error)
        card, hot, reachable = None, None, False
    if card is None:
        card = download_job_card_from_row(job_id=job_id)
        if card is None:
            raise DownloadJob.DoesNotExist
        if reachable:
            try:
                hotstate.card_write(card)
            except redis.RedisError:
                logger.warning("Could not write the card of %s", job_id, exc_info=True)
    if card.owner_id != owner_id:
        raise DownloadJob.DoesNotExist
    return card, (hot if card.status == Status.PROCESSING else None)


# The same Idempotency-Key from the same user within this window gives the same job.
IDEMPOTENCY_WINDOW = timedelta(hours=24)


def download_job_for_idempotency_key(*, owner: User, key: str) -> DownloadJob | None:
    """The job that `key` made for `owner` within the idempotency window, if any."""
    since = timezone.now() - IDEMPOTENCY_WINDOW
    return DownloadJob.objects.filter(owner=owner, idempotency_key=key, created_at__gte=since).first()


def download_job_list_for_owner(*, owner: User, status: str | None) -> QuerySet[DownloadJob]:
    jobs = DownloadJob.objects.filter(owner=owner)
    if status == "active":
        jobs = jobs.filter(status__in=ACTIVE_STATUSES)
    elif status:
        jobs = jobs.filter(status=status)
    return jobs.order_by("-created_at", "-id")


def download_job_estimate_s(
    *,
    job: DownloadJob | JobCard,
    now_s: float | None = None,
    ahead: int | None = None,
    recent: completions.RecentCompletions | None = None,
) -> int:
    """Seconds until the job is likely to have completed, as initiate answers it: the wait
    for a worker (the jobs ahead of it over the rate at which jobs complete) plus the time
    one job takes (the mean duration of recent completions). JOB_DEFAULT_ESTIMATE_S while
    no job completed within JOB_ESTIMATE_WINDOW_S, or when Redis cannot tell; 0 for a job
    that has ended (a reused file completes it at once).

    Ahead of a queued job are the messages waiting in its priority's queue and in the
    higher ones, which a worker serves first (`queue_order_strategy`), less the job's own:
    the broker's lists, read in one round trip (`jobs.ops.broker.queue_depths`), where a
    count of queued rows would cost more as the backlog grows, just when the estimate
    matters. Attempts already running are not counted (the completion rate is how fast
    they free their slots), nor jobs waiting for a retry or the circuit breaker (workers
    hold those until they are due). A job that waits for its own retry waits until it is
    due. Jobs sent later to a higher queue still go first: the estimate cannot know them.

    The rate is the completions counted in hot-state Redis (`completions.completions_read`)
    over the time they cover: the window, or, when the oldest completion in it is more
    recent, from one mean duration before that completion (when the jobs that made it
    started). So after a quiet spell the first completions of a burst do not read as a
    slow rate; after a spell of sparse completions the rate reads low, and the estimate
    high, until the window has passed.

    `ahead` and `recent`, when the caller has them (`download_job_queue_place`, from the
    line's snapshot), replace the broker's count and the read of the completions."""
    if job.status not in ACTIVE_STATUSES:
        return 0
    now_s = time.time() if now_s is None else now_s
    try:
        if recent is None:
            recent = completions.completions_read(now_s=now_s)
        if not recent.count or recent.first_bucket_s is None:
            return settings.JOB_DEFAULT_ESTIMATE_S
        mean_s = recent.seconds / recent.count
        if job.status == Status.QUEUED and job.next_retry_at is not None:
            return math.ceil(max(0.0, job.next_retry_at.timestamp() - now_s) + mean_s)
        if ahead is None:
            ahead = _jobs_ahead(job.priority) if job.status == Status.QUEUED else 0
    except redis.RedisError as error:
        logger.warning("Cannot estimate the wait (%s); answering the default estimate", error)
        return settings.JOB_DEFAULT_ESTIMATE_S
    covered_s = max(1.0, min(settings.JOB_ESTIMATE_WINDOW_S, now_s - recent.first_bucket_s + mean_s))
    wait_s = ahead * covered_s / recent.count  # ahead over the rate, count / covered_s
    return math.ceil(wait_s + mean_s)


def _jobs_ahead(priority: str) -> int:
    """Messages waiting in the queues served before or with `priority`'s, less one: the
    job's own, sent when its row committed."""
    depths = queue_depths()
    served_first = PRIORITIES[: PRIORITIES.index(priority) + 1]
    return max(0, sum(depths[name] for name in served_first) - 1)


def download_job_queue_place(*, job: DownloadJob | JobCard, now_s: float | None = None) -> dict[str, int]:
    """`queue_position` (1 is next) and `estimated_time` of a job waiting for its first
    turn, or `{}` for any other (a job waiting for a retry or for the origin has its
    `next_retry_at` instead). Ahead of it are the queued jobs of a higher priority, and
    those of its own that came first (jobs waiting for a retry are not in line): read from
    the line's snapshot in hot-state Redis (`jobs.queue_line`), which one request reads
    again from the database at most every QUEUE_LINE_MAX_AGE_S, not with a query per poll.
    `{}` too when Redis cannot be reached, or while the first snapshot is being built: the
    status answer leaves the place out rather than fail. Not part of
    `download_job_status`, which events and lists build without a query: the status answer
    and a socket's snapshot add it."""
    if job.status != Status.QUEUED or job.next_retry_at is not None:
        return {}
    now_s = time.time() if now_s is None else now_s
    try:
        place = queue_line.queue_line_place(priority=job.priority, created_at=job.created_at, now_s=now_s)
    except redis.RedisError as error:
        logger.warning("Hot state unreachable, answering %s without its place: %s", job.job_id, error)
        return {}
    if place is None:
        return {}
    return {
        "queue_position": place.ahead + 1,
        "estimated_time": download_job_estimate_s(
            job=job, now_s=now_s, ahead=place.ahead, recent=place.recent
        ),
    }


def download_job_hot(jobs: list[DownloadJob]) -> dict[str, HotProgress]:
    """Live progress of the jobs that are processing, from Redis, in one round trip."""
    return hotstate.progress_read_many([job.job_id for job in jobs if job.status == Status.PROCESSING])


def _merged_progress(job: JobCard, hot: HotProgress | None) -> tuple[int, int, int | None]:
    if job.status == Status.COMPLETED:
        return 100, job.file_size_bytes or job.bytes_done, job.file_size_bytes
    if hot is not None and hot.attempt == job.attempts and hot.bytes_done >= job.bytes_done:
        return hot.progress, hot.bytes_done, hot.bytes_total
    return job.progress, job.bytes_done, job.bytes_total


def download_job_status(*, job: DownloadJob | JobCard, hot: HotProgress | None) -> dict[str, Any]:
    """The status object of the API: the row (or its card) merged with the hot progress."""
    if isinstance(job, DownloadJob):
        job = JobCard.of(job)
    progress, bytes_done, bytes_total = _merged_progress(job, hot)
    data: dict[str, Any] = {
        "job_id": job.job_id,
        "file_id": job.file_id,
        "priority": job.priority,
        "status": job.status,
        "progress": progress,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
    }
    if job.status == Status.PROCESSING:
        data["bytes_done"] = bytes_done
        data["bytes_total"] = bytes_total
        data["estimated_completion"] = iso(_estimated_completion(job, bytes_done, bytes_total))
    elif job.status == Status.COMPLETED:
        # The API path (docs/api.md), written out: reverse() would import the whole URLconf
        # (every view, boto3 through the probes) into a worker's pool child for one string.
        data["download_url"] = f"/v1/download/{job.job_id}"
        data["expires_at"] = iso(job.expires_at)
        data["file_name"] = job.file_name
        data["file_size"] = job.file_size_bytes
    if job.error_code and job.status in (Status.FAILED, Status.QUEUED):
        data["error"] = {
            "code": job.error_code,
            "message": job.error_message,
            "retryable": bool(job.error_retryable),
        }
    # Queued after a failed attempt, or waiting for the origin's circuit breaker.
    if job.status == Status.QUEUED and (job.attempts or job.next_retry_at):
        data["attempts"] = job.attempts
        data["next_retry_at"] = iso(job.next_retry_at)
    return data


def _estimated_completion(job: JobCard, bytes_done: int, bytes_total: int | None) -> datetime | None:
    if job.started_at is None or not bytes_total or not bytes_done:
        return None
    now = timezone.now()
    elapsed_s = (now - job.started_at).total_seconds()
    return now + timedelta(seconds=elapsed_s * (bytes_total - bytes_done) / bytes_done)


def download_job_link(*, job: DownloadJob) -> dict[str, Any]:
    """A fresh presigned URL of a completed job's file: every call mints a new one."""
    ttl_s = settings.PRESIGNED_URL_TTL_S
    storage: Any = downloads_storage()  # S3Storage or SignedFileSystemStorage: both take these
    url = storage.url(
        job.storage_key,
        parameters={
            "ResponseContentDisposition": attachment_disposition(job.file_name),
            "ResponseContentType": safe_content_type(job.content_type),
        },
        expire=ttl_s,
    )
    return {
        "download_url": url,
        "expires_at": iso(timezone.now() + timedelta(seconds=ttl_s)),
        "retained_until": iso(job.expires_at),
        "file_name": job.file_name,
        "file_size": job.file_size_bytes,
        "content_type": job.content_type,
        "sha256": job.sha256,
    }
