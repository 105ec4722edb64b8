"""The firing alerts as a banner on every admin page, read at most every ten seconds,
and "alerts unknown" (never an error page) when their sources cannot be read."""

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from devtools.servers import free_port
from jobs.admin import alerts_banner
from jobs.api_keys import api_key_create
from jobs.models import DownloadJob, Status
from tests import factories
from tests.support.brokers import broker_at, empty_broker

BANNER_BROKER_DB = 11  # the alerts' tests' broker database: emptied before and after


@pytest.fixture
def alert_settings(settings: Any) -> Iterator[Any]:
    settings.ALERT_BACKLOG_THRESHOLD = 1000
    settings.ALERT_SUCCESS_RATE_MIN = 0.95
    settings.ALERT_MIN_SAMPLES = 4
    settings.ALERT_WINDOW_S = 3600
    with empty_broker(settings, f"{settings.REDIS_URL}/{BANNER_BROKER_DB}"):
        yield settings


def ended(owner: User, status: Status, n: int) -> None:
    field = "completed_at" if status == Status.COMPLETED else "failed_at"
    for _ in range(n):
        factories.make_job(
            owner, status=status, attempts=1, **{field: timezone.now() - timedelta(seconds=60)}
        )


def admin_pages(user: User) -> list[str]:
    job = DownloadJob.objects.filter(owner=user).first()
    assert job is not None
    api_key, _ = api_key_create(user=user)
    return [
        reverse("admin:index"),
        reverse("admin:jobs_downloadjob_changelist"),
        reverse("admin:jobs_downloadjob_change", args=[job.pk]),
        reverse("admin:jobs_downloadjob_analytics"),
        reverse("admin:jobs_apikey_changelist"),
        reverse("admin:jobs_apikey_change", args=[api_key.pk]),
        reverse("admin:auth_user_changelist"),
        reverse("admin:auth_user_change", args=[user.pk]),
        reverse("admin:password_change"),
    ]


def banner(html: str) -> str:
    assert html.count('id="alert-banner"') <= 1
    return (
        html.split('id="alert-banner"')[1].split("</div>\n</div>")[0] if 'id="alert-banner"' in html else ""
    )


def test_a_firing_success_rate_alert_shows_on_every_admin_page(staff_client, user, alert_settings):
    ended(user, Status.COMPLETED, 2)
    ended(user, Status.FAILED, 2)

    for url in admin_pages(user):
        response = staff_client.get(url)
        assert response.status_code == 200, url
        shown = banner(response.text)
        assert "1 alert firing" in shown, url
        assert (
            "Success rate: 50.0 % of the 4 jobs that ended in the last 3600 s completed, "
            "below the threshold of 95 %." in shown
        ), url


def test_a_backlog_above_its_threshold_shows(staff_client, user, alert_settings, settings):
    settings.ALERT_BACKLOG_THRESHOLD = 2
    client = redis.Redis.from_url(f"{settings.REDIS_URL}/{BANNER_BROKER_DB}")
    client.rpush("downloads.normal", *[b"{}"] * 3)

    shown = banner(staff_client.get(reverse("admin:index")).text)

    assert "Backlog: 3 messages wait in the broker, above the threshold of 2." in shown
    assert "Success rate" not in shown


def test_no_banner_while_nothing_fires(staff_client, user, alert_settings):
    ended(user, Status.COMPLETED, 10)

    assert 'id="alert-banner"' not in staff_client.get(reverse("admin:index")).text


def test_an_unreadable_broker_shows_alerts_unknown_and_the_page_still_answers(staff_client, user, settings):
    with broker_at(settings, f"redis://127.0.0.1:{free_port()}/0"):
        response = staff_client.get(reverse("admin:jobs_downloadjob_changelist"))

    assert response.status_code == 200
    assert "Alerts unknown:</strong> could not read the backlog (the broker could not be read)." in banner(
        response.text
    )


def test_alerts_that_cannot_be_evaluated_at_all_show_unknown(staff_client, monkeypatch):
    def broken() -> None:
        raise RuntimeError("the database is gone")

    monkeypatch.setattr(alerts_banner, "alerts_evaluate", broken)  # named fake: any fault at all

    response = staff_client.get(reverse("admin:index"))

    assert response.status_code == 200
    assert "could not read every alert (they could not be evaluated)" in banner(response.text)


def test_the_alerts_are_read_at_most_once_every_ten_seconds(staff_client, monkeypatch, alert_settings):
    now = [1000.0]
    reads = []
    real = alerts_banner.alerts_evaluate

    def counted() -> Any:
        reads.append(now[0])
        return real()

    monkeypatch.setattr(alerts_banner.cached, "clock", lambda: now[0])
    monkeypatch.setattr(alerts_banner, "alerts_evaluate", counted)  # the real one, counted

    for _ in range(3):
        staff_client.get(reverse("admin:index"))
    now[0] += 9.9
    staff_client.get(reverse("admin:jobs_downloadjob_changelist"))
    now[0] += 0.1
    staff_client.get(reverse("admin:jobs_downloadjob_changelist"))

    assert reads == [1000.0, 1010.0]


def test_no_banner_on_pages_outside_the_admin_nor_for_someone_signed_out(user, alert_settings, monkeypatch):
    ended(user, Status.FAILED, 5)
    monkeypatch.setattr(alerts_banner, "alerts_evaluate", lambda: pytest.fail("read for nobody"))
    client = Client()

    assert 'id="alert-banner"' not in client.get(reverse("admin:login")).text
    client.force_login(user)  # not staff
    assert 'id="alert-banner"' not in client.get("/").text
