"""The notices' side of a job's life: what its creation asked for, and its end. Both run
inside the job's own transaction, so the outbox row commits with the job's write or not
at all (jobs/signals.py)."""

from collections.abc import Sequence
from typing import Any

from django.dispatch import receiver

from jobs.models import DownloadJob
from jobs.signals import job_created, job_finished
from notices import services


@receiver(job_created, sender=DownloadJob, dispatch_uid="notices.job_created")
def _job_created(*, job: DownloadJob, notify: Sequence[str] | None, **_: Any) -> None:
    services.email_notice_request(job=job, notify=notify)


@receiver(job_finished, sender=DownloadJob, dispatch_uid="notices.job_finished")
def _job_finished(*, job: DownloadJob, event: str, **_: Any) -> None:
    services.email_notice_job_finished(job=job, event=event)
