"""A job's admin page: compact (what an operator asks first on top, the technical fields
folded away), its Retry and Cancel buttons (the same services as the list's actions),
and its history of attempts. The broker send is the one fake (`dispatched`)."""

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from jobs import hotstate
from jobs.models import AttemptOutcome, DownloadJob, JobAttempt, Status
from tests import factories


def text(html: str) -> str:
    """What a cell shows: its text without tags (and the rest of its opening tag)."""
    return re.sub(r"<[^>]+>", "", html.split(">", 1)[1]).strip()


def page_url(job: DownloadJob) -> str:
    return reverse("admin:jobs_downloadjob_change", args=[job.pk])


def post(client: Client, job: DownloadJob, action: str, capture) -> list[str]:
    with capture(execute=True):
        response = client.post(reverse(f"admin:jobs_downloadjob_{action}", args=[job.pk]), follow=True)
    assert response.status_code == 200
    assert response.redirect_chain == [(page_url(job), 302)]
    return [str(message) for message in response.context["messages"]]


def test_the_page_puts_the_summary_first_and_folds_the_technical_fields(staff_client, user):
    job = factories.make_job(
        user,
        status=Status.FAILED,
        attempts=3,
        error_code="ORIGIN_UNAVAILABLE",
        error_message="Origin answered 503",
        error_retryable=True,
        progress=40,
        bytes_done=400 * 1024,
        bytes_total=1024 * 1024,
        storage_key="downloads/1/x-3",
    )

    response = staff_client.get(page_url(job))

    fieldsets = [(fs.name, fs.classes) for fs in response.context["adminform"]]
    assert fieldsets == [
        (None, ""),
        ("Timeline", "collapse"),
        ("Stored file", "collapse"),
        ("Request", "collapse"),
    ]
    summary = response.text.split('<fieldset class="module aligned ">')[1].split("</fieldset>")[0]
    for shown in (
        job.job_id,
        "Failed",
        "40 % (400.0 KiB of 1.0 MiB)",
        "3 / 3",
        "ORIGIN_UNAVAILABLE: Origin answered 503 (retryable)",
    ):
        assert shown in summary, shown
    assert "downloads/1/x-3" not in summary  # in "Stored file", folded


@pytest.mark.parametrize(
    ("status", "buttons"),
    [
        (Status.QUEUED, ["job-cancel"]),
        (Status.PROCESSING, ["job-cancel"]),
        (Status.FAILED, ["job-retry"]),
        (Status.CANCELLED, ["job-retry"]),
        (Status.COMPLETED, []),
    ],
)
def test_the_page_offers_the_buttons_the_jobs_state_allows(staff_client, user, status, buttons):
    job = factories.make_job(user, status=status)

    html = staff_client.get(page_url(job)).text

    assert [b for b in ("job-retry", "job-cancel") if f'id="{b}"' in html] == buttons


def test_retry_queues_a_failed_job_again(staff_client, user, dispatched, django_capture_on_commit_callbacks):
    job = factories.make_job(user, status=Status.FAILED, attempts=3, failed_at=timezone.now(), error_code="X")

    messages = post(staff_client, job, "retry", django_capture_on_commit_callbacks)

    job.refresh_from_db()
    assert (job.status, job.error_code, job.max_attempts) == (Status.QUEUED, "", 6)
    assert messages == [f"Queued {job.job_id} again."]
    assert [call["args"] for call in dispatched] == [(job.pk,)]


def test_cancel_cancels_a_processing_job(staff_client, user, django_capture_on_commit_callbacks):
    job = factories.make_job(user, status=Status.PROCESSING, attempts=1, started_at=timezone.now())
    JobAttempt.objects.create(job=job, number=1, started_at=job.started_at)

    messages = post(staff_client, job, "cancel", django_capture_on_commit_callbacks)

    job.refresh_from_db()
    assert job.status == Status.CANCELLED
    assert messages == [f"Cancelled {job.job_id}."]
    assert hotstate.cancel_flag_is_set(job.job_id)
    assert JobAttempt.objects.get(job=job).outcome == AttemptOutcome.CANCELLED


def test_a_button_the_state_no_longer_allows_is_refused(
    staff_client, user, django_capture_on_commit_callbacks
):
    job = factories.make_job(user, status=Status.COMPLETED)

    assert post(staff_client, job, "cancel", django_capture_on_commit_callbacks) == [
        f"Refused: {job.job_id} is completed, which does not allow it."
    ]
    assert post(staff_client, job, "retry", django_capture_on_commit_callbacks)[0].startswith("Refused")
    job.refresh_from_db()
    assert job.status == Status.COMPLETED


def test_the_buttons_are_posts_of_staff_who_may_change_jobs(staff_client, user):
    job = factories.make_job(user)
    viewer = User.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_downloadjob"))
    client = Client()
    client.force_login(viewer)

    assert staff_client.get(reverse("admin:jobs_downloadjob_cancel", args=[job.pk])).status_code == 405
    assert 'id="job-cancel"' not in client.get(page_url(job)).text
    assert client.post(reverse("admin:jobs_downloadjob_cancel", args=[job.pk])).status_code == 403
    assert staff_client.post(reverse("admin:jobs_downloadjob_cancel", args=[999999])).status_code == 404
    job.refresh_from_db()
    assert job.status == Status.QUEUED


def test_the_page_lists_the_jobs_attempts_newest_first_read_only(staff_client, user):
    job = factories.make_job(user, status=Status.COMPLETED, attempts=2)
    start = timezone.now() - timedelta(minutes=5)
    JobAttempt.objects.create(
        job=job,
        number=1,
        started_at=start,
        ended_at=start + timedelta(seconds=30),
        outcome=AttemptOutcome.RETRIED,
        error_code="NETWORK_ERROR",
        bytes_done=5 * 1024**2,
        worker="worker-a:101",
    )
    JobAttempt.objects.create(
        job=job,
        number=2,
        started_at=start + timedelta(seconds=40),
        ended_at=start + timedelta(seconds=90),
        outcome=AttemptOutcome.COMPLETED,
        bytes_done=12 * 1024**2,
        worker="worker-b:202",
    )
    viewer = User.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_downloadjob"))
    client = Client()
    client.force_login(viewer)

    for html in (staff_client.get(page_url(job)).text, client.get(page_url(job)).text):
        inline = html.split('id="attempt_log-group"')[1].split("</fieldset>")[0]
        rows = [row for row in inline.split("<tr")[2:] if "field-number" in row]
        cells = [
            [text(cell.split("</td>")[0]) for cell in row.split('<td class="field-')[1:]] for row in rows
        ]
        assert [row[0] for row in cells] == ["2", "1"]
        assert [row[3:] for row in cells] == [
            ["Completed", "-", "12.0 MiB", "worker-b:202"],
            ["Retried", "NETWORK_ERROR", "5.0 MiB", "worker-a:101"],
        ]
        assert 'name="attempt_log-0-outcome"' not in inline  # nothing to edit
