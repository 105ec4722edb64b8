"""`job_finished`: sent once per terminal write, inside its transaction, with the event
named after the end; a receiver that raises takes the write back with it."""

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from jobs import services
from jobs.errors import ErrorCode, JobError
from jobs.models import DownloadJob, Status
from jobs.services.attempt_end import attempt_fail
from jobs.signals import job_finished
from tests import factories
from tests.services.test_reuse import initiate, staged_job


@pytest.fixture
def finished() -> Iterator[list[tuple[str, str, bool]]]:
    """(job_id, event, inside a transaction) of every `job_finished` sent."""
    seen: list[tuple[str, str, bool]] = []

    def receiver(sender: Any, *, job: DownloadJob, event: str, **kwargs: Any) -> None:
        seen.append((job.job_id, event, connection.in_atomic_block))

    job_finished.connect(receiver, dispatch_uid="test_job_finished")
    yield seen
    job_finished.disconnect(dispatch_uid="test_job_finished")


def test_a_cancel_sends_job_cancelled_inside_its_transaction(user, finished, dispatched):
    job = factories.make_job(user)
    services.download_job_cancel(job=job)
    assert finished == [(job.job_id, "job.cancelled", True)]


def test_a_final_failure_sends_job_failed_and_a_retry_sends_nothing(user, finished, dispatched):
    job = factories.make_job(user, status=Status.PROCESSING, attempts=1, max_attempts=2)
    attempt_fail(job, attempt=1, error=JobError(ErrorCode.NETWORK_ERROR, "down"))
    assert finished == []
    job = DownloadJob.objects.get(pk=job.pk)
    job.status, job.attempts = Status.PROCESSING, 2
    job.save(update_fields=["status", "attempts"])
    attempt_fail(job, attempt=2, error=JobError(ErrorCode.NETWORK_ERROR, "down"))
    assert finished == [(job.job_id, "job.failed", True)]


def test_expiry_sends_job_expired_inside_a_transaction(user, finished, local_storage):
    job = staged_job(user, local_storage, expires_at=timezone.now() - timedelta(seconds=1))
    assert services.download_jobs_expire() == 1
    assert finished == [(job.job_id, "job.expired", True)]


def test_a_reused_file_sends_job_completed_at_once(api_client, user, finished, local_storage, dispatched):
    staged_job(user, local_storage)
    data = initiate(api_client)
    assert finished == [(data["job_id"], "job.completed", True)]


def test_a_receiver_that_raises_takes_the_terminal_write_back(user, dispatched):
    def failing(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("the outbox could not be written")

    job = factories.make_job(user)
    job_finished.connect(failing, dispatch_uid="test_failing")
    try:
        with pytest.raises(RuntimeError):
            services.download_job_cancel(job=job)
    finally:
        job_finished.disconnect(dispatch_uid="test_failing")
    assert DownloadJob.objects.get(pk=job.pk).status == Status.QUEUED
