"""The error half of the API envelope: `{"success": false, "error": {"code", "message", ...}}`.

Every failure of a `/v1/` endpoint passes through `exception_handler`, so no traceback, SQL
or path ever reaches a client; unexpected errors are logged and answered 500.
"""

import logging
import math
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response

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
    logger.exception("Unhandled error in the API", exc_info=exc)
    return 500, error_body("INTERNAL_ERROR", "Something went wrong on our side"), {}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    status_code, body, headers = _envelope(exc)
    response = Response(body, status=status_code, headers=headers)
    if status_code == 401:
        response["WWW-Authenticate"] = "Token"
    return response


def json_404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if request.path.startswith("/v1/"):
        return JsonResponse(error_body("NOT_FOUND", "Not found"), status=404)
    return defaults.page_not_found(request, exception or Http404())


def json_500(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/v1/"):
        return JsonResponse(error_body("INTERNAL_ERROR", "Something went wrong on our side"), status=500)
    return defaults.server_error(request)
