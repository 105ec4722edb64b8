"""Every write of webhooks: endpoints (create, change, rotate, disable, delete), the outbox
rows a job's end records, and the attempts of a delivery.

At least once, never lost: a delivery is written in the transaction of the job's end; its
first attempt is sent to a worker once that commits, a retry due within
DISPATCH_COUNTDOWN_MAX_S is sent with that countdown, and beat's reaper sends whatever is
due and unclaimed (a message lost with the broker, a worker killed before the send, a
retry hours away). An attempt is claimed with a conditional UPDATE that raises the
delivery's `attempts`, so two senders never send one attempt at once; its result is
written only while the row still carries that attempt.
"""

import json
import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta

from celery import current_app
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from jobs.models import DownloadJob
from jobs.queues import MAINTENANCE_QUEUE
from jobs.selectors import iso
from webhooks import metrics, sending, signing
from webhooks.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint

logger = logging.getLogger(__name__)

SEND_TASK = "webhooks.webhook_delivery_send"
# A retry due sooner than this is sent with a countdown; a later one is left to the reaper
# (a countdown held hours in a worker would outlive the broker's visibility timeout).
DISPATCH_COUNTDOWN_MAX_S = 120.0


class EndpointLimitExceeded(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"At most {limit} webhook endpoints per user")
        self.limit = limit


class DeliveryInFlight(Exception):
    """A pending delivery is not sent again by hand: its attempts are under way."""


# --- endpoints -------------------------------------------------------------------------


def webhook_endpoint_create(
    *, owner: User, url: str, events: list[str], description: str = ""
) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its secret (shown to the caller once). Raises sending.UrlRefused
    for a URL that may not be called, EndpointLimitExceeded past WEBHOOK_MAX_PER_USER."""
    sending.url_check(url)
    with transaction.atomic():
        # Serialises this user's creations, so parallel requests cannot pass the limit together.
        User.objects.select_for_update().filter(pk=owner.pk).first()
        if WebhookEndpoint.objects.filter(owner=owner).count() >= settings.WEBHOOK_MAX_PER_USER:
            raise EndpointLimitExceeded(settings.WEBHOOK_MAX_PER_USER)
        secret = signing.secret_new()
        endpoint = WebhookEndpoint.objects.create(
            owner=owner, url=url, events=sorted(set(events)), description=description, secret=secret
        )
    return endpoint, secret


def webhook_endpoint_update(
    *,
    endpoint: WebhookEndpoint,
    url: str | None = None,
    events: list[str] | None = None,
    description: str | None = None,
    enabled: bool | None = None,
) -> WebhookEndpoint:
    """Changes what is given; `enabled=True` takes a disabled endpoint back into service."""
    fields: list[str] = []
    if url is not None:
        sending.url_check(url)
        endpoint.url = url
        fields.append("url")
    if events is not None:
        endpoint.events = sorted(set(events))
        fields.append("events")
    if description is not None:
        endpoint.description = description
        fields.append("description")
    if enabled is not None and enabled == endpoint.is_disabled:
        endpoint.disabled_at = None if enabled else timezone.now()
        endpoint.disabled_reason = "" if enabled else "Disabled by its owner"
        fields += ["disabled_at", "disabled_reason"]
    if fields:
        endpoint.save(update_fields=[*fields, "updated_at"])
    return endpoint


def webhook_endpoint_rotate(*, endpoint: WebhookEndpoint, now: datetime | None = None) -> str:
    """A new secret; the current one keeps signing beside it for WEBHOOK_ROTATION_OVERLAP_S."""
    now = now or timezone.now()
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_secret_until = now + timedelta(seconds=settings.WEBHOOK_ROTATION_OVERLAP_S)
    endpoint.secret = signing.secret_new()
    endpoint.save(update_fields=["secret", "previous_secret", "previous_secret_until", "updated_at"])
    return endpoint.secret


def webhook_endpoint_disable(*, endpoint: WebhookEndpoint, reason: str) -> None:
    """No more deliveries are recorded for it; its pending ones fail at their next attempt."""
    WebhookEndpoint.objects.filter(pk=endpoint.pk, disabled_at__isnull=True).update(
        disabled_at=timezone.now(), disabled_reason=reason[:200], updated_at=timezone.now()
    )


def webhook_endpoint_delete(*, endpoint: WebhookEndpoint) -> None:
    endpoint.delete()  # its deliveries with it


def signing_secrets(endpoint: WebhookEndpoint, *, now: datetime) -> list[str]:
    """The secrets that sign now: the current one, and the one before a rotation during its
    overlap."""
    found = [endpoint.secret]
    if endpoint.previous_secret and endpoint.previous_secret_until and endpoint.previous_secret_until > now:
        found.append(endpoint.previous_secret)
    return found


# --- the outbox --------------------------------------------------------------------------


def delivery_body(*, job: DownloadJob, event: str, now: datetime) -> str:
    """The JSON body of the Standard Webhooks message: no link, the receiver collects the
    file with `GET /v1/download/<job_id>` and its own token."""
    data = {
        "job_id": job.job_id,
        "file_id": job.file_id,
        "status": job.status,
        "file_name": job.file_name or None,
        "file_size": job.file_size_bytes,
        "sha256": job.sha256 or None,
        "expires_at": iso(job.expires_at),
        "error_code": job.error_code or None,
        "error_message": job.error_message or None,
    }
    return json.dumps({"type": event, "timestamp": iso(now), "data": data}, separators=(",", ":"))


def webhook_deliveries_record(*, job: DownloadJob, event: str) -> list[WebhookDelivery]:
    """Records one delivery per endpoint subscribed to `event` (the job's own endpoint only,
    if it named one), in the caller's transaction, and sends each once it commits. One
    query when the owner has no endpoint."""
    endpoints = WebhookEndpoint.objects.filter(owner_id=job.owner_id, disabled_at__isnull=True)
    if job.webhook_id:
        endpoints = endpoints.filter(public_id=job.webhook_id)
    subscribed = [endpoint for endpoint in endpoints if event in endpoint.events]
    if not subscribed:
        return []
    now = timezone.now()
    body = delivery_body(job=job, event=event, now=now)
    recorded = WebhookDelivery.objects.bulk_create(
        WebhookDelivery(endpoint=endpoint, job_id=job.job_id, event=event, body=body, next_attempt_at=now)
        for endpoint in subscribed
    )
    pks = [delivery.pk for delivery in recorded]
    if None in pks:  # a database that returns no keys from a bulk insert
        pks = list(
            WebhookDelivery.objects.filter(job_id=job.job_id, event=event, created_at__gte=now).values_list(
                "pk", flat=True
            )
        )

    def dispatch() -> None:
        for pk in pks:
            delivery_dispatch(pk)

    transaction.on_commit(dispatch, robust=True)
    return recorded


def delivery_dispatch(delivery_pk: int, *, countdown_s: float = 0) -> None:
    """Sends an attempt of the delivery to a worker. A broker fault is logged: the reaper
    sends what is due."""
    try:
        current_app.send_task(SEND_TASK, args=(delivery_pk,), queue=MAINTENANCE_QUEUE, countdown=countdown_s)
    except Exception:
        logger.warning("Could not send webhook delivery %s to the broker", delivery_pk, exc_info=True)


def webhook_delivery_redeliver(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Sends a delivered or failed delivery again, with the same webhook-id, as a fresh
    run of the schedule. Raises DeliveryInFlight for a pending one."""
    now = timezone.now()
    with transaction.atomic():
        updated = (
            WebhookDelivery.objects.filter(pk=delivery.pk)
            .exclude(status=DeliveryStatus.PENDING)
            .update(status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=now, claimed_until=None)
        )
        if not updated:
            raise DeliveryInFlight(delivery.message_id)
        transaction.on_commit(lambda: delivery_dispatch(delivery.pk), robust=True)
    delivery.refresh_from_db()
    return delivery


# --- attempts ----------------------------------------------------------------------------


def retry_delay_s(attempt: int, *, rand: Callable[[], float] = random.random) -> float | None:
    """The delay before the attempt after `attempt` (1-based), with jitter; None once the
    schedule is spent."""
    schedule = settings.WEBHOOK_RETRY_SCHEDULE_S
    if attempt >= len(schedule):
        return None
    jitter = settings.WEBHOOK_RETRY_JITTER
    return float(schedule[attempt]) * (1 - jitter + 2 * jitter * rand())


def _claim(delivery_pk: int, *, now: datetime) -> WebhookDelivery | None:
    claimable = WebhookDelivery.objects.filter(
        Q(claimed_until__isnull=True) | Q(claimed_until__lt=now),
        pk=delivery_pk,
        status=DeliveryStatus.PENDING,
        next_attempt_at__lte=now,
    )
    claimed = claimable.update(
        claimed_until=now + timedelta(seconds=settings.WEBHOOK_CLAIM_S),
        attempts=F("attempts") + 1,
        last_attempt_at=now,
    )
    if not claimed:
        return None
    return WebhookDelivery.objects.select_related("endpoint").get(pk=delivery_pk)


def webhook_delivery_attempt(
    *, delivery_pk: int, now: datetime | None = None, rand: Callable[[], float] = random.random
) -> str | None:
    """One attempt of the delivery if it is due and unclaimed; its outcome (None if there
    was nothing to do): delivered (2xx), gone (410: the endpoint is disabled), retried
    (429, 5xx, timeout, connection error, a host that did not resolve), failed (another
    answer, or the schedule spent) or refused (the URL failed the address check)."""
    now = now or timezone.now()
    delivery = _claim(delivery_pk, now=now)
    if delivery is None:
        return None
    endpoint = delivery.endpoint
    if endpoint.is_disabled:
        _finish(delivery, DeliveryStatus.FAILED, error="The endpoint is disabled")
        return "failed"
    headers = {
        "webhook-id": delivery.message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signing.signature_header(
            signing_secrets(endpoint, now=now),
            message_id=delivery.message_id,
            timestamp=now,
            body=delivery.body,
        ),
    }
    try:
        answer = sending.webhook_post(url=endpoint.url, headers=headers, body=delivery.body)
    except sending.UrlRefused as exc:
        outcome = _after(
            delivery, status_code=None, error=str(exc), body="", retryable=exc.retryable, rand=rand
        )
        metrics.attempt_record("retried" if outcome == "retried" else "refused", 0.0)
        return outcome if outcome == "retried" else "refused"
    code = answer.status_code
    if code is not None and 200 <= code < 300:
        outcome = "delivered"
        _finish(delivery, DeliveryStatus.DELIVERED, status_code=code, body=answer.body, delivered=True)
    elif code == 410:
        outcome = "gone"
        _finish(delivery, DeliveryStatus.FAILED, status_code=code, body=answer.body, error="410 Gone")
        webhook_endpoint_disable(endpoint=endpoint, reason="The receiver answered 410 Gone")
    else:
        retryable = code is None or code == 429 or code >= 500
        error = answer.error or f"HTTP {code}"
        outcome = _after(
            delivery, status_code=code, error=error, body=answer.body, retryable=retryable, rand=rand
        )
    metrics.attempt_record(outcome, answer.seconds)
    logger.info(
        "Webhook %s attempt %s to %s: %s", delivery.message_id, delivery.attempts, endpoint.public_id, outcome
    )
    return outcome


def _after(
    delivery: WebhookDelivery,
    *,
    status_code: int | None,
    error: str,
    body: str,
    retryable: bool,
    rand: Callable[[], float],
) -> str:
    """Schedules the next attempt of a retryable failure, or fails the delivery."""
    delay_s = retry_delay_s(delivery.attempts, rand=rand) if retryable else None
    if delay_s is None:
        _finish(delivery, DeliveryStatus.FAILED, status_code=status_code, body=body, error=error)
        return "failed"
    written = _finish(
        delivery,
        DeliveryStatus.PENDING,
        status_code=status_code,
        body=body,
        error=error,
        next_attempt_at=timezone.now() + timedelta(seconds=delay_s),
    )
    if written and delay_s <= DISPATCH_COUNTDOWN_MAX_S:
        delivery_dispatch(delivery.pk, countdown_s=delay_s)
    return "retried"


def _finish(
    delivery: WebhookDelivery,
    status: str,
    *,
    status_code: int | None = None,
    body: str = "",
    error: str = "",
    delivered: bool = False,
    next_attempt_at: datetime | None = None,
) -> bool:
    """Writes the attempt's result, while the row still carries this attempt."""
    return bool(
        WebhookDelivery.objects.filter(
            pk=delivery.pk, attempts=delivery.attempts, status=DeliveryStatus.PENDING
        ).update(
            status=status,
            claimed_until=None,
            next_attempt_at=next_attempt_at,
            last_status_code=status_code,
            last_error=error[:200],
            last_response_body=body[: sending.RESPONSE_KEEP_BYTES],
            **({"delivered_at": timezone.now()} if delivered else {}),
        )
    )


def webhook_deliveries_reap(*, now: datetime | None = None, batch: int = 500) -> int:
    """Sends the deliveries due for longer than WEBHOOK_REAP_EVERY_S and not claimed (their
    message was lost, or their retry was left to this); returns how many. A message that
    was only slow makes no second send: the claim lets one through."""
    now = now or timezone.now()
    due_before = now - timedelta(seconds=settings.WEBHOOK_REAP_EVERY_S)
    due = (
        WebhookDelivery.objects.filter(
            Q(claimed_until__isnull=True) | Q(claimed_until__lt=now),
            status=DeliveryStatus.PENDING,
            next_attempt_at__lte=due_before,
        )
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:batch]
    )
    pks = list(due)
    for pk in pks:
        delivery_dispatch(pk)
    if pks:
        logger.info("Webhook reaper sent %s due deliveries", len(pks))
    return len(pks)
