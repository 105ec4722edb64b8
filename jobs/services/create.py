"""Creating a job: limits, idempotency, and reuse of a file already stored."""

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from jobs import metrics
from jobs.models import ACTIVE_STATUSES, DownloadJob, Priority, Status
from jobs.selectors import download_job_for_idempotency_key
from jobs.services.writes import (
    card_replace_on_commit,
    dispatch_on_commit,
    on_commit,
    publish_on_commit,
    write,
)
from jobs.signals import job_created_send, job_finished_send
from jobs.transfer.storage import downloads_storage

logger = logging.getLogger(__name__)


class ActiveLimitExceeded(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"Maximum {limit} concurrent downloads per user")
        self.limit = limit


def download_job_create(
    *,
    owner: User,
    file_id: int,
    priority: str = Priority.NORMAL,
    metadata: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    notify: Sequence[str] | None = None,
    webhook_id: str = "",
) -> tuple[DownloadJob, bool]:
    """Creates a queued job and dispatches it, or returns the job that the same
    idempotency key made within 24 hours. Returns (job, created).

    A file that a job staged and that is still retained (see JOB_REUSE) is not fetched
    again: the new job is created completed, pointing at the stored object.

    `notify` (what the initiate body asked to be told of the job's end; None: the user's
    default) goes to the receivers of `job_created`, in this transaction."""
    with transaction.atomic():
        # Locking the owner's row serialises this user's initiates, so parallel requests
        # cannot all pass the active-jobs check.
        User.objects.select_for_update().filter(pk=owner.pk).first()
        if idempotency_key:
            if existing := download_job_for_idempotency_key(owner=owner, key=idempotency_key):
                return existing, False
            # An older job of the key gives it up, for the unique constraint.
            if existing := DownloadJob.objects.filter(owner=owner, idempotency_key=idempotency_key).first():
                write(
                    DownloadJob.objects.filter(pk=existing.pk),
                    existing,
                    idempotency_key="",
                    updated_at=timezone.now(),
                )
        if source := _reusable_job(owner=owner, file_id=file_id):
            job = _create_reused(owner, source, priority, metadata, idempotency_key, webhook_id)
            job_created_send(job, notify=notify)
            return job, True
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
                    webhook_id=webhook_id,
                )
        except IntegrityError:
            if not idempotency_key:
                raise
            return DownloadJob.objects.get(owner=owner, idempotency_key=idempotency_key), False
        card_replace_on_commit(job)
        dispatch_on_commit(job)
        on_commit(lambda: metrics.job_created(job.priority))
        job_created_send(job, notify=notify)
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
    webhook_id: str,
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
        webhook_id=webhook_id,
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
    card_replace_on_commit(job)
    job_finished_send(job)
    publish_on_commit(job, "completed")
    on_commit(lambda: metrics.job_created(job.priority))
    on_commit(lambda: metrics.job_reused())
    logger.info("%s completed at once from the stored file of %s", job.job_id, source.job_id)
    return job
