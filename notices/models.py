"""A user's standing choice of e-mail notices, and the outbox of the notices themselves."""

from django.conf import settings
from django.db import models
from django.db.models import Q

from jobs.models import DownloadJob


class NotificationPreference(models.Model):
    """What a job of the user asks for when its initiate names no `notify` (the page's
    "E-mail me when it's ready" box)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notification_preference"
    )
    email_when_finished = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.user}: e-mail {'on' if self.email_when_finished else 'off'}"


class EmailEvent(models.TextChoices):
    WAITING = "", "waiting for the job"
    COMPLETED = "job.completed", "completed"
    FAILED = "job.failed", "failed"


class EmailNotice(models.Model):
    """One e-mail to send: an outbox row. Written with the job's request (`event` empty, not
    due) and made due in the transaction of the job's completion or failure, so a crash
    between that commit and the send loses nothing. A sender claims it with a conditional
    update (`claimed_until`) and marks it sent, so two senders never both send it."""

    job = models.ForeignKey(DownloadJob, on_delete=models.CASCADE, related_name="email_notices")
    recipient = models.EmailField()
    event = models.CharField(
        max_length=20, choices=EmailEvent.choices, blank=True, default=EmailEvent.WAITING
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # Null while the job runs; the time from which a sender may take it.
    due_at = models.DateTimeField(null=True, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    sent_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)  # tries used up
    last_error = models.CharField(max_length=500, blank=True)

    class Meta:
        indexes = (
            # The sweep's look-up: the notices still to send.
            models.Index(
                fields=["due_at"],
                condition=Q(sent_at__isnull=True, failed_at__isnull=True, due_at__isnull=False),
                name="idx_email_notice_due",
            ),
        )

    def __str__(self) -> str:
        return f"{self.job.job_id} → {self.recipient} ({self.event or 'waiting'})"
