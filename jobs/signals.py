"""`job_finished`: sent inside the transaction of every terminal write of a job.

Apps above `jobs` (webhooks, e-mail notices) connect to it to record what must follow the
job's end in the same transaction (an outbox row), so a crash between the commit and the
send loses nothing. A receiver that raises rolls the terminal write back with it: a
receiver does only database writes, and sends anything else on commit.
"""

from django.dispatch import Signal

from jobs.models import DownloadJob, Status

# kwargs: job (the DownloadJob as written), event ("job.completed", "job.failed",
# "job.cancelled" or "job.expired").
job_finished = Signal()

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
