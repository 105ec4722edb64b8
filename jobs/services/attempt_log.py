"""The history of a job's attempts (`JobAttempt`), for operators: one insert when an
attempt starts, in the transaction that starts it, and one update when it ends. The row
of the job stays the source of truth; a history write never decides anything."""

import os
import socket
from datetime import datetime

from django.utils import timezone

from jobs.models import AttemptOutcome, DownloadJob, JobAttempt

# The worker that runs this process's attempts: its host and process id.
WORKER = f"{socket.gethostname()}:{os.getpid()}"


def attempt_log_start(*, job: DownloadJob, started_at: datetime, taken_over: bool) -> None:
    """Records the job's current attempt (`job.attempts`) as running. `taken_over`: the job
    was still processing, its earlier attempt's worker gone; that attempt is closed as lost."""
    if taken_over:
        attempt_log_end(
            job_pk=job.pk, number=job.attempts - 1, outcome=AttemptOutcome.LOST, ended_at=started_at
        )
    # A second insert of the same attempt (there is none: the start is a compare-and-swap on
    # the number) would be dropped rather than fail the start.
    JobAttempt.objects.bulk_create(
        [JobAttempt(job_id=job.pk, number=job.attempts, started_at=started_at, worker=WORKER)],
        ignore_conflicts=True,
    )


def attempt_log_end(
    *,
    job_pk: int,
    number: int,
    outcome: str,
    error_code: str = "",
    bytes_done: int = 0,
    ended_at: datetime | None = None,
) -> None:
    """Records how the attempt ended, if it is still recorded as running (the first end
    said wins: a late report of an attempt the reaper closed changes nothing)."""
    JobAttempt.objects.filter(job_id=job_pk, number=number, outcome=AttemptOutcome.RUNNING).update(
        outcome=outcome, error_code=error_code, bytes_done=bytes_done, ended_at=ended_at or timezone.now()
    )
