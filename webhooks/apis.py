"""The webhooks API of docs/api.md (Webhooks): a user's endpoints, their secrets and their
deliveries, in the API's envelope and with its authentication (jobs/api)."""

from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.api import openapi
from jobs.api.errors import ApiError
from jobs.selectors import iso
from webhooks import selectors, sending, services
from webhooks.models import WebhookEndpoint
from webhooks.serializers import (
    DeliverySerializer,
    EndpointCreatedSerializer,
    EndpointInputSerializer,
    EndpointPatchSerializer,
    EndpointSerializer,
    RotatedSerializer,
)


def ok(data: Any, *, status_code: int = status.HTTP_200_OK) -> Response:
    return Response({"success": True, "data": data}, status=status_code)


_data = openapi.data_envelope
_error = openapi.error_envelope


URL_REFUSED = _error("WebhookInvalid", ["VALIDATION_ERROR", "WEBHOOK_URL_REFUSED"])
LIMIT = _error("WebhookLimit", ["WEBHOOK_LIMIT_EXCEEDED"])
NOT_FOUND = _error("WebhookNotFound", ["WEBHOOK_NOT_FOUND", "NOT_FOUND"])
DELIVERY_NOT_FOUND = _error(
    "WebhookDeliveryNotFound", ["WEBHOOK_NOT_FOUND", "DELIVERY_NOT_FOUND", "NOT_FOUND"]
)
DELIVERY_PENDING = _error("WebhookDeliveryPending", ["DELIVERY_PENDING"])
WEBHOOK_ID = OpenApiParameter(
    "webhook_id", str, OpenApiParameter.PATH, description="The endpoint's id (ep_…)."
)
DELIVERY_ID = OpenApiParameter(
    "delivery_id", str, OpenApiParameter.PATH, description="The delivery's id, its webhook-id (msg_…)."
)


def url_refused(exc: sending.UrlRefused) -> ApiError:
    return ApiError(status_code=status.HTTP_400_BAD_REQUEST, code="WEBHOOK_URL_REFUSED", message=str(exc))


def owned_endpoint(request: Request, webhook_id: str) -> WebhookEndpoint:
    try:
        return selectors.webhook_endpoint_get_for_owner(owner=request.user, public_id=webhook_id)  # type: ignore[arg-type]
    except WebhookEndpoint.DoesNotExist:
        raise ApiError(
            status_code=status.HTTP_404_NOT_FOUND,
            code="WEBHOOK_NOT_FOUND",
            message="Webhook endpoint not found",
        ) from None


class WebhookListApi(APIView):
    @extend_schema(
        operation_id="webhook_list",
        summary="Your webhook endpoints (without their secrets)",
        responses={200: _data("WebhookListResponse", EndpointSerializer(many=True)), **openapi.AUTH_ERRORS},
    )
    def get(self, request: Request) -> Response:
        endpoints = selectors.webhook_endpoints_of(owner=request.user)  # type: ignore[arg-type]
        return ok([EndpointSerializer(endpoint).data for endpoint in endpoints])

    @extend_schema(
        operation_id="webhook_create",
        summary="Add a webhook endpoint; its secret is in this answer only",
        request=EndpointInputSerializer,
        responses={
            201: _data("WebhookCreatedResponse", EndpointCreatedSerializer()),
            400: URL_REFUSED,
            **openapi.UNSAFE_AUTH_ERRORS,
            409: LIMIT,
            415: openapi.UNSUPPORTED_MEDIA_TYPE,
        },
    )
    def post(self, request: Request) -> Response:
        serializer = EndpointInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            endpoint, secret = services.webhook_endpoint_create(
                owner=request.user,  # type: ignore[arg-type]
                **serializer.validated_data,
            )
        except sending.UrlRefused as exc:
            raise url_refused(exc) from None
        except services.EndpointLimitExceeded as exc:
            raise ApiError(
                status_code=status.HTTP_409_CONFLICT,
                code="WEBHOOK_LIMIT_EXCEEDED",
                message=str(exc),
                extra={"limit": settings.WEBHOOK_MAX_PER_USER},
            ) from None
        data = {**EndpointSerializer(endpoint).data, "secret": secret}
        return ok(data, status_code=status.HTTP_201_CREATED)


class WebhookApi(APIView):
    @extend_schema(
        operation_id="webhook_get",
        summary="One of your webhook endpoints",
        parameters=[WEBHOOK_ID],
        responses={
            200: _data("WebhookResponse", EndpointSerializer()),
            **openapi.AUTH_ERRORS,
            404: NOT_FOUND,
        },
    )
    def get(self, request: Request, webhook_id: str) -> Response:
        return ok(EndpointSerializer(owned_endpoint(request, webhook_id)).data)

    @extend_schema(
        operation_id="webhook_update",
        summary="Change an endpoint's URL, events or description, or enable it again",
        parameters=[WEBHOOK_ID],
        request=EndpointPatchSerializer,
        responses={
            200: _data("WebhookUpdatedResponse", EndpointSerializer()),
            400: URL_REFUSED,
            **openapi.UNSAFE_AUTH_ERRORS,
            404: NOT_FOUND,
            415: openapi.UNSUPPORTED_MEDIA_TYPE,
        },
    )
    def patch(self, request: Request, webhook_id: str) -> Response:
        endpoint = owned_endpoint(request, webhook_id)
        serializer = EndpointPatchSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            services.webhook_endpoint_update(endpoint=endpoint, **serializer.validated_data)
        except sending.UrlRefused as exc:
            raise url_refused(exc) from None
        return ok(EndpointSerializer(endpoint).data)

    @extend_schema(
        operation_id="webhook_delete",
        summary="Remove an endpoint and its deliveries",
        parameters=[WEBHOOK_ID],
        responses={
            200: _data(
                "WebhookDeletedResponse", inline_serializer("WebhookDeleted", {"id": serializers.CharField()})
            ),
            **openapi.UNSAFE_AUTH_ERRORS,
            404: NOT_FOUND,
        },
    )
    def delete(self, request: Request, webhook_id: str) -> Response:
        endpoint = owned_endpoint(request, webhook_id)
        services.webhook_endpoint_delete(endpoint=endpoint)
        return ok({"id": webhook_id})


class WebhookRotateApi(APIView):
    @extend_schema(
        operation_id="webhook_rotate",
        summary="A new secret; the old one keeps signing for WEBHOOK_ROTATION_OVERLAP_S",
        parameters=[WEBHOOK_ID],
        request=None,
        responses={
            200: _data("WebhookRotatedResponse", RotatedSerializer()),
            **openapi.UNSAFE_AUTH_ERRORS,
            404: NOT_FOUND,
        },
    )
    def post(self, request: Request, webhook_id: str) -> Response:
        endpoint = owned_endpoint(request, webhook_id)
        secret = services.webhook_endpoint_rotate(endpoint=endpoint)
        return ok(
            {
                "id": endpoint.public_id,
                "secret": secret,
                "previous_secret_expires_at": iso(endpoint.previous_secret_until),
            }
        )


class WebhookDeliveryListApi(APIView):
    @extend_schema(
        operation_id="webhook_delivery_list",
        summary="The endpoint's recent deliveries (the last 100)",
        parameters=[WEBHOOK_ID],
        responses={
            200: _data("WebhookDeliveryListResponse", DeliverySerializer(many=True)),
            **openapi.AUTH_ERRORS,
            404: NOT_FOUND,
        },
    )
    def get(self, request: Request, webhook_id: str) -> Response:
        endpoint = owned_endpoint(request, webhook_id)
        deliveries = selectors.webhook_deliveries_recent(endpoint=endpoint)
        return ok([DeliverySerializer(delivery).data for delivery in deliveries])


class WebhookRedeliverApi(APIView):
    @extend_schema(
        operation_id="webhook_delivery_redeliver",
        summary="Send a delivered or failed delivery again (the same webhook-id)",
        parameters=[WEBHOOK_ID, DELIVERY_ID],
        request=None,
        responses={
            202: _data("WebhookRedeliverResponse", DeliverySerializer()),
            **openapi.UNSAFE_AUTH_ERRORS,
            404: DELIVERY_NOT_FOUND,
            409: DELIVERY_PENDING,
        },
    )
    def post(self, request: Request, webhook_id: str, delivery_id: str) -> Response:
        endpoint = owned_endpoint(request, webhook_id)
        try:
            delivery = selectors.webhook_delivery_get(endpoint=endpoint, message_id=delivery_id)
        except endpoint.deliveries.model.DoesNotExist:
            raise ApiError(
                status_code=status.HTTP_404_NOT_FOUND, code="DELIVERY_NOT_FOUND", message="Delivery not found"
            ) from None
        try:
            delivery = services.webhook_delivery_redeliver(delivery=delivery)
        except services.DeliveryInFlight:
            raise ApiError(
                status_code=status.HTTP_409_CONFLICT,
                code="DELIVERY_PENDING",
                message="The delivery is pending: its attempts are under way",
            ) from None
        return ok(DeliverySerializer(delivery).data, status_code=status.HTTP_202_ACCEPTED)
