"""The OpenAPI description of `POST /download/start` (legacy/apis.py): deprecated, with its
sunset, so that the migration guide its `Link` header points at (LEGACY_MIGRATION_URL,
Swagger UI by default) shows it beside its successor. Documentation only."""

from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import serializers

from jobs.api import openapi
from jobs.api.serializers import DownloadJobInitiateSerializer
from legacy.policy import SUCCESSOR_PATH

# Every answer, errors included: legacy/apis.py `_LegacyAnswers._legacy_finalize`.
_ANSWERS = [202, 302, 400, 401, 403, 409, 410, 415, 429]


def _sunset() -> str:
    sunset = settings.LEGACY_SUNSET_AT
    return sunset.date().isoformat() if sunset is not None else ""


def _header(name: str, description: str, *, codes: list[int], required: bool = True) -> OpenApiParameter:
    return OpenApiParameter(
        name,
        OpenApiTypes.STR,
        OpenApiParameter.HEADER,
        response=codes,
        required=required,
        description=description,
    )


RETIRED = openapi.error_response(
    "EndpointRetired",
    ["ENDPOINT_RETIRED"],
    "ENDPOINT_RETIRED: past its sunset (LEGACY_SUNSET_AT) or switched off (LEGACY_ENABLED=false).",
    successor=serializers.CharField(help_text=f"`{SUCCESSOR_PATH}`"),
    documentation=serializers.CharField(help_text="The migration guide (LEGACY_MIGRATION_URL)."),
)

_DESCRIPTION = (
    "**Deprecated**" + (f", retired on {_sunset()} (its `Sunset`)" if _sunset() else "") + ": use "
    f"`POST {SUCCESSOR_PATH}`, then the job's status or WebSocket, then `GET /v1/download/{{job_id}}` "
    '(docs/api.md, "Migrating from POST /download/start"). Takes what initiate takes: the same '
    "credentials, body, limits and `Idempotency-Key` (a replay counts against the initiate rate "
    "here). It waits for the job at most LEGACY_WAIT_S (20 s): `302` to a fresh download link if "
    "the job completed in time, else `202` with initiate's body and `Location` (some callers get "
    "the `202` at once: LEGACY_ASYNC_PERCENT). A job that failed or was cancelled meanwhile "
    "answers `409 JOB_NOT_READY`; after the sunset every call answers `410 ENDPOINT_RETIRED`."
)

DOWNLOAD_START: dict[str, Any] = {
    "operation_id": "legacy_download_start",
    "summary": "Deprecated: start a job and wait for its file",
    "description": _DESCRIPTION,
    "deprecated": True,
    "extensions": {"x-sunset": _sunset()} if _sunset() else {},
    "request": DownloadJobInitiateSerializer,
    "parameters": [
        openapi.IDEMPOTENCY_KEY,
        _header("Deprecation", "RFC 9745: `@` and the Unix time it was deprecated.", codes=_ANSWERS),
        _header(
            "Sunset",
            "RFC 8594: the HTTP date it is retired, when the operators set one (LEGACY_SUNSET_AT).",
            codes=_ANSWERS,
            required=False,
        ),
        _header(
            "Link",
            f'`<{SUCCESSOR_PATH}>; rel="successor-version"` and the migration guide, `rel="deprecation"`.',
            codes=_ANSWERS,
        ),
        _header(
            "Location",
            "202: `/v1/download/status/{job_id}`. 302: a fresh download link.",
            codes=[202, 302],
        ),
        OpenApiParameter(
            "Retry-After",
            OpenApiTypes.INT,
            OpenApiParameter.HEADER,
            response=[202, 429],
            required=True,
            description="Seconds: 202, when to poll the status; 429, when to try again.",
        ),
    ],
    "responses": {
        202: OpenApiResponse(
            response=openapi.INITIATE_OK,
            description="Not finished within the wait: go on with the new flow with this body.",
        ),
        302: OpenApiResponse(description="Completed in time: `Location` is a fresh download link."),
        400: openapi.INITIATE_BAD_REQUEST,
        **openapi.UNSAFE_AUTH_ERRORS,
        409: openapi.JOB_WILL_NOT_BE_READY,
        410: RETIRED,
        415: openapi.UNSUPPORTED_MEDIA_TYPE,
        429: openapi.RATE_LIMIT_EXCEEDED,
    },
}
