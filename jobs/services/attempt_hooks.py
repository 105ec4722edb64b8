"""What a running attempt reports as it goes: progress to hot-state Redis and the job's
watchers, its heartbeat and stored parts to hot-state Redis, the upload and the file's
facts to the row (every write fenced by the attempt number), and the cancel flag it
checks between chunks.

The row is written twice by an attempt, whatever the file's size or the attempt's
length: when the upload opens and before it is committed."""

import logging
import time
from collections.abc import Sequence
from typing import Any

import redis
from django.conf import settings
from django.utils import timezone

from jobs import hotstate, metrics
from jobs.errors import JobCancelled, JobSuperseded
from jobs.events import job_event_on_hot_state, job_event_publish
from jobs.hotstate import HotProgress
from jobs.models import DownloadJob, Status
from jobs.parts import StoredPart
from jobs.selectors import iso
from jobs.services.writes import connection_release, write
from jobs.transfer.origin_limits import origin_lease_renew
from jobs.transfer.staging import StoredFileFacts

logger = logging.getLogger(__name__)


class AttemptHooks:
    """Progress of one attempt: pushed to Redis and the job's watchers on each whole
    percent (at most every PROGRESS_PUSH_INTERVAL_S), with a heartbeat at most every
    JOB_HEARTBEAT_INTERVAL_S. Between chunks it checks the cancel flag and stops the work."""

    def __init__(self, job: DownloadJob) -> None:
        self.job = job
        self.attempt = job.attempts
        self.last_push_at = 0.0
        self.last_percent = -1
        self.last_beat_at = time.monotonic()
        self.redis_down_until = 0.0
        self.bytes_seen = False

    def upload_opened(
        self,
        *,
        upload_id: str,
        parts: Sequence[StoredPart],
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
            origin_validator=validator,
            bytes_total=bytes_total,
            bytes_done=resumed_bytes,
        )
        self._beat(parts=parts)
        self.chunk_staged(bytes_done=resumed_bytes, bytes_total=bytes_total)

    def part_stored(self, *, parts: Sequence[StoredPart]) -> None:
        self._beat(parts=parts)

    def before_commit(self, *, file: StoredFileFacts) -> None:
        # Recorded before the commit: an attempt that finds the file stored completes with it.
        self._write_row(
            file_size_bytes=file.size,
            file_name=file.file_name,
            content_type=file.content_type,
            sha256=file.sha256,
        )

    def chunk_staged(self, *, bytes_done: int, bytes_total: int | None) -> None:
        now = time.monotonic()
        if now < self.redis_down_until:
            return  # hot-state Redis failed a moment ago: the attempt goes on without it
        if bytes_done > 0 and not self.bytes_seen:
            self.bytes_seen = True
            self._first_bytes()
        # 100 % is said by the completion, not while the upload is being finished.
        percent = min(99, bytes_done * 100 // bytes_total) if bytes_total else 0
        due = now - self.last_push_at >= settings.PROGRESS_PUSH_INTERVAL_S
        progress = None
        if due and (percent != self.last_percent or not bytes_total):
            progress = HotProgress(self.attempt, bytes_done, bytes_total, percent)
        event = self._event(progress) if progress is not None else None
        on_hot_state = job_event_on_hot_state(self.job.job_id, event) if event is not None else None
        try:
            # The cancel flag, the progress and its event in one round trip.
            if hotstate.chunk_report(job_id=self.job.job_id, progress=progress, publish=on_hot_state):
                raise JobCancelled(self.job.job_id)
            if event is not None:
                self.last_push_at, self.last_percent = now, percent
                if on_hot_state is None:
                    job_event_publish(self.job.job_id, event)
        except redis.RedisError:
            self._redis_failed("progress and the cancel flag")
            return
        if now - self.last_beat_at >= settings.JOB_HEARTBEAT_INTERVAL_S:
            self._beat()

    def _first_bytes(self) -> None:
        """The job's first bytes, from its creation: observed by the first attempt that
        reports any (a later one resumes or restarts a job that had its first bytes)."""
        try:
            first = hotstate.first_progress_claim(self.job.job_id)
        except redis.RedisError:
            self._redis_failed("the first bytes' claim")
            return
        if first:
            metrics.job_first_progress((timezone.now() - self.job.created_at).total_seconds())

    def _redis_failed(self, what: str) -> None:
        """Hot-state Redis failed: the attempt goes on, and leaves Redis alone for one
        heartbeat period rather than wait on it at every chunk. Meanwhile a cancel is seen
        at its next row write (the fence), and watchers hear nothing new."""
        self.redis_down_until = time.monotonic() + settings.JOB_HEARTBEAT_INTERVAL_S
        logger.warning(
            "%s attempt %s: hot-state Redis failed (%s); going on without it",
            self.job.job_id,
            self.attempt,
            what,
            exc_info=True,
        )

    def _event(self, progress: HotProgress) -> dict[str, Any]:
        return {
            "type": "progress",
            "job_id": self.job.job_id,
            "status": Status.PROCESSING,
            "progress": progress.progress,
            "bytes_done": progress.bytes_done,
            "bytes_total": progress.bytes_total,
            "timestamp": iso(timezone.now()),
        }

    def _beat(self, *, parts: Sequence[StoredPart] | None = None) -> None:
        """The heartbeat the reaper watches, and the stored parts a later attempt resumes
        after, fenced by the attempt number in Redis. While Redis cannot be reached the
        attempt goes on: its row writes are fenced still, and a later attempt that finds
        no parts restarts the file from zero."""
        self.last_beat_at = time.monotonic()
        try:
            held = hotstate.run_beat(self.job.job_id, attempt=self.attempt, parts=parts)
            origin_lease_renew(job_id=self.job.job_id)  # its place against ORIGIN_MAX_IN_FLIGHT
        except redis.RedisError:
            self._redis_failed("heartbeat")
            return
        if not held:
            raise JobSuperseded(self.job.job_id)

    def _write_row(self, **fields: Any) -> None:
        """Every write of the attempt is fenced by its number: once the reaper or a newer
        attempt has taken the job, this attempt's writes are refused and it stops."""
        rows = DownloadJob.objects.filter(pk=self.job.pk, status=Status.PROCESSING, attempts=self.attempt)
        try:
            written = write(rows, self.job, updated_at=timezone.now(), **fields)
        finally:
            connection_release()  # back to the pool until the attempt's next write
        if not written:
            raise JobSuperseded(self.job.job_id)
        for name, value in fields.items():
            setattr(self.job, name, value)
