"""The history of a job's attempts (`JobAttempt`): one row per attempt, inserted as it
starts and updated once as it ends, run in process against the real local origin."""

from datetime import timedelta
from functools import partial

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs import services
from jobs.models import AttemptOutcome, DownloadJob, JobAttempt, Status
from jobs.services.attempt_log import WORKER, attempt_log_end
from tests import factories
from tests.support.origin_server import FileScript

FILE_ID = 70000
make_job = partial(factories.make_job, file_id=FILE_ID)


def history(job: DownloadJob) -> list[tuple[int, str, str, int, str, bool]]:
    return [
        (row.number, row.outcome, row.error_code, row.bytes_done, row.worker, row.ended_at is not None)
        for row in JobAttempt.objects.filter(job=job).order_by("number")
    ]


def test_a_retried_then_completed_job_has_one_row_per_attempt(user, origin, media, dispatched, run_attempt):
    origin.add(FILE_ID, FileScript(size=200_000, faults=["500"]))
    job = make_job(user)

    run_attempt(job.pk)
    run_attempt(job.pk)

    assert history(job) == [
        (1, AttemptOutcome.RETRIED, "TEMPORARY_UNAVAILABLE", 0, WORKER, True),
        (2, AttemptOutcome.COMPLETED, "", 200_000, WORKER, True),
    ]
    first, second = JobAttempt.objects.filter(job=job).order_by("number")
    job.refresh_from_db()
    assert first.started_at <= first.ended_at <= second.started_at
    assert (second.started_at, second.ended_at) == (job.started_at, job.completed_at)


def test_a_failed_attempt_records_its_error_code(user, origin, media, dispatched, run_attempt):
    job = make_job(user)  # the origin has no such file

    run_attempt(job.pk)

    assert history(job) == [(1, AttemptOutcome.FAILED, "FILE_NOT_FOUND", 0, WORKER, True)]


def test_an_attempt_costs_one_insert_and_one_update_of_the_history(user, origin, media, run_attempt):
    origin.add(FILE_ID, FileScript(size=100_000))
    job = make_job(user)

    with CaptureQueriesContext(connection) as queries:
        run_attempt(job.pk)

    writes = [
        query["sql"].split()[0]
        for query in queries.captured_queries
        if "jobs_jobattempt" in query["sql"] and not query["sql"].startswith("SELECT")
    ]
    assert writes == ["INSERT", "UPDATE"]


def test_a_redelivered_job_closes_the_attempt_its_dead_worker_left_running(user, origin, media, run_attempt):
    origin.add(FILE_ID, FileScript(size=100_000))
    job = make_job(user, status=Status.PROCESSING, attempts=1, started_at=timezone.now())
    JobAttempt.objects.create(job=job, number=1, started_at=job.started_at, worker="gone:1")

    run_attempt(job.pk)

    assert history(job) == [
        (1, AttemptOutcome.LOST, "", 0, "gone:1", True),
        (2, AttemptOutcome.COMPLETED, "", 100_000, WORKER, True),
    ]


def test_cancelling_a_processing_job_ends_its_running_attempt(user, django_capture_on_commit_callbacks):
    job = make_job(user, status=Status.PROCESSING, attempts=2, started_at=timezone.now())
    JobAttempt.objects.create(job=job, number=1, started_at=job.started_at, outcome=AttemptOutcome.RETRIED)
    JobAttempt.objects.create(job=job, number=2, started_at=job.started_at, worker="w:2")

    with django_capture_on_commit_callbacks(execute=True):
        services.download_job_cancel(job=job)

    assert history(job) == [
        (1, AttemptOutcome.RETRIED, "", 0, "", False),
        (2, AttemptOutcome.CANCELLED, "", 0, "w:2", True),
    ]


def test_a_late_end_does_not_overwrite_the_outcome_recorded_first(user):
    job = make_job(user)
    JobAttempt.objects.create(job=job, number=1, started_at=timezone.now())
    end = partial(attempt_log_end, job_pk=job.pk, number=1)

    end(outcome=AttemptOutcome.LOST)
    end(outcome=AttemptOutcome.COMPLETED, bytes_done=10)

    assert history(job) == [(1, AttemptOutcome.LOST, "", 0, "", True)]


def test_the_history_is_purged_with_its_job(user, settings):
    settings.JOB_AUDIT_RETENTION_DAYS = 30
    old = make_job(user, status=Status.FAILED)
    kept = make_job(user, status=Status.FAILED)
    for job in (old, kept):
        JobAttempt.objects.create(job=job, number=1, started_at=timezone.now(), outcome=AttemptOutcome.FAILED)
    DownloadJob.objects.filter(pk=old.pk).update(updated_at=timezone.now() - timedelta(days=31))

    assert services.download_jobs_purge() == 1

    assert list(JobAttempt.objects.values_list("job_id", flat=True)) == [kept.pk]
