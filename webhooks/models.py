"""Webhook endpoints of API clients and the deliveries to them (the outbox).

A delivery is written in the transaction of the job's end (receivers.py), so it exists
exactly when the end committed; the sender claims each attempt with a conditional UPDATE
(services.py), so two senders never send the same attempt at once.
"""

import secrets

from django.conf import settings
from django.db import models


def new_endpoint_id() -> str:
    return f"ep_{secrets.token_hex(12)}"


def new_message_id() -> str:
    """The `webhook-id` of a delivery: the same on each of its attempts."""
    return f"msg_{secrets.token_hex(12)}"


class Event(models.TextChoices):
    COMPLETED = "job.completed"
    FAILED = "job.failed"
    CANCELLED = "job.cancelled"
    EXPIRED = "job.expired"


class WebhookEndpoint(models.Model):
    public_id = models.CharField(max_length=40, unique=True, default=new_endpoint_id, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_endpoints"
    )
    url = models.URLField(max_length=2000)
    events = models.JSONField(default=list, help_text="The events sent here (job.completed, ...).")
    description = models.CharField(max_length=200, blank=True)
    # Kept in the clear, as a signing key must be usable; never shown after creation (the
    # API answers it once, the admin leaves it out).
    secret = models.CharField(max_length=100, editable=False)
    # The secret before the last rotation, which signs beside the new one until then.
    previous_secret = models.CharField(max_length=100, blank=True, editable=False)
    previous_secret_until = models.DateTimeField(null=True, blank=True, editable=False)
    disabled_at = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = (models.Index(fields=["owner", "created_at"], name="idx_webhook_owner"),)

    def __str__(self) -> str:
        return f"{self.public_id} ({self.url})"

    @property
    def is_disabled(self) -> bool:
        return self.disabled_at is not None


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"  # an attempt is due at next_attempt_at (or in flight, claimed)
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookDelivery(models.Model):
    message_id = models.CharField(max_length=40, unique=True, default=new_message_id, editable=False)
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    # The job's public id, not a key: a delivery outlives the purge of its job's row.
    job_id = models.CharField(max_length=50, db_index=True)
    event = models.CharField(max_length=20, choices=Event.choices)
    # The JSON body as signed and sent, the same bytes on every attempt.
    body = models.TextField()
    status = models.CharField(max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    # Attempts started; the fencing token of the one in flight.
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # Set by the claim of an attempt: until then no other sender takes the delivery.
    claimed_until = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=200, blank=True)
    last_response_body = models.TextField(blank=True, help_text="The first 4 KiB of the last answer.")
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "webhook deliveries"
        indexes = (
            models.Index(fields=["status", "next_attempt_at"], name="idx_delivery_due"),
            models.Index(fields=["endpoint", "-created_at"], name="idx_delivery_endpoint"),
        )

    def __str__(self) -> str:
        return f"{self.message_id} {self.event} {self.job_id}"
