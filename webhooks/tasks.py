"""Celery tasks of webhooks: thin wrappers that take an id and call a service."""

from celery import shared_task

from webhooks import services


@shared_task(
    name=services.SEND_TASK,  # the services send it by this name
    # A worker killed mid-send hands the message back; the claim's expiry (WEBHOOK_CLAIM_S)
    # lets the redelivery or the reaper try again.
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    max_retries=0,  # the schedule is the delivery's own (services.retry_delay_s)
)
def webhook_delivery_send(delivery_pk: int) -> str | None:
    return services.webhook_delivery_attempt(delivery_pk=delivery_pk)


@shared_task(name="webhooks.webhook_deliveries_reap", ignore_result=True)
def webhook_deliveries_reap() -> int:
    """Sent by beat every WEBHOOK_REAP_EVERY_S: the deliveries due that no message carries."""
    return services.webhook_deliveries_reap()
