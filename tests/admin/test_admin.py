"""The admin through its HTTP pages, as a staff superuser would use it: the job list with
its filters and search, the read-only job page, the actions (which call the services) and
the link from a user to their downloads. The broker send is the one fake (`dispatched`)."""

from datetime import timedelta
from functools import partial
from typing import Any

from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from jobs import hotstate
from jobs.admin import downloads as jobs_admin
from jobs.models import DownloadJob, Priority, Status
from tests import factories

CHANGELIST = "admin:jobs_downloadjob_changelist"


make_job = partial(factories.make_job, file_id=1000)


def listed(response: Any) -> set[str]:
    assert response.status_code == 200
    return {job.job_id for job in response.context["cl"].result_list}


def change_url(job: DownloadJob) -> str:
    return reverse("admin:jobs_downloadjob_change", args=[job.pk])


def run_action(client: Client, action: str, jobs: list[DownloadJob], capture: Any) -> list[str]:
    """Posts the action for the selected rows (commit callbacks run); returns the messages."""
    with capture(execute=True):
        response = client.post(
            reverse(CHANGELIST),
            {"action": action, "_selected_action": [job.pk for job in jobs]},
            follow=True,
        )
    assert response.status_code == 200
    return [str(message) for message in response.context["messages"]]


def statuses(*jobs: DownloadJob) -> list[str]:
    return [DownloadJob.objects.get(pk=job.pk).status for job in jobs]


# --- pages and who may see them -------------------------------------------------------------


def test_the_changelist_lists_every_job_for_staff(staff_client, user, other_user):
    jobs = [make_job(user), make_job(other_user, status=Status.FAILED)]

    response = staff_client.get(reverse(CHANGELIST))

    assert listed(response) == {job.job_id for job in jobs}
    assert f"{jobs[0].owner.username}" in response.text


def test_the_changelist_filters(staff_client, user):
    now = timezone.now()
    queued = make_job(user)
    high = make_job(user, priority=Priority.HIGH)
    dead = make_job(user, status=Status.FAILED, dead_lettered_at=now, failed_at=now)
    failed = make_job(user, status=Status.FAILED, failed_at=now)
    old = make_job(user, status=Status.COMPLETED)
    DownloadJob.objects.filter(pk=old.pk).update(created_at=now - timedelta(days=400))
    url = reverse(CHANGELIST)
    recent = {queued.job_id, high.job_id, dead.job_id, failed.job_id}

    assert listed(staff_client.get(url, {"status__exact": "failed"})) == {dead.job_id, failed.job_id}
    assert listed(staff_client.get(url, {"priority__exact": "high"})) == {high.job_id}
    assert listed(staff_client.get(url, {"dead_lettered": "yes"})) == {dead.job_id}
    assert listed(staff_client.get(url, {"dead_lettered": "no"})) == recent - {dead.job_id} | {old.job_id}
    past_week = {"created_at__gte": (now - timedelta(days=7)).isoformat()}
    assert listed(staff_client.get(url, past_week)) == recent
    assert listed(staff_client.get(url, {"created_at__year": timezone.localtime(now).year})) == recent


def test_the_changelist_searches_by_job_id_username_and_file_id(staff_client, user, other_user):
    first = make_job(user, file_id=111)
    second = make_job(user, file_id=222)
    third = make_job(other_user, file_id=111)
    url = reverse(CHANGELIST)

    assert listed(staff_client.get(url, {"q": second.job_id})) == {second.job_id}
    assert listed(staff_client.get(url, {"q": "bob"})) == {third.job_id}
    assert listed(staff_client.get(url, {"q": "111"})) == {first.job_id, third.job_id}
    assert listed(staff_client.get(url, {"q": "nobody"})) == set()


def test_the_job_page_is_read_only(staff_client, user):
    job = make_job(user, status=Status.FAILED, error_code="FILE_NOT_FOUND")

    response = staff_client.get(change_url(job))

    assert response.status_code == 200
    assert job.job_id in response.text
    assert "FILE_NOT_FOUND" in response.text
    assert 'name="_save"' not in response.text
    assert staff_client.post(change_url(job), {"status": "queued"}).status_code == 403
    job.refresh_from_db()
    assert job.status == Status.FAILED


def test_jobs_cannot_be_added_or_deleted_in_the_admin(staff_client, user):
    job = make_job(user)

    assert staff_client.get(reverse("admin:jobs_downloadjob_add")).status_code == 403
    assert staff_client.get(reverse("admin:jobs_downloadjob_delete", args=[job.pk])).status_code == 403
    assert DownloadJob.objects.filter(pk=job.pk).exists()


def test_the_admin_refuses_a_user_who_is_not_staff(user):
    job = make_job(user)
    client = Client()
    client.force_login(user)

    for url in (reverse(CHANGELIST), change_url(job)):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"] == f"{reverse('admin:login')}?next={url}"


# --- actions --------------------------------------------------------------------------------


def test_cancel_cancels_the_selected_active_jobs_and_refuses_the_others(
    staff_client, user, django_capture_on_commit_callbacks
):
    queued = make_job(user)
    processing = make_job(user, status=Status.PROCESSING, attempts=1)
    completed = make_job(user, status=Status.COMPLETED)
    unselected = make_job(user)

    messages = run_action(
        staff_client, "cancel_jobs", [queued, processing, completed], django_capture_on_commit_callbacks
    )

    assert statuses(queued, processing, completed, unselected) == [
        Status.CANCELLED,
        Status.CANCELLED,
        Status.COMPLETED,
        Status.QUEUED,
    ]
    assert messages == [
        "Cancelled 2 job(s).",
        f"Refused 1 job(s) not in a state that allows it: {completed.job_id}.",
    ]
    assert [hotstate.cancel_flag_is_set(job.job_id) for job in (queued, processing, unselected)] == [
        True,
        True,
        False,
    ]


def test_retry_queues_the_selected_failed_and_cancelled_jobs_as_new_attempts(
    staff_client, user, settings, dispatched, django_capture_on_commit_callbacks
):
    settings.JOB_MAX_ATTEMPTS = 3
    now = timezone.now()
    failed = make_job(
        user,
        status=Status.FAILED,
        attempts=3,
        failed_at=now,
        dead_lettered_at=now,
        error_code="ORIGIN_UNAVAILABLE",
        error_message="Origin answered 503",
        error_retryable=True,
        progress=40,
        bytes_done=400,
        bytes_total=1000,
    )
    cancelled = make_job(user, status=Status.CANCELLED, attempts=1, cancelled_at=now, priority=Priority.HIGH)
    hotstate.cancel_flag_set(cancelled.job_id)
    queued = make_job(user)
    processing = make_job(user, status=Status.PROCESSING, attempts=1)
    completed = make_job(user, status=Status.COMPLETED)
    unselected = make_job(user, status=Status.FAILED, failed_at=now)

    messages = run_action(
        staff_client,
        "retry_jobs",
        [failed, cancelled, queued, processing, completed],
        django_capture_on_commit_callbacks,
    )

    assert statuses(failed, cancelled, queued, processing, completed, unselected) == [
        Status.QUEUED,
        Status.QUEUED,
        Status.QUEUED,
        Status.PROCESSING,
        Status.COMPLETED,
        Status.FAILED,
    ]
    assert messages == [
        "Queued again 2 job(s).",
        "Refused 3 job(s) not in a state that allows it: "
        f"{queued.job_id}, {processing.job_id}, {completed.job_id}.",
    ]
    failed.refresh_from_db()
    assert (failed.attempts, failed.max_attempts) == (3, 6)
    assert (failed.failed_at, failed.dead_lettered_at, failed.next_retry_at) == (None, None, None)
    assert (failed.error_code, failed.error_message, failed.error_retryable) == ("", "", None)
    assert (failed.progress, failed.bytes_done, failed.bytes_total) == (0, 0, None)
    cancelled.refresh_from_db()
    assert (cancelled.attempts, cancelled.max_attempts, cancelled.cancelled_at) == (1, 4, None)
    assert not hotstate.cancel_flag_is_set(cancelled.job_id)
    assert sorted(dispatched, key=lambda call: call["args"]) == [
        {"args": (failed.pk,), "queue": "downloads.normal", "countdown": 0},
        {"args": (cancelled.pk,), "queue": "downloads.high", "countdown": 0},
    ]


def test_requeue_dead_lettered_queues_only_dead_lettered_failed_jobs(
    staff_client, user, dispatched, django_capture_on_commit_callbacks
):
    now = timezone.now()
    dead = make_job(user, status=Status.FAILED, attempts=3, failed_at=now, dead_lettered_at=now)
    failed = make_job(user, status=Status.FAILED, attempts=1, failed_at=now)
    cancelled = make_job(user, status=Status.CANCELLED, cancelled_at=now)

    messages = run_action(
        staff_client,
        "requeue_dead_lettered_jobs",
        [dead, failed, cancelled],
        django_capture_on_commit_callbacks,
    )

    assert statuses(dead, failed, cancelled) == [Status.QUEUED, Status.FAILED, Status.CANCELLED]
    assert messages[0] == "Queued again 1 job(s)."
    assert messages[1].startswith("Refused 2 job(s) not in a state that allows it: ")
    assert [call["args"] for call in dispatched] == [(dead.pk,)]


def test_an_action_over_all_matching_rows_goes_through_them_in_chunks(
    staff_client, user, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(jobs_admin, "ACTION_CHUNK_ROWS", 2)
    jobs = [make_job(user) for _ in range(5)]
    finished = make_job(user, status=Status.FAILED)

    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(
            reverse(CHANGELIST),
            {"action": "cancel_jobs", "select_across": "1", "_selected_action": [jobs[0].pk]},
            follow=True,
        )

    assert statuses(*jobs, finished) == [Status.CANCELLED] * 5 + [Status.FAILED]
    assert [str(message) for message in response.context["messages"]] == [
        "Cancelled 5 job(s).",
        f"Refused 1 job(s) not in a state that allows it: {finished.job_id}.",
    ]


def test_many_refusals_are_summarised(staff_client, user, django_capture_on_commit_callbacks):
    jobs = [make_job(user, status=Status.COMPLETED) for _ in range(12)]

    messages = run_action(staff_client, "cancel_jobs", jobs, django_capture_on_commit_callbacks)

    assert len(messages) == 1
    assert messages[0].startswith("Refused 12 job(s) not in a state that allows it: ")
    assert messages[0].endswith(" and 2 more.")


def test_a_staff_user_who_may_only_view_jobs_cannot_run_actions(user, django_capture_on_commit_callbacks):
    viewer = User.objects.create_user("viewer", password="viewer-password", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_downloadjob"))
    client = Client()
    client.force_login(viewer)
    job = make_job(user)

    assert listed(client.get(reverse(CHANGELIST))) == {job.job_id}
    messages = run_action(client, "cancel_jobs", [job], django_capture_on_commit_callbacks)

    assert statuses(job) == [Status.QUEUED]
    assert not any(message.startswith("Cancelled") for message in messages)


# --- from a user to their downloads ---------------------------------------------------------


def test_the_user_page_links_to_their_download_history(staff_client, user, other_user):
    mine = [make_job(user), make_job(user, status=Status.FAILED)]
    make_job(other_user)

    response = staff_client.get(reverse("admin:auth_user_change", args=[user.pk]))

    assert response.status_code == 200
    history_url = f"{reverse(CHANGELIST)}?owner__id__exact={user.pk}"
    assert f'<a href="{history_url}">2 download job(s)</a>' in response.text
    assert listed(staff_client.get(history_url)) == {job.job_id for job in mine}


def test_the_add_user_page_still_works(staff_client):
    assert staff_client.get(reverse("admin:auth_user_add")).status_code == 200
