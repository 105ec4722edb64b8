"""The shapes of the webhooks API: what a request may send, what an answer holds."""

from typing import Any

from rest_framework import serializers

from jobs.selectors import iso
from webhooks.models import Event, WebhookDelivery, WebhookEndpoint


class EndpointInputSerializer(serializers.Serializer[dict[str, Any]]):
    url = serializers.URLField(max_length=2000)
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=Event.choices),
        allow_empty=False,
        max_length=len(Event.choices),
        default=lambda: list(Event.values),
        help_text="The events sent there; all four when left out.",
    )
    description = serializers.CharField(max_length=200, allow_blank=True, default="")


class EndpointPatchSerializer(EndpointInputSerializer):
    url = serializers.URLField(max_length=2000, required=False)
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=Event.choices),
        allow_empty=False,
        max_length=len(Event.choices),
        required=False,
    )
    description = serializers.CharField(max_length=200, allow_blank=True, required=False)
    enabled = serializers.BooleanField(required=False, help_text="true takes a disabled endpoint back.")


class EndpointSerializer(serializers.Serializer[WebhookEndpoint]):
    id = serializers.CharField(source="public_id")
    url = serializers.URLField()
    events = serializers.ListField(child=serializers.ChoiceField(choices=Event.choices))
    description = serializers.CharField(allow_blank=True)
    created_at = serializers.SerializerMethodField()
    disabled = serializers.BooleanField(source="is_disabled")
    disabled_reason = serializers.CharField(allow_blank=True)

    def get_created_at(self, endpoint: WebhookEndpoint) -> str | None:
        return iso(endpoint.created_at)


class EndpointCreatedSerializer(EndpointSerializer):
    secret = serializers.CharField(help_text="whsec_ + base64 of 32 bytes: shown in this answer only.")


class RotatedSerializer(serializers.Serializer[dict[str, Any]]):
    id = serializers.CharField()
    secret = serializers.CharField(help_text="The new secret: shown in this answer only.")
    previous_secret_expires_at = serializers.CharField(help_text="Until then the old secret signs too.")


class DeliverySerializer(serializers.Serializer[WebhookDelivery]):
    id = serializers.CharField(source="message_id", help_text="The webhook-id header of every attempt.")
    event = serializers.ChoiceField(choices=Event.choices)
    job_id = serializers.CharField()
    status = serializers.CharField()
    attempts = serializers.IntegerField()
    last_status_code = serializers.IntegerField(allow_null=True)
    last_error = serializers.CharField(allow_blank=True)
    next_attempt_at = serializers.SerializerMethodField()
    delivered_at = serializers.SerializerMethodField()
    created_at = serializers.SerializerMethodField()

    def get_next_attempt_at(self, delivery: WebhookDelivery) -> str | None:
        return iso(delivery.next_attempt_at)

    def get_delivered_at(self, delivery: WebhookDelivery) -> str | None:
        return iso(delivery.delivered_at)

    def get_created_at(self, delivery: WebhookDelivery) -> str | None:
        return iso(delivery.created_at)
