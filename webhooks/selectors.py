"""Reads of webhooks: a user's endpoints and their recent deliveries."""

from django.contrib.auth.models import User
from django.db.models import QuerySet

from webhooks.models import WebhookDelivery, WebhookEndpoint

RECENT_DELIVERIES = 100


def webhook_endpoints_of(*, owner: User) -> QuerySet[WebhookEndpoint]:
    return WebhookEndpoint.objects.filter(owner=owner).order_by("created_at", "pk")


def webhook_endpoint_get_for_owner(*, owner: User, public_id: str) -> WebhookEndpoint:
    """Raises WebhookEndpoint.DoesNotExist for another user's endpoint too."""
    return WebhookEndpoint.objects.get(owner=owner, public_id=public_id)


def webhook_endpoint_exists(*, owner: User, public_id: str) -> bool:
    return WebhookEndpoint.objects.filter(owner=owner, public_id=public_id).exists()


def webhook_deliveries_recent(*, endpoint: WebhookEndpoint) -> list[WebhookDelivery]:
    return list(endpoint.deliveries.order_by("-created_at", "-pk")[:RECENT_DELIVERIES])


def webhook_delivery_get(*, endpoint: WebhookEndpoint, message_id: str) -> WebhookDelivery:
    return endpoint.deliveries.get(message_id=message_id)
