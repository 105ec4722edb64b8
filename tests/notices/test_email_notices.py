"""E-mail notices through the API and the services: what `notify` records, what a job's end
makes due, and that one notice is sent once, whoever tries to send it. Mail goes to
Django's in-memory outbox (pytest-django's test backend); the real SMTP path runs end to
end in tests/e2e/test_email_notices.py."""

import smtplib
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.core.mail.backends.locmem import EmailBackend
from django.db import transaction
from django.utils import timezone

from jobs.errors import ErrorCode, JobError
from jobs.models import DownloadJob, Status
from jobs.services.attempt_end import attempt_fail
from jobs.services.writes import transition
from notices import services
from notices.models import EmailEvent, EmailNotice
from notices.services import SendOutcome
from tests.services.test_reuse import staged_job

INITIATE = "/v1/download/initiate"
BACKOFF_S = [10.0, 60.0]


@pytest.fixture
def notice_sends(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Named fake: the send task's queueing, recorded instead of sent to the broker."""
    sent: list[int] = []
    monkeypatch.setattr(services, "email_notice_task_send", sent.append)
    return sent


@pytest.fixture
def mailed_user(user: User) -> User:
    user.email = "alice@example.com"
    user.save(update_fields=["email"])
    return user


@pytest.fixture(autouse=True)
def _notice_settings(settings: Any) -> None:
    settings.SITE_URL = "https://downloads.example.com"
    settings.EMAIL_NOTICE_RETRY_BACKOFF_S = BACKOFF_S


def initiate(client: Any, **body: Any) -> Any:
    return client.post(INITIATE, {"file_id": 70000, **body}, format="json")


def complete(job: DownloadJob) -> None:
    """The terminal write of a completion, as the worker's (jobs/services/attempt_end.py)."""
    now = timezone.now()
    DownloadJob.objects.filter(pk=job.pk).update(status=Status.PROCESSING, attempts=1)
    job.refresh_from_db()
    with transaction.atomic():
        transition(
            job, Status.COMPLETED, attempt=1, file_name="report.pdf", completed_at=now,
            expires_at=now + timedelta(hours=24), progress=100,
        )  # fmt: skip


def fail(job: DownloadJob) -> None:
    DownloadJob.objects.filter(pk=job.pk).update(status=Status.PROCESSING, attempts=1, max_attempts=1)
    job.refresh_from_db()
    attempt_fail(job, attempt=1, error=JobError(ErrorCode.NETWORK_ERROR, "The origin hung up"))


def test_notify_names_only_known_channels(api_client, mailed_user, dispatched):
    response = initiate(api_client, notify=["sms"])
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"
    assert response.json()["error"]["fields"] == {"notify": {"0": ['"sms" is not a valid choice.']}}
    assert initiate(api_client, notify="email").status_code == 400
    assert DownloadJob.objects.count() == 0


def test_notify_email_without_an_address_is_refused(api_client, user, dispatched):
    response = initiate(api_client, notify=["email"])
    assert response.status_code == 400
    assert response.json() == {
        "success": False,
        "error": {"code": "EMAIL_MISSING", "message": "Your account has no e-mail address to notify"},
    }
    assert DownloadJob.objects.count() == 0


def test_a_completed_job_sends_one_email_with_the_page_link(
    api_client, mailed_user, dispatched, notice_sends, django_capture_on_commit_callbacks
):
    response = initiate(api_client, notify=["email", "email"])
    assert response.status_code == 200
    job = DownloadJob.objects.get(job_id=response.json()["data"]["job_id"])
    notice = EmailNotice.objects.get(job=job)
    assert (notice.recipient, notice.event, notice.due_at) == ("alice@example.com", "", None)
    assert notice_sends == []

    with django_capture_on_commit_callbacks(execute=True):
        complete(job)
    assert notice_sends == [notice.pk]

    assert services.email_notice_send(notice_pk=notice.pk).outcome is SendOutcome.SENT
    assert services.email_notice_send(notice_pk=notice.pk).outcome is SendOutcome.NOT_CLAIMED
    [message] = mail.outbox
    assert message.to == ["alice@example.com"]
    assert message.subject == "Your download is ready: report.pdf"
    assert f"https://downloads.example.com/#{job.job_id}\n" in message.body
    assert "/files/" not in message.body
    assert "X-Amz" not in message.body
    assert (
        message.extra_headers["Message-ID"]
        == f"<email-notice-{notice.pk}.{job.job_id}@downloads.example.com>"
    )
    notice.refresh_from_db()
    assert (notice.event, notice.attempts, notice.claimed_until) == (EmailEvent.COMPLETED, 1, None)
    assert notice.sent_at is not None


def test_a_failed_job_email_says_it_failed(api_client, mailed_user, dispatched, notice_sends):
    job_id = initiate(api_client, notify=["email"]).json()["data"]["job_id"]
    job = DownloadJob.objects.get(job_id=job_id)
    fail(job)
    notice = EmailNotice.objects.get(job=job)
    assert services.email_notice_send(notice_pk=notice.pk).outcome is SendOutcome.SENT
    [message] = mail.outbox
    assert message.subject == "Your download failed: file 70000"
    assert "failed: The origin hung up (NETWORK_ERROR)." in message.body


def test_a_cancelled_job_sends_nothing_and_its_retry_may_still(
    api_client, mailed_user, dispatched, notice_sends
):
    from jobs import services as job_services

    job_id = initiate(api_client, notify=["email"]).json()["data"]["job_id"]
    job = DownloadJob.objects.get(job_id=job_id)
    job_services.download_job_cancel(job=job)
    assert EmailNotice.objects.get(job=job).due_at is None
    job_services.download_job_retry(job=DownloadJob.objects.get(pk=job.pk))
    complete(DownloadJob.objects.get(pk=job.pk))
    assert EmailNotice.objects.get(job=job).event == EmailEvent.COMPLETED


def test_without_notify_the_default_decides_and_an_empty_list_sends_none(
    api_client, mailed_user, dispatched, notice_sends
):
    initiate(api_client)
    assert EmailNotice.objects.count() == 0
    assert (
        api_client.put(
            "/v1/notifications/preferences", {"email_when_finished": True}, format="json"
        ).status_code
        == 200
    )
    job_id = initiate(api_client).json()["data"]["job_id"]
    assert EmailNotice.objects.filter(job__job_id=job_id).count() == 1
    initiate(api_client, notify=[])
    assert EmailNotice.objects.count() == 1


def test_a_job_completed_at_once_from_a_stored_file_is_mailed_at_once(
    api_client, mailed_user, local_storage, dispatched, notice_sends, django_capture_on_commit_callbacks
):
    staged_job(mailed_user, local_storage, file_id=70000)
    with django_capture_on_commit_callbacks(execute=True):
        data = initiate(api_client, notify=["email"]).json()["data"]
    assert data["status"] == "completed"
    notice = EmailNotice.objects.get(job__job_id=data["job_id"])
    assert notice.event == EmailEvent.COMPLETED
    assert notice_sends == [notice.pk]


class RefusingBackend(EmailBackend):
    """Named fake: a mail server that refuses every message."""

    def send_messages(self, messages: Any) -> int:
        raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")


def test_a_failed_send_is_due_again_after_the_backoff_then_given_up(
    api_client, mailed_user, dispatched, settings
):
    job_id = initiate(api_client, notify=["email"]).json()["data"]["job_id"]
    fail(DownloadJob.objects.get(job_id=job_id))
    notice = EmailNotice.objects.get(job__job_id=job_id)
    settings.MAILERS = {"default": {"BACKEND": f"{__name__}.RefusingBackend"}}
    start = timezone.now()

    def at(offset_s: float) -> Any:
        return lambda: start + timedelta(seconds=offset_s)

    assert services.email_notice_send(notice_pk=notice.pk, clock=at(0)) == services.SendResult(
        SendOutcome.RETRY, retry_in_s=10.0
    )
    notice.refresh_from_db()
    assert (notice.attempts, notice.due_at, notice.claimed_until) == (1, start + timedelta(seconds=10), None)
    assert notice.last_error == "SMTPServerDisconnected: Connection unexpectedly closed"
    # Not due yet: a duplicate of the task does nothing.
    assert services.email_notice_send(notice_pk=notice.pk, clock=at(9)).outcome is SendOutcome.NOT_CLAIMED
    assert services.email_notice_send(notice_pk=notice.pk, clock=at(10)).retry_in_s == 60.0
    assert services.email_notice_send(notice_pk=notice.pk, clock=at(70)).outcome is SendOutcome.GAVE_UP
    assert services.email_notice_send(notice_pk=notice.pk, clock=at(1e6)).outcome is SendOutcome.NOT_CLAIMED
    notice.refresh_from_db()
    assert (notice.attempts, notice.sent_at, notice.failed_at) == (3, None, start + timedelta(seconds=70))
    assert mail.outbox == []


def test_a_claimed_notice_is_not_sent_by_another_until_the_claim_lapses(
    api_client, mailed_user, dispatched, notice_sends, settings
):
    job_id = initiate(api_client, notify=["email"]).json()["data"]["job_id"]
    complete(DownloadJob.objects.get(job_id=job_id))
    notice = EmailNotice.objects.get(job__job_id=job_id)
    now = timezone.now()
    # A sender took it and died mid-conversation.
    EmailNotice.objects.filter(pk=notice.pk).update(
        claimed_until=now + timedelta(seconds=settings.EMAIL_NOTICE_CLAIM_S)
    )
    notice_sends.clear()

    assert services.email_notices_sweep(now=now) == 0
    assert (
        services.email_notice_send(notice_pk=notice.pk, clock=lambda: now).outcome is SendOutcome.NOT_CLAIMED
    )
    later = now + timedelta(seconds=settings.EMAIL_NOTICE_CLAIM_S)
    assert services.email_notices_sweep(now=later) == 1
    assert notice_sends == [notice.pk]
    assert services.email_notice_send(notice_pk=notice.pk, clock=lambda: later).outcome is SendOutcome.SENT
    assert services.email_notices_sweep(now=later + timedelta(days=1)) == 0
    assert len(mail.outbox) == 1
