"""The error half of the API envelope: `{"success": false, "error": {"code", "message", ...}}`.

Every failure of a `/v1/` endpoint passes through `exception_handler`, so no traceback, SQL
or path ever reaches a client; unexpected errors are logged and answered 500. A fault of
a dependency (the database, Redis or S3 unreachable or past the web role's timeouts, the
connection pool exhausted) is answered 503 `SERVICE_UNAVAILABLE` with `Retry-After`, on
every path: the request may well succeed a moment later.
"""

import logging
import math
import sys
from typing import Any

import botocore.exceptions
import redis
from django import db
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response

from jobs.api.authentication import CHALLENGE, INVALID_KEY_CHALLENGE, unsupported_scheme_message

logger = logging.getLogger(__name__)


class ApiError(exceptions.APIException):
    def __init__(
        self,
        *,
        status_code: int,
        code: str,
        message: str,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail=message, code=code)
        self.status_code = status_code
        self.error = {"code": code, "message": message, **(extra or {})}
        self.headers = headers or {}


# How long a client is asked to wait after a dependency's fault.
SERVICE_UNAVAILABLE_RETRY_AFTER_S = 5
_DEPENDENCY_FAULTS = (
    # connection refused or lost, the pool's timeout, a deadlock, and a statement past the
    # web role's statement_timeout (psycopg's QueryCanceled, which Django wraps as this)
    db.OperationalError,
    db.InterfaceError,
    redis.ConnectionError,
    redis.TimeoutError,
    # S3 out of reach or past its web-role timeouts (settings.STORAGES)
    botocore.exceptions.ConnectionError,  # connect timeout, endpoint unreachable
    botocore.exceptions.HTTPClientError,  # read timeout, connection closed mid-answer
)


def is_dependency_fault(exc: BaseException | None) -> bool:
    return isinstance(exc, _DEPENDENCY_FAULTS)


def service_unavailable() -> tuple[dict[str, Any], dict[str, str]]:
    """The body and headers of a 503 for a dependency's fault."""
    retry_after = SERVICE_UNAVAILABLE_RETRY_AFTER_S
    body = error_body(
        "SERVICE_UNAVAILABLE", "The service is briefly unavailable; try again", retry_after=retry_after
    )
    return body, {"Retry-After": str(retry_after)}


def job_not_found() -> ApiError:
    return ApiError(status_code=status.HTTP_404_NOT_FOUND, code="JOB_NOT_FOUND", message="Job not found")


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"success": False, "error": {"code": code, "message": message, **extra}}


def _flatten(detail: Any) -> Any:
    if isinstance(detail, dict):
        return {key: _flatten(value) for key, value in detail.items()}
    if isinstance(detail, list):
        return [_flatten(item) for item in detail]
    return str(detail)


def _envelope(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    if isinstance(exc, ApiError):
        return exc.status_code, {"success": False, "error": exc.error}, exc.headers
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        return 401, error_body("UNAUTHENTICATED", str(exc.detail)), {}
    if isinstance(exc, RequestDataTooBig):  # past DATA_UPLOAD_MAX_MEMORY_SIZE
        return 413, error_body("PAYLOAD_TOO_LARGE", "The request body is too large"), {}
    if isinstance(exc, exceptions.ParseError):
        return 400, error_body("VALIDATION_ERROR", "Malformed JSON body"), {}
    if isinstance(exc, exceptions.ValidationError):
        detail = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        return 400, error_body("VALIDATION_ERROR", "Invalid request", fields=_flatten(detail)), {}
    if isinstance(exc, exceptions.Throttled):
        retry_after = max(1, math.ceil(getattr(exc, "wait", None) or 1))
        body = error_body("RATE_LIMIT_EXCEEDED", "Too many download requests", retry_after=retry_after)
        return 429, body, {"Retry-After": str(retry_after)}
    if isinstance(exc, exceptions.PermissionDenied):
        return 403, error_body("PERMISSION_DENIED", str(exc.detail)), {}
    if isinstance(exc, exceptions.NotFound):
        return 404, error_body("NOT_FOUND", "Not found"), {}
    if isinstance(exc, exceptions.MethodNotAllowed):
        return 405, error_body("METHOD_NOT_ALLOWED", str(exc.detail)), {}
    if isinstance(exc, exceptions.UnsupportedMediaType):
        return 415, error_body("UNSUPPORTED_MEDIA_TYPE", "Send the body as application/json"), {}
    if isinstance(exc, exceptions.NotAcceptable):
        return 406, error_body("NOT_ACCEPTABLE", "This API answers application/json"), {}
    if isinstance(exc, exceptions.APIException):
        return exc.status_code, error_body(str(exc.default_code).upper(), str(exc.detail)), {}
    if is_dependency_fault(exc):
        logger.warning("Dependency unavailable: %s: %s", type(exc).__name__, exc)
        return 503, *service_unavailable()
    logger.exception("Unhandled error in the API", exc_info=exc)
    return 500, error_body("INTERNAL_ERROR", "Something went wrong on our side"), {}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    request = context.get("request")
    if (
        isinstance(exc, exceptions.NotAuthenticated)
        and request is not None
        and (message := unsupported_scheme_message(request))
    ):
        exc = exceptions.NotAuthenticated(message)
    status_code, body, headers = _envelope(exc)
    response = Response(body, status=status_code, headers=headers)
    if status_code == 401:
        invalid_key = isinstance(exc, exceptions.AuthenticationFailed)
        response["WWW-Authenticate"] = INVALID_KEY_CHALLENGE if invalid_key else CHALLENGE
    return response


def json_404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if request.path.startswith("/v1/"):
        return JsonResponse(error_body("NOT_FOUND", "Not found"), status=404)
    return defaults.page_not_found(request, exception or Http404())


def json_500(request: HttpRequest) -> HttpResponse:
    """Django's answer to an exception outside the API's views (the page, the admin, a
    middleware), which it calls while handling it: a dependency's fault is a 503."""
    if is_dependency_fault(sys.exc_info()[1]):
        body, headers = service_unavailable()
        if request.path.startswith("/v1/"):
            return JsonResponse(body, status=503, headers=headers)
        return HttpResponse(
            "Service briefly unavailable; try again in a moment.",
            status=503,
            content_type="text/plain; charset=utf-8",
            headers=headers,
        )
    if request.path.startswith("/v1/"):
        return JsonResponse(error_body("INTERNAL_ERROR", "Something went wrong on our side"), status=500)
    return defaults.server_error(request)
