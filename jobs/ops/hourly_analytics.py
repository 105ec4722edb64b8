"""Hourly download analytics over the last 7 days: `download_analytics`.

On PostgreSQL the figures are a materialized view (migration 0003) that beat refreshes
concurrently every minute (`download_analytics_refresh`), so the admin page reads a small
table instead of scanning the jobs; they are at most one refresh old. On SQLite, the
embedded default, there is no such view and the same figures are computed in Python from
the jobs; percentiles interpolate linearly like PostgreSQL's `percentile_cont`, so both
backends give the same numbers for the same jobs.
"""

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db import connection
from django.utils import timezone

from jobs.models import DownloadAnalyticsHour, DownloadJob, Status

WINDOW = timedelta(days=7)
VIEW = "download_analytics"


@dataclass(frozen=True)
class AnalyticsHour:
    hour: datetime
    total_jobs: int
    completed: int
    failed: int
    cancelled: int
    avg_duration_s: float | None
    p50_duration_s: float | None
    p95_duration_s: float | None
    p99_duration_s: float | None
    # Sizes of completed jobs' files written to storage (not bytes downloaded by users).
    bytes_staged: int

    @property
    def success_rate(self) -> float | None:
        """Completed over the jobs that ended completed or failed (None if none did)."""
        ended = self.completed + self.failed
        return self.completed / ended if ended else None


def uses_view() -> bool:
    return connection.vendor == "postgresql"


def percentile_cont(values: list[float], fraction: float) -> float | None:
    """PostgreSQL's percentile_cont: linear interpolation between the sorted values at
    position fraction * (n - 1). None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    lower = math.floor(position)
    upper = math.ceil(position)
    if lower == upper:
        return ordered[lower]
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def download_analytics_hourly() -> list[AnalyticsHour]:
    """One row per hour with jobs created in the last 7 days, newest first."""
    if uses_view():
        return [
            AnalyticsHour(
                hour=row.hour,
                total_jobs=row.total_jobs,
                completed=row.completed,
                failed=row.failed,
                cancelled=row.cancelled,
                avg_duration_s=row.avg_duration_s,
                p50_duration_s=row.p50_duration_s,
                p95_duration_s=row.p95_duration_s,
                p99_duration_s=row.p99_duration_s,
                bytes_staged=row.bytes_staged,
            )
            for row in DownloadAnalyticsHour.objects.order_by("-hour")
        ]
    return download_analytics_hourly_computed()


def download_analytics_hourly_computed(*, now: datetime | None = None) -> list[AnalyticsHour]:
    """The view's figures computed in Python from the jobs (any backend)."""
    since = (now or timezone.now()) - WINDOW
    rows = DownloadJob.objects.filter(created_at__gte=since).values_list(
        "created_at", "status", "duration_seconds", "file_size_bytes"
    )
    hours: dict[datetime, list[tuple[str, float | None, int | None]]] = defaultdict(list)
    for created_at, status, duration, size in rows.iterator(chunk_size=2000):
        hour = created_at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        hours[hour].append((status, duration, size))
    result = []
    for hour, jobs in sorted(hours.items(), reverse=True):
        completed = [(duration, size) for status, duration, size in jobs if status == Status.COMPLETED]
        durations = [duration for duration, _ in completed if duration is not None]
        result.append(
            AnalyticsHour(
                hour=hour,
                total_jobs=len(jobs),
                completed=len(completed),
                failed=sum(1 for status, _, _ in jobs if status == Status.FAILED),
                cancelled=sum(1 for status, _, _ in jobs if status == Status.CANCELLED),
                avg_duration_s=sum(durations) / len(durations) if durations else None,
                p50_duration_s=percentile_cont(durations, 0.5),
                p95_duration_s=percentile_cont(durations, 0.95),
                p99_duration_s=percentile_cont(durations, 0.99),
                bytes_staged=sum(size for _, size in completed if size is not None),
            )
        )
    return result


def download_analytics_refresh() -> bool:
    """Refreshes the view without blocking its readers; False (nothing to do) on SQLite."""
    if not uses_view():
        return False
    with connection.cursor() as cursor:
        cursor.execute(f"REFRESH MATERIALIZED VIEW CONCURRENTLY {VIEW}")
    return True
