"""The alerts of docs/operations.md: a queue backlog and a low success rate. Jobs with known outcomes
are written to the test database; the backlog is real Celery messages in a broker database
of this module's own. The check is beat's task, run here in-process; the gauges are read
from a real /metrics scrape."""

import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from downloads_project.celery import app
from jobs import tasks
from jobs.models import DownloadJob, Status
from jobs.ops import alerts
from tests.support.brokers import broker_at, empty_broker
from tests.support.scrapes import closed_port_url, samples

pytestmark = pytest.mark.django_db

BACKLOG_BROKER_DB = 11  # 5-8: the test stacks; 9: test_ops and the recovery stack; 10: its state
FIRING = "download_alert_firing"


@pytest.fixture
def alert_settings(settings: Any) -> Any:
    settings.ALERT_BACKLOG_THRESHOLD = 1000
    settings.ALERT_SUCCESS_RATE_MIN = 0.95
    settings.ALERT_MIN_SAMPLES = 20
    settings.ALERT_WINDOW_S = 3600
    return settings


@pytest.fixture
def broker(settings: Any) -> Iterator[redis.Redis]:
    """An empty broker database of this module's own, read by the metrics and alerts."""
    with empty_broker(settings, f"{settings.REDIS_URL}/{BACKLOG_BROKER_DB}") as client:
        yield client


def ended_jobs(owner: User, status: Status, n: int, *, ago_s: float = 60) -> None:
    at = timezone.now() - timedelta(seconds=ago_s)
    field = {Status.COMPLETED: "completed_at", Status.FAILED: "failed_at", Status.CANCELLED: "cancelled_at"}
    DownloadJob.objects.bulk_create(
        DownloadJob(owner=owner, file_id=70000 + i, status=status, attempts=1, **{field[status]: at})
        for i in range(n)
    )


def scrape(client: Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    return samples(response.content.decode())


def firing(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], alert: str) -> float:
    return found[(FIRING, (("alert", alert),))]


def alert_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "ALERT" in r.getMessage()
    ]


# --- success rate --------------------------------------------------------------------------


def test_a_success_rate_below_the_threshold_fires_and_is_logged(
    user: User, alert_settings: Any, broker: redis.Redis, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    ended_jobs(user, Status.COMPLETED, 18)
    ended_jobs(user, Status.FAILED, 2)  # 18 / 20 = 0.90
    ended_jobs(user, Status.CANCELLED, 30)  # not counted either way

    with caplog.at_level(logging.WARNING, logger="jobs.ops.alerts"):
        tasks.download_alerts_check()

    [warning] = alert_warnings(caplog)
    assert "success_rate" in warning
    assert "0.900" in warning
    assert "20 jobs" in warning
    assert "0.95" in warning
    found = scrape(client)
    assert found[("download_job_success_rate", ())] == pytest.approx(0.9)
    assert found[("download_jobs_ended_window", (("outcome", "completed"),))] == 18
    assert found[("download_jobs_ended_window", (("outcome", "failed"),))] == 2
    assert firing(found, "success_rate") == 1
    assert firing(found, "backlog") == 0


def test_a_success_rate_at_or_above_the_threshold_does_not_fire(
    user: User, alert_settings: Any, broker: redis.Redis, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    ended_jobs(user, Status.COMPLETED, 19)
    ended_jobs(user, Status.FAILED, 1)  # 0.95 exactly: not below

    with caplog.at_level(logging.WARNING, logger="jobs.ops.alerts"):
        state = alerts.alerts_check()

    assert state.success is not None
    assert state.success.rate == pytest.approx(0.95)
    assert state.success_rate_firing is False
    assert alert_warnings(caplog) == []
    assert firing(scrape(client), "success_rate") == 0


def test_too_few_ended_jobs_give_no_success_rate_alert(
    user: User, alert_settings: Any, broker: redis.Redis, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    ended_jobs(user, Status.COMPLETED, 1)
    ended_jobs(user, Status.FAILED, 18)  # 1 / 19: bad, but fewer than ALERT_MIN_SAMPLES

    with caplog.at_level(logging.WARNING, logger="jobs.ops.alerts"):
        tasks.download_alerts_check()

    assert alert_warnings(caplog) == []
    found = scrape(client)
    assert found[("download_job_success_rate", ())] == pytest.approx(1 / 19)
    assert firing(found, "success_rate") == 0


def test_only_jobs_that_ended_within_the_window_count(user: User, alert_settings: Any) -> None:
    ended_jobs(user, Status.COMPLETED, 20)
    ended_jobs(user, Status.FAILED, 30, ago_s=3700)  # ended before the window

    state = alerts.alerts_evaluate()

    assert state.success == alerts.SuccessRate(completed=20, failed=0)
    assert state.success_rate_firing is False


def test_no_ended_jobs_leave_the_rate_out_of_the_scrape(
    alert_settings: Any, broker: redis.Redis, client: Client
):
    found = scrape(client)
    assert ("download_job_success_rate", ()) not in found
    assert firing(found, "success_rate") == 0


# --- backlog -------------------------------------------------------------------------------


def test_a_backlog_above_the_threshold_fires_and_is_logged(
    alert_settings: Any, broker: redis.Redis, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    alert_settings.ALERT_BACKLOG_THRESHOLD = 3
    # Real task messages, over two priorities; nothing consumes this broker database.
    with app.connection_for_write(alert_settings.CELERY_BROKER_URL) as connection:
        for job_pk, queue in enumerate(
            ["downloads.high", "downloads.low", "downloads.low", "downloads.normal"]
        ):
            # `connection` is a documented option of apply_async, missing from the stubs.
            tasks.download_job_stage.apply_async(args=(job_pk,), queue=queue, connection=connection)  # type: ignore[call-arg]
    assert alerts.queue_backlog() == 4

    with caplog.at_level(logging.WARNING, logger="jobs.ops.alerts"):
        tasks.download_alerts_check()

    [warning] = alert_warnings(caplog)
    assert "backlog" in warning
    assert "4 messages" in warning
    assert "threshold of 3" in warning
    found = scrape(client)
    assert found[("download_queue_backlog", ())] == 4
    assert firing(found, "backlog") == 1

    alert_settings.ALERT_BACKLOG_THRESHOLD = 4  # at the threshold: not above
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jobs.ops.alerts"):
        tasks.download_alerts_check()
    assert alert_warnings(caplog) == []
    assert firing(scrape(client), "backlog") == 0


def test_an_unreadable_broker_leaves_the_backlog_out_of_the_scrape(
    alert_settings: Any, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with broker_at(alert_settings, f"{closed_port_url()}/0"):
        with caplog.at_level(logging.WARNING, logger="jobs.ops.alerts"):
            tasks.download_alerts_check()
        found = scrape(client)
    assert "could not read the queue backlog" in caplog.text
    assert alert_warnings(caplog) == []
    assert ("download_queue_backlog", ()) not in found
    assert (FIRING, (("alert", "backlog"),)) not in found
    assert firing(found, "success_rate") == 0


def test_beat_checks_the_alerts_every_minute_on_the_high_queue(settings: Any) -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["download-alerts-check"]
    assert entry["task"] == "jobs.download_alerts_check"
    assert entry["task"] in app.tasks
    assert entry["schedule"] == 60
    assert entry["options"] == {"queue": "downloads.high", "expires": 60}
