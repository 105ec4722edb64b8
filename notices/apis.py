"""The user's notification preferences: `GET` and `PUT /v1/notifications/preferences`."""

from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.api import openapi
from jobs.api.errors import ApiError
from jobs.api.views import ok
from notices import selectors, services


class NotificationPreferenceSerializer(serializers.Serializer[dict[str, Any]]):
    email_when_finished = serializers.BooleanField(
        help_text='Whether a job whose initiate names no `notify` is e-mailed as with `["email"]`.'
    )


_PREFERENCE = inline_serializer(
    name="NotificationPreference",
    fields={
        "email_when_finished": serializers.BooleanField(),
        "email": serializers.EmailField(allow_null=True, help_text="The account's address; null if none."),
    },
)
_PREFERENCE_OK = openapi.data_envelope("NotificationPreferenceResponse", _PREFERENCE)
_PREFERENCE_INVALID = openapi.error_response(
    "NotificationPreferenceValidation",
    ["VALIDATION_ERROR", "EMAIL_MISSING"],
    "VALIDATION_ERROR: the body is not valid. EMAIL_MISSING: the account has no e-mail address.",
)


class NotificationPreferenceApi(APIView):
    @extend_schema(
        operation_id="notification_preference_get",
        summary="Your notification preferences",
        responses={200: _PREFERENCE_OK, **openapi.AUTH_ERRORS},
    )
    def get(self, request: Request) -> Response:
        return ok(selectors.notification_preference_data(user=request.user))  # type: ignore[arg-type]

    @extend_schema(
        operation_id="notification_preference_set",
        summary="Set your notification preferences",
        request=NotificationPreferenceSerializer,
        responses={200: _PREFERENCE_OK, 400: _PREFERENCE_INVALID, **openapi.UNSAFE_AUTH_ERRORS},
    )
    def put(self, request: Request) -> Response:
        serializer = NotificationPreferenceSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        wanted = serializer.validated_data["email_when_finished"]
        if wanted and not request.user.email:  # type: ignore[union-attr]
            raise ApiError(
                status_code=status.HTTP_400_BAD_REQUEST,
                code="EMAIL_MISSING",
                message="Your account has no e-mail address to notify",
            )
        services.notification_preference_set(user=request.user, email_when_finished=wanted)  # type: ignore[arg-type]
        return ok(selectors.notification_preference_data(user=request.user))  # type: ignore[arg-type]
