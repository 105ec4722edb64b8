"""The operators' overview (the operations and analytics page) through its HTTP page:
reached from the admin's index and the job list, what is failing and since when, the
heaviest users, and how long the oldest job of each priority has waited."""

from datetime import datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from jobs.models import AttemptOutcome, DownloadJob, JobAttempt, Priority, Status
from jobs.ops import operator_figures
from jobs.ops.operator_figures import FailureCode, UserUsage
from tests import factories

PAGE = "admin:jobs_downloadjob_analytics"


@pytest.fixture
def now() -> datetime:
    return timezone.now().replace(microsecond=0)


def make_job(owner, *, created_at: datetime, **fields) -> DownloadJob:
    job = factories.make_job(owner, **fields)
    # created_at and updated_at are set by Django on save: set them afterwards.
    DownloadJob.objects.filter(pk=job.pk).update(created_at=created_at, updated_at=created_at)
    job.refresh_from_db()
    return job


def test_the_index_and_the_job_list_link_to_the_page(staff_client):
    index = staff_client.get(reverse("admin:index")).text
    changelist = staff_client.get(reverse("admin:jobs_downloadjob_changelist")).text

    link = f'<a href="{reverse(PAGE)}">Operations and analytics</a>'
    assert link in index
    assert link in changelist


def test_the_breadcrumb_names_the_app_once_then_the_page(staff_client):
    page = staff_client.get(reverse(PAGE)).text
    crumbs = page.split('<div class="breadcrumbs">')[1].split("</div>")[0]

    assert " ".join(crumbs.split()) == (
        f'<a href="{reverse("admin:index")}">Home</a> &rsaquo; '
        f'<a href="{reverse("admin:app_list", args=["jobs"])}">Download jobs</a> &rsaquo; '
        "Operations and analytics"
    )


def test_failures_are_grouped_by_error_code_with_first_and_last_seen(staff_client, user, now):
    t = [now - timedelta(hours=h) for h in (50, 30, 10, 2)]
    for failed_at in (t[0], t[2]):
        make_job(
            user, created_at=failed_at, status=Status.FAILED, error_code="FILE_NOT_FOUND", failed_at=failed_at
        )
    make_job(
        user,
        created_at=now - timedelta(days=9),
        status=Status.FAILED,
        error_code="FILE_NOT_FOUND",
        failed_at=now - timedelta(days=9),
    )  # too old to count
    retried = make_job(user, created_at=t[1], status=Status.COMPLETED, attempts=3)
    for number, ended_at, outcome, code in (
        (1, t[1], AttemptOutcome.RETRIED, "NETWORK_ERROR"),
        (2, t[3], AttemptOutcome.RETRIED, "NETWORK_ERROR"),
        (3, t[3], AttemptOutcome.COMPLETED, ""),
    ):
        JobAttempt.objects.create(
            job=retried,
            number=number,
            started_at=ended_at,
            ended_at=ended_at,
            outcome=outcome,
            error_code=code,
        )
    JobAttempt.objects.create(
        job=DownloadJob.objects.get(failed_at=t[2]),
        number=1,
        started_at=t[2],
        ended_at=t[2],
        outcome=AttemptOutcome.FAILED,
        error_code="FILE_NOT_FOUND",
    )

    response = staff_client.get(reverse(PAGE))

    assert response.context["failures"] == [
        FailureCode("FILE_NOT_FOUND", 2, 1, t[0], t[2]),
        FailureCode("NETWORK_ERROR", 0, 2, t[1], t[3]),
    ]
    table = response.text.split('id="failures-by-code"')[1].split("</table>")[0]
    changelist = reverse("admin:jobs_downloadjob_changelist")
    assert f'<a href="{changelist}?error_code__exact=FILE_NOT_FOUND">FILE_NOT_FOUND</a>' in table
    assert f"<td>{timezone.localtime(t[0]):%Y-%m-%d %H:%M}</td>" in table
    # The link lists those jobs.
    listed = staff_client.get(changelist, {"error_code__exact": "FILE_NOT_FOUND"}).context["cl"].result_list
    assert len(listed) == 3


def test_nothing_failing_says_so(staff_client):
    assert "Nothing failed in the last 7 days." in staff_client.get(reverse(PAGE)).text


def test_the_heaviest_users_over_24_hours_and_7_days(staff_client, user, other_user, now):
    for hours_ago, status, size in (
        (1, Status.COMPLETED, 3 * 1024**2),
        (30, Status.COMPLETED, 1024),
        (2, Status.FAILED, None),
    ):
        make_job(user, created_at=now - timedelta(hours=hours_ago), status=status, file_size_bytes=size)
    make_job(user, created_at=now - timedelta(days=8), status=Status.COMPLETED, file_size_bytes=10**9)
    make_job(other_user, created_at=now - timedelta(hours=3), status=Status.COMPLETED, file_size_bytes=2048)

    response = staff_client.get(reverse(PAGE))

    assert [usage for usage, _, _ in response.context["users"]] == [
        UserUsage(user.username, 2, 3 * 1024**2, 1, 3, 3 * 1024**2 + 1024, 1),
        UserUsage(other_user.username, 1, 2048, 0, 1, 2048, 0),
    ]
    table = response.text.split('id="heavy-users"')[1].split("</table>")[0]
    assert f'<td title="{3 * 1024**2} bytes">3.0 MiB</td>' in table
    assert f'<td title="{3 * 1024**2 + 1024} bytes">3.0 MiB</td>' in table


def test_the_oldest_waiting_job_per_priority(staff_client, user, now):
    make_job(user, created_at=now - timedelta(minutes=30), priority=Priority.HIGH)
    make_job(user, created_at=now - timedelta(minutes=5), priority=Priority.HIGH)
    # Waiting for a retry that is not due yet: not waiting for a worker.
    make_job(user, created_at=now - timedelta(hours=5), next_retry_at=now + timedelta(minutes=1), attempts=1)
    # Its retry came due 10 minutes ago.
    make_job(user, created_at=now - timedelta(hours=5), next_retry_at=now - timedelta(minutes=10), attempts=1)
    make_job(user, created_at=now - timedelta(hours=9), priority=Priority.LOW, status=Status.PROCESSING)

    ages = operator_figures.oldest_queued_age_s(now=now)
    page = staff_client.get(reverse(PAGE))

    assert ages == {"high": 1800.0, "normal": 600.0, "low": None}
    assert page.context["oldest"] == ["30 min", "10 min", "-"]
    row = page.text.split('id="oldest-queued"')[1].split("</tr>")[0]
    assert "<td>30 min</td>" in row
