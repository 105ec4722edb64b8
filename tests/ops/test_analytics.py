"""Hourly analytics: the PostgreSQL materialized view made by migration 0003 (it exists
with its unique index, refreshes concurrently, and its rows match jobs of known outcomes,
durations and sizes), the selector that gives the same figures on SQLite, the refresh
task and its beat entry, and the admin page that draws them."""

from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from downloads_project.celery import app
from jobs import tasks
from jobs.admin.charts import COLORS
from jobs.models import DownloadAnalyticsHour, DownloadJob, Status
from jobs.ops import broker, hourly_analytics
from jobs.ops.broker import PRIORITIES, queue_depths
from jobs.ops.hourly_analytics import AnalyticsHour
from tests.support.databases import postgres_only

PAGE = "admin:jobs_downloadjob_analytics"


def make_job(
    owner: User, created_at: datetime, status: str, duration: float | None = None, size: int | None = None
):
    job = DownloadJob.objects.create(
        owner=owner, file_id=1, status=status, duration_seconds=duration, file_size_bytes=size
    )
    # created_at is auto_now_add: set it afterwards, as only an update can.
    DownloadJob.objects.filter(pk=job.pk).update(created_at=created_at)
    return job


@pytest.fixture
def hours() -> dict[str, datetime]:
    top = timezone.now().replace(minute=0, second=0, microsecond=0)
    return {"a": top - timedelta(hours=3), "b": top - timedelta(hours=2), "c": top - timedelta(days=2)}


@pytest.fixture
def known_jobs(user: User, hours: dict[str, datetime]) -> list[AnalyticsHour]:
    """Jobs with known outcomes in three hours (and one too old to count); returns the
    figures worked out by hand, newest hour first."""
    a, b, c = hours["a"], hours["b"], hours["c"]
    for minute, (duration, size) in enumerate([(3.0, 300), (1.0, 100), (10.0, 1000), (2.0, 200), (4.0, 400)]):
        make_job(user, a + timedelta(minutes=minute * 10), Status.COMPLETED, duration, size)
    make_job(user, a + timedelta(minutes=5), Status.FAILED, 5.0)  # a failed run's duration is not counted
    make_job(user, a + timedelta(minutes=6), Status.FAILED)
    make_job(user, a + timedelta(minutes=7), Status.CANCELLED)
    make_job(user, a + timedelta(minutes=59, seconds=59), Status.QUEUED)
    make_job(user, b, Status.COMPLETED, 7.25, 2048)
    make_job(user, b + timedelta(minutes=30), Status.COMPLETED, 0.5, 1024)
    make_job(user, b + timedelta(minutes=31), Status.FAILED)
    make_job(user, c + timedelta(minutes=1), Status.CANCELLED)
    make_job(user, timezone.now() - timedelta(days=8), Status.COMPLETED, 99.0, 9999)
    return [
        # [0.5, 7.25]: percentile_cont(f) = 0.5 + 6.75 * f.
        AnalyticsHour(b, 3, 2, 1, 0, 3.875, 3.875, 6.9125, 7.1825, 3072),
        # [1, 2, 3, 4, 10]: p95 at position 3.8 = 4 + 6 * 0.8, p99 at 3.96 = 4 + 6 * 0.96.
        AnalyticsHour(a, 9, 5, 2, 1, 4.0, 3.0, 8.8, 9.76, 2000),
        AnalyticsHour(c, 1, 0, 0, 1, None, None, None, None, 0),
    ]


def assert_same_figures(found: list[AnalyticsHour], expected: list[AnalyticsHour]) -> None:
    assert [row.hour for row in found] == [row.hour for row in expected]
    for got, want in zip(found, expected, strict=True):
        assert (got.total_jobs, got.completed, got.failed, got.cancelled, got.bytes_staged) == (
            want.total_jobs,
            want.completed,
            want.failed,
            want.cancelled,
            want.bytes_staged,
        )
        for field in ("avg_duration_s", "p50_duration_s", "p95_duration_s", "p99_duration_s"):
            value, target = getattr(got, field), getattr(want, field)
            assert (value is None) == (target is None), field
            if target is not None:
                assert value == pytest.approx(target, abs=1e-6), field


# --- the view on PostgreSQL -----------------------------------------------------------------


@postgres_only
@pytest.mark.django_db
def test_the_view_exists_with_a_unique_index_on_hour():
    with connection.cursor() as cursor:
        cursor.execute("SELECT ispopulated FROM pg_matviews WHERE matviewname = 'download_analytics'")
        assert cursor.fetchall() == [(True,)]
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'download_analytics'")
        definitions = [row[0] for row in cursor.fetchall()]
    assert any("UNIQUE INDEX" in d and "(hour)" in d for d in definitions), definitions


@postgres_only
def test_the_view_refreshes_concurrently_to_the_figures_of_the_jobs(known_jobs, hours):
    # A snapshot: the jobs are not in it until the refresh.
    assert not DownloadAnalyticsHour.objects.filter(hour__in=hours.values()).exists()

    assert hourly_analytics.download_analytics_refresh() is True

    assert_same_figures(hourly_analytics.download_analytics_hourly(), known_jobs)
    assert DownloadAnalyticsHour.objects.count() == 3


@postgres_only
@pytest.mark.django_db
def test_a_plain_refresh_statement_works_concurrently_too():
    """CONCURRENTLY needs the unique index and a populated view: both hold after migrate."""
    with connection.cursor() as cursor:
        cursor.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY download_analytics")


@postgres_only
@pytest.mark.django_db
@pytest.mark.parametrize(
    "values",
    [[1.0], [2.0, 1.0], [0.1, 0.2, 0.7, 10.0, 3.3, 3.3, 8.0], [float(i) ** 1.5 for i in range(1, 101)]],
)
@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.95, 0.99, 1.0])
def test_the_python_percentile_is_postgresqls_percentile_cont(values, fraction):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT percentile_cont(%s) WITHIN GROUP (ORDER BY v) FROM unnest(%s::float8[]) AS v",
            [fraction, values],
        )
        (expected,) = cursor.fetchone()
    assert hourly_analytics.percentile_cont(values, fraction) == pytest.approx(expected, abs=1e-9)


# --- the same figures on every backend -------------------------------------------------------


def test_the_computed_figures_match_the_jobs(known_jobs):
    assert_same_figures(hourly_analytics.download_analytics_hourly_computed(), known_jobs)


def test_the_selector_gives_the_computed_figures_on_either_backend(known_jobs):
    hourly_analytics.download_analytics_refresh()  # the view on PostgreSQL; nothing on SQLite

    assert_same_figures(hourly_analytics.download_analytics_hourly(), known_jobs)
    assert_same_figures(
        hourly_analytics.download_analytics_hourly(), hourly_analytics.download_analytics_hourly_computed()
    )


@pytest.mark.django_db
def test_no_jobs_no_rows():
    hourly_analytics.download_analytics_refresh()
    assert hourly_analytics.download_analytics_hourly() == []


def test_percentile_interpolates_linearly():
    assert hourly_analytics.percentile_cont([], 0.5) is None
    assert hourly_analytics.percentile_cont([7.0], 0.99) == 7.0
    assert hourly_analytics.percentile_cont([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert hourly_analytics.percentile_cont([1.0, 2.0, 3.0, 4.0, 10.0], 0.95) == pytest.approx(8.8)


# --- the refresh task and its schedule -------------------------------------------------------


@pytest.mark.django_db
def test_the_refresh_task_runs():
    result = tasks.download_analytics_refresh.apply().get()
    assert result is (connection.vendor == "postgresql")


def test_beat_refreshes_every_minute_on_the_high_queue(settings: Any) -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["download-analytics-refresh"]
    assert entry["task"] == "jobs.download_analytics_refresh"
    assert entry["task"] in app.tasks
    assert entry["schedule"] == 60
    assert entry["options"] == {"queue": "downloads.high", "expires": 60}


# --- the admin page ---------------------------------------------------------------------------


@pytest.fixture
def staff_client(db: None) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="root-password"))
    return client


def test_the_page_shows_the_figures_charts_and_queue_to_staff(staff_client, known_jobs):
    hourly_analytics.download_analytics_refresh()

    response = staff_client.get(reverse(PAGE))

    assert response.status_code == 200
    page = response.text.split('id="content-main"')[1].split("</section>\n</div>")[0]
    assert page.count('<svg viewBox="0 0 720 190"') == 4
    for chart in ("chart-success", "chart-durations", "chart-jobs", "chart-bytes"):
        assert f'aria-labelledby="{chart}-title {chart}-desc"' in page
        assert f'<title id="{chart}-title">' in page
        assert f'<desc id="{chart}-desc">' in page
    # The table carries the numbers.
    for figure in ("8.80", "9.76", "6.91", "7.18", "3.88"):
        assert figure in page, figure
    # Bytes are read in KiB, MiB, GiB, the exact count in the cell's title.
    assert '<td title="2000 bytes">2.0 KiB</td>' in page
    assert '<td title="3072 bytes">3.0 KiB</td>' in page
    assert response.context["rows"] == hourly_analytics.download_analytics_hourly()
    # The queue per priority is the broker's reading, as /metrics has it.
    assert response.context["depths"] == [queue_depths()[p] for p in PRIORITIES]
    assert 'id="queue-depths"' in page
    assert ("queued", [1 if p == "normal" else 0 for p in PRIORITIES]) in response.context["active_rows"]
    assert "<script" not in page


def test_the_p95_line_is_drawn_over_p99_in_a_style_of_its_own_with_a_legend(staff_client, known_jobs):
    """Where p95 equals p99 (an hour of few jobs), the narrower dashed p95 line is drawn
    on top of the wider p99 one, and p50 on top of both; the legend shows each style."""
    hourly_analytics.download_analytics_refresh()

    page = staff_client.get(reverse(PAGE)).text
    chart = page.split('<figure class="analytics-chart"')[2].split("</figure>")[0]

    assert 'aria-labelledby="chart-durations-title' in chart
    order = [chart.index(f'class="series-{name}"') for name in ("p99", "p95", "p50")]
    assert order == sorted(order)
    p99, p95, p50 = (
        chart.split(f'class="series-{name}">')[1].split("/>")[0] for name in ("p99", "p95", "p50")
    )
    assert 'stroke-width="6.0"' in p99
    assert "stroke-dasharray" not in p99
    assert 'stroke-width="3.0" stroke-dasharray="6 3"' in p95
    assert 'stroke-width="1.5"' in p50
    assert len({COLORS["p50"], COLORS["p95"], COLORS["p99"]}) == 3
    for key in ("p50 (solid, circles)", "p95 (dashed, diamonds)", "p99 (solid, squares)"):
        assert key in chart, key


def test_the_page_says_so_when_the_broker_cannot_be_read(staff_client, monkeypatch):
    def unreachable() -> dict[str, int]:
        raise redis.ConnectionError("broker down")

    monkeypatch.setattr(broker, "queue_depths", unreachable)  # named fake: a broker outage

    response = staff_client.get(reverse(PAGE))

    assert response.status_code == 200
    assert "The broker could not be read." in response.text
    assert "No jobs were created in the last 7 days." in response.text


def test_the_changelist_links_to_the_page(staff_client):
    response = staff_client.get(reverse("admin:jobs_downloadjob_changelist"))
    assert f'href="{reverse(PAGE)}"' in response.text


def test_the_page_refuses_non_staff(user):
    client = Client()
    client.force_login(user)

    response = client.get(reverse(PAGE))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_the_page_refuses_staff_without_the_view_permission(db):
    clerk = User.objects.create_user("clerk", password="x", is_staff=True)
    client = Client()
    client.force_login(clerk)
    assert client.get(reverse(PAGE)).status_code == 403

    clerk.user_permissions.add(Permission.objects.get(codename="view_downloadjob"))
    client.force_login(User.objects.get(pk=clerk.pk))
    assert client.get(reverse(PAGE)).status_code == 200
