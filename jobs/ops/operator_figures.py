"""Reads for the operators' overview in the admin: what is failing and why, since when;
who uses the service most; how long the oldest job of each priority has waited. Each is
a few grouped queries over indexed columns, run when the page is asked for."""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Case, Count, F, Max, Min, Q, Sum, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from jobs.models import AttemptOutcome, DownloadJob, JobAttempt, Status

FAILURE_WINDOW = timedelta(days=7)
HEAVY_USERS_SHOWN = 10


@dataclass(frozen=True)
class FailureCode:
    error_code: str
    jobs_failed: int  # jobs that ended failed with it
    attempts_failed: int  # attempts that ended with it, retried or not
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True)
class UserUsage:
    username: str
    jobs_24h: int
    bytes_24h: int
    failed_24h: int
    jobs_7d: int
    bytes_7d: int
    failed_7d: int


def failures_by_code(*, now: datetime | None = None) -> list[FailureCode]:
    """Each error code seen in the last 7 days, from the jobs that failed with it and the
    attempts that ended with it (attempts retried show a fault before any job fails of it),
    most jobs failed first."""
    since = (now or timezone.now()) - FAILURE_WINDOW
    jobs = (
        DownloadJob.objects.filter(status=Status.FAILED, failed_at__gte=since)
        .exclude(error_code="")
        .values("error_code")
        .annotate(n=Count("pk"), first=Min("failed_at"), last=Max("failed_at"))
    )
    attempts = (
        JobAttempt.objects.filter(
            outcome__in=(AttemptOutcome.RETRIED, AttemptOutcome.FAILED), ended_at__gte=since
        )
        .exclude(error_code="")
        .values("error_code")
        .annotate(n=Count("pk"), first=Min("ended_at"), last=Max("ended_at"))
    )
    found: dict[str, FailureCode] = {}
    for row in jobs:
        code = row["error_code"]
        found[code] = FailureCode(code, row["n"], 0, row["first"], row["last"])
    for row in attempts:
        code = row["error_code"]
        seen = found.get(code)
        found[code] = FailureCode(
            code,
            seen.jobs_failed if seen else 0,
            row["n"],
            min(row["first"], seen.first_seen) if seen else row["first"],
            max(row["last"], seen.last_seen) if seen else row["last"],
        )
    return sorted(found.values(), key=lambda f: (-f.jobs_failed, -f.attempts_failed, f.error_code))


def heavy_users(*, now: datetime | None = None, limit: int = HEAVY_USERS_SHOWN) -> list[UserUsage]:
    """The users who created the most jobs in the last 7 days, with their jobs, bytes
    stored (completed files) and failed jobs over 24 hours and 7 days."""
    now = now or timezone.now()
    day, week = Q(created_at__gte=now - timedelta(hours=24)), Q(created_at__gte=now - timedelta(days=7))
    completed, failed = Q(status=Status.COMPLETED), Q(status=Status.FAILED)
    rows = (
        DownloadJob.objects.filter(week)
        .values("owner__username")
        .annotate(
            jobs_24h=Count("pk", filter=day),
            bytes_24h=Coalesce(Sum("file_size_bytes", filter=day & completed), 0),
            failed_24h=Count("pk", filter=day & failed),
            jobs_7d=Count("pk"),
            bytes_7d=Coalesce(Sum("file_size_bytes", filter=completed), 0),
            failed_7d=Count("pk", filter=failed),
        )
        .order_by("-jobs_7d", "-bytes_7d", "owner__username")[:limit]
    )
    return [
        UserUsage(
            username=row["owner__username"],
            jobs_24h=row["jobs_24h"],
            bytes_24h=row["bytes_24h"],
            failed_24h=row["failed_24h"],
            jobs_7d=row["jobs_7d"],
            bytes_7d=row["bytes_7d"],
            failed_7d=row["failed_7d"],
        )
        for row in rows
    ]


def oldest_queued_age_s(*, now: datetime | None = None) -> dict[str, float | None]:
    """Per priority, how long the queued job that has waited longest for a worker has
    waited, in seconds (None: no job is waiting). A job is waiting from its `due_since`:
    its retry's time, else its creation, else its last change; one whose retry is not due
    yet is not waiting."""
    now = now or timezone.now()
    waiting_since = Coalesce(
        "next_retry_at", Case(When(attempts=0, then=F("created_at")), default=F("updated_at"))
    )
    rows = (
        DownloadJob.objects.filter(status=Status.QUEUED)
        .annotate(waiting_since=waiting_since)
        .filter(waiting_since__lte=now)
        .values("priority")
        .annotate(oldest=Min("waiting_since"))
    )
    oldest = {row["priority"]: row["oldest"] for row in rows}
    return {
        priority: (now - oldest[priority]).total_seconds() if priority in oldest else None
        for priority in ("high", "normal", "low")
    }
