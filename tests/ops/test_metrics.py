"""The job metrics where they are counted: `download_job_queue_wait_seconds` when a worker
starts an attempt (jobs/services/attempt.py), `download_jobs_in_flight` around the stage
task (jobs/tasks.py), and both on /metrics. The end-to-end count through a real worker
and the multiprocess directory is in test_ops.py."""

import os
import subprocess
import sys
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.test import Client
from django.utils import timezone
from prometheus_client import REGISTRY

from jobs import metrics, services
from jobs.models import DownloadJob, Status
from jobs.tasks import download_job_stage
from tests.factories import make_job
from tests.support.scrapes import samples

WAIT = "download_job_queue_wait_seconds"
IN_FLIGHT = "download_jobs_in_flight"


def wait_figures() -> dict[str, float]:
    """The histogram's count, sum and two of its buckets, in this process."""

    def value(name: str, labels: dict[str, str] | None = None) -> float:
        return REGISTRY.get_sample_value(name, labels or {}) or 0.0

    return {
        "count": value(f"{WAIT}_count"),
        "sum": value(f"{WAIT}_sum"),
        "le_60": value(f"{WAIT}_bucket", {"le": "60.0"}),
        "le_120": value(f"{WAIT}_bucket", {"le": "120.0"}),
    }


def observed(before: dict[str, float]) -> dict[str, float]:
    after = wait_figures()
    return {name: after[name] - before[name] for name in before}


def start(job: DownloadJob, *, django_capture_on_commit_callbacks: Any, task_id: str = "") -> None:
    with django_capture_on_commit_callbacks(execute=True):
        services.download_job_start(job_pk=job.pk, task_id=task_id)


def set_times(job: DownloadJob, **times: Any) -> None:
    """Writes `created_at` or `updated_at` as given (the model sets them on save)."""
    DownloadJob.objects.filter(pk=job.pk).update(**times)


# --- the queue wait ------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_first_attempt_waited_since_the_job_was_created(user, django_capture_on_commit_callbacks):
    job = make_job(user)
    created_at = timezone.now() - timedelta(seconds=90)
    set_times(job, created_at=created_at)
    before = wait_figures()

    start(job, django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)

    job.refresh_from_db()
    waited_s = (job.started_at - created_at).total_seconds()
    assert 90 <= waited_s < 100
    assert observed(before) == {"count": 1, "sum": pytest.approx(waited_s, abs=1e-6), "le_60": 0, "le_120": 1}


@pytest.mark.django_db
def test_a_retry_waited_since_it_was_due(user, django_capture_on_commit_callbacks):
    due_at = timezone.now() - timedelta(seconds=7)
    job = make_job(user, attempts=1, next_retry_at=due_at, error_code="NETWORK_ERROR")
    set_times(job, created_at=due_at - timedelta(hours=1))
    before = wait_figures()

    start(job, django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)

    job.refresh_from_db()
    assert (job.status, job.attempts, job.next_retry_at) == (Status.PROCESSING, 2, None)
    waited_s = (job.started_at - due_at).total_seconds()
    assert 7 <= waited_s < 17
    assert observed(before) == {"count": 1, "sum": pytest.approx(waited_s, abs=1e-6), "le_60": 1, "le_120": 1}


@pytest.mark.django_db
def test_a_job_queued_again_by_the_reaper_waited_since_then(user, django_capture_on_commit_callbacks):
    requeued_at = timezone.now() - timedelta(seconds=150)
    job = make_job(user, attempts=1)
    set_times(job, created_at=requeued_at - timedelta(hours=1), updated_at=requeued_at)
    before = wait_figures()

    start(job, django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)

    job.refresh_from_db()
    waited_s = (job.started_at - requeued_at).total_seconds()
    assert observed(before) == {"count": 1, "sum": pytest.approx(waited_s, abs=1e-6), "le_60": 0, "le_120": 0}


@pytest.mark.django_db
def test_a_retry_started_before_its_time_waited_nothing(user, django_capture_on_commit_callbacks):
    """A worker whose clock runs behind the one that set the retry."""
    job = make_job(user, attempts=1, next_retry_at=timezone.now() + timedelta(seconds=3))
    before = wait_figures()

    start(job, django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)

    assert observed(before) == {"count": 1, "sum": 0, "le_60": 1, "le_120": 1}


@pytest.mark.django_db
def test_a_restarted_attempt_and_a_start_that_lost_the_race_are_not_observed(
    user, django_capture_on_commit_callbacks
):
    restarted = make_job(user, status=Status.PROCESSING, attempts=1, task_id="t-1")
    taken = make_job(user, status=Status.PROCESSING, attempts=1, task_id="t-2")
    before = wait_figures()

    start(restarted, django_capture_on_commit_callbacks=django_capture_on_commit_callbacks, task_id="t-1")
    start(taken, django_capture_on_commit_callbacks=django_capture_on_commit_callbacks, task_id="t-3")

    restarted.refresh_from_db()
    taken.refresh_from_db()
    assert (restarted.status, restarted.attempts, taken.attempts) == (Status.PROCESSING, 2, 1)
    assert observed(before) == {"count": 0, "sum": 0, "le_60": 0, "le_120": 0}


@pytest.mark.django_db
def test_the_wait_is_observed_only_once_the_start_commits(user, django_capture_on_commit_callbacks):
    job = make_job(user)
    before = wait_figures()

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        with transaction.atomic():
            services.download_job_start(job_pk=job.pk)
        assert observed(before)["count"] == 0
    for callback in callbacks:
        callback()

    assert observed(before)["count"] == 1


# --- attempts in flight --------------------------------------------------------------------


def in_flight() -> float:
    return REGISTRY.get_sample_value(IN_FLIGHT) or 0.0


def scrape(client: Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    return samples(response.content.decode())


@pytest.mark.django_db
@pytest.mark.parametrize("ends", ["returns", "raises"])
def test_an_attempt_is_in_flight_while_its_task_runs(
    client: Client, monkeypatch: pytest.MonkeyPatch, user: Any, ends: str
) -> None:
    """Named fake: the service the task calls, which scrapes /metrics while it runs and then
    returns or raises (the real attempt is run by test_ops.py's worker)."""
    job = make_job(user)
    seen: list[float] = []

    def attempt(*, job_pk: int, task_id: str) -> None:
        assert job_pk == job.pk
        seen.append(in_flight())
        seen.append(scrape(client)[(IN_FLIGHT, ())])
        if ends == "raises":
            raise RuntimeError("the attempt broke")

    monkeypatch.setattr(services, "download_job_run", attempt)
    before = in_flight()
    scraped_before = scrape(client)[(IN_FLIGHT, ())]

    if ends == "raises":
        with pytest.raises(RuntimeError, match="the attempt broke"):
            download_job_stage(job.pk)
    else:
        download_job_stage(job.pk)

    assert seen == [before + 1, scraped_before + 1]
    assert in_flight() == before
    assert scrape(client)[(IN_FLIGHT, ())] == scraped_before


@pytest.mark.django_db
def test_metrics_show_the_queue_wait(
    client: Client, user: Any, django_capture_on_commit_callbacks: Any
) -> None:
    job = make_job(user)
    set_times(job, created_at=timezone.now() - timedelta(seconds=45))
    before = scrape(client)

    start(job, django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)

    after = scrape(client)
    for le in ("30.0", "60.0", "1800.0", "+Inf"):
        assert (f"{WAIT}_bucket", (("le", le),)) in before
    assert after[(f"{WAIT}_count", ())] == before[(f"{WAIT}_count", ())] + 1
    assert after[(f"{WAIT}_bucket", (("le", "30.0"),))] == before[(f"{WAIT}_bucket", (("le", "30.0"),))]
    assert after[(f"{WAIT}_bucket", (("le", "60.0"),))] == before[(f"{WAIT}_bucket", (("le", "60.0"),))] + 1


def test_a_supervisor_drops_the_live_gauges_of_processes_that_died_unannounced(tmp_path):
    """A worker killed by SIGKILL never marks itself dead: the live gauges it left (jobs in
    flight) are dropped by `dead_processes_forget`, and only those of processes that are gone."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    for pid in (gone.pid, os.getpid()):
        (tmp_path / f"gauge_livesum_{pid}.db").write_bytes(b"")
    (tmp_path / f"counter_{gone.pid}.db").write_bytes(b"")

    assert metrics.dead_processes_forget(tmp_path) == [gone.pid]

    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [f"gauge_livesum_{os.getpid()}.db", f"counter_{gone.pid}.db"]
    )
