"""The OpenAPI description of the REST API (docs/api.md), for drf-spectacular: the shapes that
the views of `views.py` build by hand (`selectors.download_job_status` and friends) and the
error envelope of `errors.py`. Documentation only: nothing here validates or renders.

The views reference these through `@extend_schema`; `tests/api/test_openapi.py` holds a
live server to this description, so a change to a body that is not made here fails there.
"""

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import serializers

from jobs.api.serializers import MAX_FILE_ID
from jobs.job_id_path import JOB_ID_PATH_REGEX
from jobs.models import Priority, Status


class ApiKeyScheme(OpenApiAuthenticationExtension):
    """The API key (jobs/api/authentication.py) as an HTTP bearer scheme, so that Swagger
    UI's Authorize takes the key alone and sends `Authorization: Bearer <key>`; under the
    scheme name DRF's token authentication had. `Token <key>` is accepted as well."""

    target_class = "jobs.api.authentication.CachedTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": (
                "An API key (`python manage.py api_key_create USER`), sent as "
                "`Authorization: Bearer <key>`; `Authorization: Token <key>` is accepted too."
            ),
        }


# The job id of docs/api.md: `job_` + lowercase hex from a CSPRNG (`models.new_job_id`), at
# most 50 characters (the column).
JOB_ID_PATTERN = r"^job_[0-9a-f]{24,46}$"


@extend_schema_field({"type": "boolean", "enum": [True]})
class _TrueField(serializers.BooleanField):
    pass


@extend_schema_field({"type": "boolean", "enum": [False]})
class _FalseField(serializers.BooleanField):
    pass


class JobErrorSerializer(serializers.Serializer[dict[str, Any]]):
    code = serializers.CharField(help_text="Worker-side error code (docs/api.md, Error codes).")
    message = serializers.CharField(allow_blank=True)
    retryable = serializers.BooleanField()


class JobStatusSerializer(serializers.Serializer[dict[str, Any]]):
    """`selectors.download_job_status`: the always-present fields, then those by status."""

    job_id = serializers.RegexField(JOB_ID_PATTERN)
    file_id = serializers.IntegerField(min_value=1, max_value=MAX_FILE_ID)
    priority = serializers.ChoiceField(choices=Priority.choices)
    status = serializers.ChoiceField(choices=Status.choices)
    progress = serializers.IntegerField(min_value=0, max_value=100)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    # processing
    bytes_done = serializers.IntegerField(required=False, min_value=0, help_text="When processing.")
    bytes_total = serializers.IntegerField(
        required=False, allow_null=True, min_value=0, help_text="When processing; null until known."
    )
    estimated_completion = serializers.DateTimeField(
        required=False, allow_null=True, help_text="When processing; null until it can be estimated."
    )
    # completed
    download_url = serializers.CharField(
        required=False, help_text="When completed: the path of `GET /v1/download/{job_id}`."
    )
    expires_at = serializers.DateTimeField(
        required=False, allow_null=True, help_text="When completed: when the stored file is deleted."
    )
    file_name = serializers.CharField(required=False, allow_blank=True, help_text="When completed.")
    file_size = serializers.IntegerField(
        required=False, allow_null=True, min_value=0, help_text="When completed."
    )
    # failed, or queued after a failed attempt
    error = JobErrorSerializer(
        required=False, help_text="When failed, or queued again after a failed attempt."
    )
    attempts = serializers.IntegerField(
        required=False, min_value=1, help_text="When queued again after a failed attempt."
    )
    next_retry_at = serializers.DateTimeField(
        required=False, allow_null=True, help_text="When queued again after a failed attempt."
    )
    # queued and waiting for its turn, in the status answer and the socket's snapshot
    queue_position = serializers.IntegerField(
        required=False,
        min_value=1,
        help_text=(
            "When queued and waiting for its turn (no next_retry_at), in `GET /v1/download/status/"
            "{job_id}` only: its place in line, 1 being the next to start."
        ),
    )
    estimated_time = serializers.IntegerField(
        required=False,
        min_value=0,
        help_text="With queue_position: seconds until the job is likely to have completed, as initiate's.",
    )
    # queued or processing, in the status answer (not in the list's items)
    websocket_url = serializers.CharField(
        required=False,
        help_text=(
            "When queued or processing, in `GET /v1/download/status/{job_id}` only: the job's "
            "WebSocket with a fresh ticket, as initiate gives it."
        ),
    )


class DownloadJobCreatedSerializer(serializers.Serializer[dict[str, Any]]):
    job_id = serializers.RegexField(JOB_ID_PATTERN)
    status = serializers.ChoiceField(
        choices=Status.choices,
        help_text="`queued` for a new job; a repeated Idempotency-Key answers the existing job's status.",
    )
    estimated_time = serializers.IntegerField(
        min_value=0,
        help_text=(
            "Seconds until the job is likely to have completed: the jobs ahead of it in its priority's "
            "queue and the higher ones over the recent completion rate, plus the recent mean duration "
            "of a job (JOB_DEFAULT_ESTIMATE_S when no job completed lately); 0 once it has ended."
        ),
    )
    polling_interval = serializers.IntegerField(min_value=0, help_text="Milliseconds.")
    websocket_url = serializers.CharField(
        help_text=(
            "`ws(s)://<host>/v1/download/subscribe/<job_id>?ticket=<ticket>`: the ticket opens this "
            "job's socket, for this user, within WEBSOCKET_TICKET_TTL_S (300 s); it grants nothing "
            "else. The status of an active job carries a fresh one."
        )
    )


class DownloadLinkSerializer(serializers.Serializer[dict[str, Any]]):
    download_url = serializers.URLField(help_text="Presigned GET URL; each call mints a fresh one.")
    expires_at = serializers.DateTimeField(help_text="When the link expires.")
    retained_until = serializers.DateTimeField(allow_null=True, help_text="When the stored file is deleted.")
    file_name = serializers.CharField(allow_blank=True)
    file_size = serializers.IntegerField(allow_null=True, min_value=0)
    content_type = serializers.CharField(allow_blank=True)
    sha256 = serializers.CharField(allow_blank=True)


class DownloadJobPageSerializer(serializers.Serializer[dict[str, Any]]):
    results = JobStatusSerializer(many=True)
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)


def _data(name: str, data: serializers.Serializer[Any]) -> serializers.Serializer[Any]:
    return inline_serializer(name=name, fields={"success": _TrueField(), "data": data})


# For the APIs of the apps above jobs (webhooks/apis.py): the same envelopes.
data_envelope = _data

INITIATE_OK = _data("DownloadJobInitiateResponse", DownloadJobCreatedSerializer())
STATUS_OK = _data("DownloadJobStatusResponse", JobStatusSerializer())
LINK_OK = _data("DownloadLinkResponse", DownloadLinkSerializer())
LIST_OK = _data("DownloadJobListResponse", DownloadJobPageSerializer())
CANCEL_OK = inline_serializer(
    name="DownloadJobCancelResponse",
    fields={"success": _TrueField(), "message": serializers.CharField()},
)


# --- errors: `api_errors.exception_handler` ------------------------------------------------


def error_response(
    name: str, codes: list[str], description: str = "", **extra: serializers.Field[Any, Any, Any, Any]
) -> OpenApiResponse:
    error = inline_serializer(
        name=f"{name}Error",
        fields={
            "code": serializers.ChoiceField(choices=codes),
            "message": serializers.CharField(),
            **extra,
        },
    )
    envelope = inline_serializer(
        name=f"{name}ErrorResponse", fields={"success": _FalseField(), "error": error}
    )
    return OpenApiResponse(response=envelope, description=description or ", ".join(codes))


def validation_fields() -> serializers.DictField:
    return serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,  # malformed JSON answers the code without it
        help_text="Messages by request field (`non_field_errors` for the body as a whole).",
    )


VALIDATION_ERROR = error_response("Validation", ["VALIDATION_ERROR"], fields=validation_fields())
# initiate's 400: the body, or a `webhook_id` that an app above jobs refused (jobs/signals.py).
INITIATE_BAD_REQUEST = error_response(
    "InitiateBadRequest",
    ["VALIDATION_ERROR", "EMAIL_MISSING", "WEBHOOK_NOT_FOUND"],
    "VALIDATION_ERROR: the body is not valid (`fields` says where). "
    'EMAIL_MISSING: `notify` names "email" and the account has no e-mail address. '
    "WEBHOOK_NOT_FOUND: `webhook_id` is not one of your endpoints.",
    fields=validation_fields(),
)
UNAUTHENTICATED = error_response("Unauthenticated", ["UNAUTHENTICATED"])
CSRF_FAILED = error_response("PermissionDenied", ["PERMISSION_DENIED"])
UNSUPPORTED_MEDIA_TYPE = error_response("UnsupportedMediaType", ["UNSUPPORTED_MEDIA_TYPE"])
_NO_SUCH_JOB = (
    "JOB_NOT_FOUND: no job of yours has this id. "
    f"NOT_FOUND: the id is not even of the job id alphabet (`{JOB_ID_PATH_REGEX}`), so no such path."
)
JOB_NOT_FOUND = error_response("JobNotFound", ["JOB_NOT_FOUND", "NOT_FOUND"], _NO_SUCH_JOB)
JOB_NOT_FOUND_OR_NOT_READY = error_response(
    "JobNotFoundOrNotReady",
    ["JOB_NOT_FOUND", "NOT_FOUND", "JOB_NOT_READY"],
    f"{_NO_SUCH_JOB} JOB_NOT_READY: the job is still queued or processing.",
)
JOB_WILL_NOT_BE_READY = error_response(
    "JobWillNotBeReady",
    ["JOB_NOT_READY"],
    status=serializers.ChoiceField(choices=[Status.FAILED, Status.CANCELLED]),
)
DOWNLOAD_EXPIRED = error_response("DownloadExpired", ["DOWNLOAD_EXPIRED"])
JOB_ALREADY_FINISHED = error_response(
    "JobAlreadyFinished",
    ["JOB_ALREADY_FINISHED"],
    status=serializers.ChoiceField(choices=Status.choices),
)
RATE_LIMIT_EXCEEDED = error_response(
    "RateLimitExceeded",
    ["RATE_LIMIT_EXCEEDED"],
    retry_after=serializers.IntegerField(min_value=1, help_text="Seconds; the same as Retry-After."),
)

# Every operation needs a user; CSRF applies to the unsafe methods of a session.
AUTH_ERRORS: dict[int, OpenApiResponse] = {401: UNAUTHENTICATED}
UNSAFE_AUTH_ERRORS: dict[int, OpenApiResponse] = {
    401: UNAUTHENTICATED,
    403: OpenApiResponse(
        response=CSRF_FAILED.response,
        description="PERMISSION_DENIED: a session-authenticated request without its CSRF token.",
    ),
}


# --- parameters and headers ----------------------------------------------------------------

JOB_ID = OpenApiParameter(
    "job_id",
    OpenApiTypes.STR,
    OpenApiParameter.PATH,
    pattern=JOB_ID_PATTERN,
    description="The `job_id` that initiate returned. Another user's job is answered as unknown.",
)

IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    pattern=r"^[\x21-\x7e]{1,255}$",
    description=(
        "1-255 printable ASCII characters without spaces. The same key from the same user "
        "within 24 h answers the same job instead of starting a second one."
    ),
)

_RATE_LIMIT_CODES = [200, 400, 429]
RATE_LIMIT_HEADERS = [
    OpenApiParameter(
        "RateLimit-Limit",
        OpenApiTypes.INT,
        OpenApiParameter.HEADER,
        response=_RATE_LIMIT_CODES,
        description="Requests allowed in the window of the limit closest to running out.",
    ),
    OpenApiParameter(
        "RateLimit-Remaining",
        OpenApiTypes.INT,
        OpenApiParameter.HEADER,
        response=_RATE_LIMIT_CODES,
        description="Requests left in that window.",
    ),
    OpenApiParameter(
        "RateLimit-Reset",
        OpenApiTypes.INT,
        OpenApiParameter.HEADER,
        response=_RATE_LIMIT_CODES,
        description="Seconds until that window frees a request.",
    ),
    OpenApiParameter(
        "RateLimit-Policy",
        OpenApiTypes.STR,
        OpenApiParameter.HEADER,
        response=_RATE_LIMIT_CODES,
        description='Every initiate limit, e.g. `10;w=60;comment="user", 10;w=60;comment="ip"`.',
    ),
    OpenApiParameter(
        "Retry-After",
        OpenApiTypes.INT,
        OpenApiParameter.HEADER,
        response=[429],
        required=True,
        description="Seconds to wait before trying again.",
    ),
]

LIST_PARAMETERS = [
    OpenApiParameter(
        "cursor",
        OpenApiTypes.STR,
        description="Opaque: take it from the `next` or `previous` link of a page.",
    ),
    OpenApiParameter("page_size", OpenApiTypes.INT, description="Jobs per page, 20 by default, at most 100."),
]
