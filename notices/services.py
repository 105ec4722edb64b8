"""Writes of the notices: the outbox rows a job's request and its end make, and the one
send of each.

A notice is sent at least once and, short of a crash in the instant between the mail
server's acceptance and the row's `sent_at`, exactly once: a sender claims the row with a
conditional update before it sends, and the claim lasts EMAIL_NOTICE_CLAIM_S, longer than
one SMTP conversation may take (EMAIL_TIMEOUT_S). The message carries a Message-ID made
from the row, the same on every try, so a mail system that sees it twice can tell.
"""

import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from celery import current_app
from django.conf import settings
from django.contrib.auth.models import User
from django.core.mail import EmailMessage
from django.db import transaction
from django.db.models import F, Q
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from jobs.models import DownloadJob, Status
from jobs.queues import MAINTENANCE_QUEUE
from notices.models import EmailEvent, EmailNotice, NotificationPreference

logger = logging.getLogger(__name__)

SEND_TASK = "notices.email_notice_send"
_EVENT_OF_STATUS: dict[str, str] = {Status.COMPLETED: EmailEvent.COMPLETED, Status.FAILED: EmailEvent.FAILED}


def email_notice_task_send(notice_pk: int) -> None:
    """Queues the send task of a notice, by name, on the maintenance queue (which every
    worker serves first, so a backlog of downloads never holds a notice up)."""
    current_app.send_task(SEND_TASK, args=(notice_pk,), queue=MAINTENANCE_QUEUE)


def email_notice_send_on_commit(notice: EmailNotice) -> None:
    """Queues the notice's send once the transaction commits. A broker fault is logged:
    beat's sweep sends it later."""

    def send() -> None:
        try:
            email_notice_task_send(notice.pk)
        except Exception:
            logger.warning("Could not queue e-mail notice %s; the sweep sends it", notice.pk, exc_info=True)

    transaction.on_commit(send, robust=True)


def _due(notice: EmailNotice, event: str, now: datetime) -> None:
    notice.event = event
    notice.due_at = now
    notice.save(update_fields=["event", "due_at"])
    email_notice_send_on_commit(notice)


def email_notice_request(*, job: DownloadJob, notify: Sequence[str] | None) -> EmailNotice | None:
    """Records that the job's end is to be mailed to its owner, if `notify` names "email"
    or, without `notify`, the owner's default says so (and the account has an address). A
    job created completed (reuse) is due at once. Runs in the job's creating transaction."""
    owner = job.owner
    if notify is None:
        wanted = NotificationPreference.objects.filter(user=owner, email_when_finished=True).exists()
    else:
        wanted = "email" in notify
    if not wanted or not owner.email:
        return None
    notice = EmailNotice.objects.create(job=job, recipient=owner.email)
    if event := _EVENT_OF_STATUS.get(job.status):
        _due(notice, event, timezone.now())
    return notice


def email_notice_job_finished(*, job: DownloadJob, event: str) -> EmailNotice | None:
    """Makes the job's waiting notice due, when the job completed or failed (a cancelled job
    may be retried, and an expired one was mailed at its completion). A job retried after a
    failure that was mailed gets one more notice for its new end. Runs in the transaction
    of the job's terminal write."""
    if event not in (EmailEvent.COMPLETED, EmailEvent.FAILED):
        return None
    now = timezone.now()
    notices = EmailNotice.objects.filter(job=job).order_by("-pk")
    latest = notices.first()
    if latest is None:
        return None
    if latest.event == EmailEvent.WAITING:
        _due(latest, event, now)
        return latest
    notice = EmailNotice.objects.create(job=job, recipient=latest.recipient)
    _due(notice, event, now)
    return notice


class SendOutcome(enum.Enum):
    SENT = "sent"
    NOT_CLAIMED = "not_claimed"  # sent already, given up, not due, or another sender holds it
    RETRY = "retry"
    GAVE_UP = "gave_up"


@dataclass(frozen=True)
class SendResult:
    outcome: SendOutcome
    retry_in_s: float = 0.0


def _claimable(now: datetime) -> Q:
    return Q(sent_at__isnull=True, failed_at__isnull=True, due_at__lte=now) & (
        Q(claimed_until__isnull=True) | Q(claimed_until__lte=now)
    )


def email_notice_send(*, notice_pk: int, clock: Callable[[], datetime] = timezone.now) -> SendResult:
    """Sends the notice if it is due and no other sender holds it. A failed send is due again
    after the next delay of EMAIL_NOTICE_RETRY_BACKOFF_S, or marked failed once they are
    used up."""
    now = clock()
    claimed_until = now + timedelta(seconds=settings.EMAIL_NOTICE_CLAIM_S)
    claimed = EmailNotice.objects.filter(_claimable(now), pk=notice_pk).update(
        claimed_until=claimed_until, attempts=F("attempts") + 1
    )
    if not claimed:
        return SendResult(SendOutcome.NOT_CLAIMED)
    notice = EmailNotice.objects.select_related("job").get(pk=notice_pk)
    try:
        email_notice_message(notice).send()
    except Exception as error:
        return _send_failed(notice, error, clock())
    EmailNotice.objects.filter(pk=notice_pk).update(sent_at=clock(), claimed_until=None, last_error="")
    logger.info("E-mail notice %s of %s sent to %s", notice.pk, notice.job.job_id, notice.recipient)
    return SendResult(SendOutcome.SENT)


def _send_failed(notice: EmailNotice, error: Exception, now: datetime) -> SendResult:
    backoff = settings.EMAIL_NOTICE_RETRY_BACKOFF_S
    message = f"{type(error).__name__}: {error}"[:500]
    rows = EmailNotice.objects.filter(pk=notice.pk, sent_at__isnull=True)
    if notice.attempts > len(backoff):
        rows.update(failed_at=now, claimed_until=None, last_error=message)
        logger.error(
            "E-mail notice %s of %s given up after %s tries: %s",
            notice.pk,
            notice.job.job_id,
            notice.attempts,
            message,
        )
        return SendResult(SendOutcome.GAVE_UP)
    delay_s = backoff[notice.attempts - 1]
    rows.update(due_at=now + timedelta(seconds=delay_s), claimed_until=None, last_error=message)
    logger.warning(
        "E-mail notice %s of %s not sent (%s); again in %s s", notice.pk, notice.job.job_id, message, delay_s
    )
    return SendResult(SendOutcome.RETRY, retry_in_s=delay_s)


def email_notice_message(notice: EmailNotice) -> EmailMessage:
    """The e-mail of a notice: the job's outcome and a link to the downloads page, never a
    link to the file itself (that one expires, and is the account's to ask for)."""
    job = notice.job
    completed = notice.event == EmailEvent.COMPLETED
    context = {
        "job": job,
        "completed": completed,
        "file_label": job.file_name or f"file {job.file_id}",
        "page_url": f"{settings.SITE_URL}{reverse('downloads')}#{job.job_id}",
    }
    subject = (
        f"Your download is ready: {context['file_label']}"
        if completed
        else f"Your download failed: {context['file_label']}"
    )
    domain = urlsplit(settings.SITE_URL).hostname or "localhost"
    return EmailMessage(
        subject=subject,
        body=render_to_string("notices/job_finished_email.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[notice.recipient],
        headers={
            "Message-ID": f"<email-notice-{notice.pk}.{job.job_id}@{domain}>",
            "Auto-Submitted": "auto-generated",
        },
    )


def email_notices_sweep(*, now: datetime | None = None, batch: int = 500) -> int:
    """Queues a send of every notice that is due and unclaimed (its task was lost with a
    worker or the broker, or its retry is due). Returns how many."""
    now = now or timezone.now()
    pks = list(
        EmailNotice.objects.filter(_claimable(now)).order_by("due_at").values_list("pk", flat=True)[:batch]
    )
    for pk in pks:
        email_notice_task_send(pk)
    return len(pks)


def notification_preference_set(*, user: User, email_when_finished: bool) -> NotificationPreference:
    preference, _ = NotificationPreference.objects.update_or_create(
        user=user, defaults={"email_when_finished": email_when_finished}
    )
    return preference
