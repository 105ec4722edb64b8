"""The counters of the objective, where the services count them: a job's terminal write
(`download_jobs_terminal_total{outcome,fault}`), its creation (`download_jobs_created_total`),
its first bytes (`download_job_first_progress_seconds`); the HTTP requests of a web process
(`download_http_requests_total`, `download_http_request_duration_seconds`) and its
database pool (`download_db_pool_*`, PostgreSQL only)."""

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.utils import timezone
from prometheus_client import REGISTRY

from jobs import services
from jobs.errors import ErrorCode, JobError, error_fault
from jobs.models import DownloadJob, Status
from jobs.services.attempt_end import attempt_fail
from jobs.services.attempt_hooks import AttemptHooks
from jobs.transfer.staging import StagedFile
from tests.factories import make_job
from tests.services.test_reuse import staged_job
from tests.support.scrapes import samples

pytestmark = pytest.mark.django_db

TERMINAL = "download_jobs_terminal_total"
CREATED = "download_jobs_created_total"
FIRST = "download_job_first_progress_seconds"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def terminal() -> dict[tuple[str, str], float]:
    pairs = [
        ("completed", "none"),
        ("reused", "none"),
        ("cancelled", "none"),
        ("failed", "service"),
        ("failed", "client"),
    ]
    return {(outcome, fault): value(TERMINAL, outcome=outcome, fault=fault) for outcome, fault in pairs}


def moved(before: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    return {key: count - before[key] for key, count in terminal().items() if count != before[key]}


def test_whose_fault_each_code_is() -> None:
    assert error_fault("") == "none"
    assert {code for code in ErrorCode if error_fault(code) == "client"} == {
        ErrorCode.FILE_NOT_FOUND,
        ErrorCode.INVALID_FILE_ID,
        ErrorCode.PERMISSION_DENIED,
        ErrorCode.FILE_TOO_LARGE,
    }
    assert error_fault(ErrorCode.NETWORK_ERROR) == error_fault(ErrorCode.STORAGE_FULL) == "service"


def test_every_terminal_series_is_there_before_any_job_ends(client: Client) -> None:
    found = samples(client.get("/metrics").content.decode())
    for outcome, fault in terminal():
        assert (TERMINAL, (("fault", fault), ("outcome", outcome))) in found
    for priority in ("high", "normal", "low"):
        assert (CREATED, (("priority", priority),)) in found


def test_a_failure_counts_once_with_whose_fault_it_was_and_a_retry_not_at_all(
    user: User, django_capture_on_commit_callbacks: Any, local_storage: Any
) -> None:
    client_fault = make_job(user, status=Status.PROCESSING, attempts=1)
    retried = make_job(user, status=Status.PROCESSING, attempts=1)
    exhausted = make_job(user, status=Status.PROCESSING, attempts=3)
    late = DownloadJob.objects.get(pk=exhausted.pk)  # the same attempt, as another process read it
    before = terminal()

    with django_capture_on_commit_callbacks(execute=True):
        attempt_fail(client_fault, attempt=1, error=JobError(ErrorCode.FILE_NOT_FOUND, "no such file"))
        attempt_fail(retried, attempt=1, error=JobError(ErrorCode.NETWORK_ERROR, "reset"))
        attempt_fail(exhausted, attempt=3, error=JobError(ErrorCode.NETWORK_ERROR, "reset"))
        # A second end of the same attempt is refused, and not counted.
        attempt_fail(late, attempt=3, error=JobError(ErrorCode.NETWORK_ERROR, "reset"))

    retried.refresh_from_db()
    assert retried.status == Status.QUEUED
    assert moved(before) == {("failed", "client"): 1, ("failed", "service"): 1}


def test_completion_cancel_and_reuse_count_with_no_fault_and_creation_by_priority(
    user: User, django_capture_on_commit_callbacks: Any, local_storage: Any, dispatched: Any
) -> None:
    running = make_job(user, status=Status.PROCESSING, attempts=1, started_at=timezone.now())
    queued = make_job(user)
    source = staged_job(user, local_storage)
    before, created_high, created_low = (
        terminal(),
        value(CREATED, priority="high"),
        value(CREATED, priority="low"),
    )

    with django_capture_on_commit_callbacks(execute=True):
        staged = StagedFile(key="k", file_name="f", content_type="x", size=4, sha256="0" * 64)
        services.download_job_complete(job=running, attempt=1, staged=staged)
        services.download_job_cancel(job=queued)
        reused, _ = services.download_job_create(owner=user, file_id=source.file_id, priority="high")
        fresh, _ = services.download_job_create(owner=user, file_id=source.file_id + 1, priority="low")

    assert (reused.status, fresh.status) == (Status.COMPLETED, Status.QUEUED)
    assert moved(before) == {("completed", "none"): 1, ("cancelled", "none"): 1, ("reused", "none"): 1}
    assert value(CREATED, priority="high") == created_high + 1
    assert value(CREATED, priority="low") == created_low + 1


def test_the_first_bytes_are_observed_once_per_job_from_its_creation(user: User) -> None:
    job = make_job(user, status=Status.PROCESSING, attempts=1)
    DownloadJob.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(seconds=40))
    job.refresh_from_db()
    count, le_30, le_60 = (
        value(f"{FIRST}_count"),
        value(f"{FIRST}_bucket", le="30.0"),
        value(f"{FIRST}_bucket", le="60.0"),
    )

    hooks = AttemptHooks(job)
    hooks.chunk_staged(bytes_done=0, bytes_total=100)  # the upload opened: no bytes yet
    assert value(f"{FIRST}_count") == count
    hooks.chunk_staged(bytes_done=10, bytes_total=100)
    hooks.chunk_staged(bytes_done=20, bytes_total=100)
    job.attempts = 2  # a later attempt of the same job
    AttemptHooks(job).chunk_staged(bytes_done=30, bytes_total=100)

    assert value(f"{FIRST}_count") == count + 1
    assert (value(f"{FIRST}_bucket", le="30.0"), value(f"{FIRST}_bucket", le="60.0")) == (le_30, le_60 + 1)


# --- HTTP and the database pool --------------------------------------------------------------


def http(view: str, method: str, code: str) -> float:
    return value("download_http_requests_total", view=view, method=method, code=code)


def test_requests_are_counted_by_url_name_method_and_code(client: Client, api_client: Any) -> None:
    before = {
        "health": http("health", "GET", "200"),
        "unmatched": http("unmatched", "GET", "404"),
        "poll": http("download-job-status", "GET", "404"),
        "odd": http("health", "other", "405"),
        "timed": value("download_http_request_duration_seconds_count", view="health"),
    }

    client.get("/health")
    client.get("/no/such/path")
    api_client.get("/v1/download/status/job_" + "0" * 32)
    client.generic("BREW", "/health")

    assert http("health", "GET", "200") == before["health"] + 1
    assert http("unmatched", "GET", "404") == before["unmatched"] + 1
    assert http("download-job-status", "GET", "404") == before["poll"] + 1
    assert http("health", "other", "405") == before["odd"] + 1
    assert value("download_http_request_duration_seconds_count", view="health") == before["timed"] + 2


def test_the_database_pool_is_on_the_scrape_with_postgresql_only(client: Client) -> None:
    found = samples(client.get("/metrics").content.decode())
    pool = {
        name: v
        for (name, labels), v in found.items()
        if name.startswith("download_db_pool_") and labels == (("role", "web"),)
    }
    psycopg_pool = getattr(connection, "pool", None)
    if connection.vendor != "postgresql" or psycopg_pool is None:
        assert pool == {}
        return
    stats = psycopg_pool.get_stats()
    assert pool["download_db_pool_connections"] == stats["pool_size"] >= 1
    assert 0 <= pool["download_db_pool_available"] <= pool["download_db_pool_connections"]
    assert pool["download_db_pool_requests_waiting"] == 0
    assert pool["download_db_pool_requests_total"] >= 1
    assert "download_db_pool_timeouts_total" in pool
