"""`job_finished`: sent inside the transaction of every terminal write of a job;
`job_created`: inside the transaction that creates one; `job_initiating`: before that, to
let an app refuse the request.

Apps above `jobs` (webhooks, e-mail notices) connect to it to record what must follow the
job's end in the same transaction (an outbox row), so a crash between the commit and the
send loses nothing. A receiver that raises rolls the terminal write back with it: a
receiver does only database writes, and sends anything else on commit.
"""

from collections.abc import Sequence

from django.dispatch import Signal

from jobs.models import DownloadJob, Status

# kwargs: job (the DownloadJob as written), event ("job.completed", "job.failed",
# "job.cancelled" or "job.expired").
job_finished = Signal()

# Sent by the initiate API with the owner and the validated body (`data`) before the job is
# made: a receiver refuses the request by raising one of the API's errors (jobs/api/errors.py),
# e.g. a `webhook_id` that is not one of the owner's endpoints.
job_initiating = Signal()

FINISHED_EVENTS: dict[str, str] = {
    Status.COMPLETED: "job.completed",
    Status.FAILED: "job.failed",
    Status.CANCELLED: "job.cancelled",
    Status.EXPIRED: "job.expired",
}


def job_finished_send(job: DownloadJob) -> None:
    """Sends `job_finished` for the job's (terminal) status; nothing for any other."""
    event = FINISHED_EVENTS.get(job.status)
    if event is not None and job_finished.has_listeners(DownloadJob):
        job_finished.send(sender=DownloadJob, job=job, event=event)


# kwargs: job (the new DownloadJob, queued, or completed at once from a stored file),
# notify (the initiate body's `notify` list, or None when the body named none). Sent
# inside the creating transaction, after `job_finished` of a job completed at once.
job_created = Signal()


def job_created_send(job: DownloadJob, *, notify: Sequence[str] | None) -> None:
    if job_created.has_listeners(DownloadJob):
        job_created.send(sender=DownloadJob, job=job, notify=notify)
