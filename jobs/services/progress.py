"""What a running attempt reports as it goes: progress to hot-state Redis and the job's
watchers, a heartbeat and the stored parts to the row (every write fenced by the attempt
number), and the cancel flag it checks between chunks."""

import logging
import time
from typing import Any

from django.conf import settings
from django.utils import timezone

from jobs import hotstate
from jobs.errors import JobCancelled, JobSuperseded
from jobs.events import job_event_publish
from jobs.hotstate import HotProgress
from jobs.models import DownloadJob, Status
from jobs.selectors import iso
from jobs.services.writes import (
    write,
)
from jobs.transfer.staging import StoredFileFacts

logger = logging.getLogger(__name__)


class AttemptHooks:
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
        if not write(rows, self.job, updated_at=now, heartbeat_at=now, **fields):
            raise JobSuperseded(self.job.job_id)
        for name, value in fields.items():
            setattr(self.job, name, value)
