"""Typed errors. Each carries the API's error code (`code`), its message, and the HTTP
status of the answer (`status`; None when no answer said it: a job that failed on the
worker, a file that did not verify, a server that could not be reached).

    ApiError
    ├── Unauthenticated         401 UNAUTHENTICATED
    ├── PermissionDenied        403
    ├── NotFound                404
    │   └── JobNotFound         404 JOB_NOT_FOUND (also another user's job)
    ├── JobNotReady             404/409 JOB_NOT_READY (not completed, or never will be)
    ├── Conflict                409
    │   └── JobAlreadyFinished  409 JOB_ALREADY_FINISHED (cancel of a finished job)
    ├── DownloadExpired         410 DOWNLOAD_EXPIRED, or a job whose status is `expired`
    ├── ValidationError         400 VALIDATION_ERROR (`fields`)
    ├── RateLimited             429 RATE_LIMIT_EXCEEDED (`retry_after`)
    ├── ServiceUnavailable      503 SERVICE_UNAVAILABLE (`retry_after`)
    ├── ServerError             other 5xx
    ├── ConnectionFailed        NETWORK_ERROR: no answer at all
    ├── JobFailed               the job ended `failed`: its code (FILE_NOT_FOUND, ...), `retryable`
    ├── JobCancelled            JOB_CANCELLED: the job was cancelled while awaited
    ├── IntegrityError          INTEGRITY_ERROR: the file's size or sha256 is not the API's
    └── WaitTimeout             WAIT_TIMEOUT: `wait(timeout_s=...)` ran out (also a TimeoutError)
"""

from collections.abc import Mapping
from typing import Any


class ApiError(Exception):
    """Base of every error of this package."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        details: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
        job_id: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.details: dict[str, Any] = dict(details or {})
        self.retry_after = retry_after
        self.job_id = job_id


class Unauthenticated(ApiError):
    pass


class PermissionDenied(ApiError):
    pass


class NotFound(ApiError):
    pass


class JobNotFound(NotFound):
    pass


class JobNotReady(ApiError):
    pass


class Conflict(ApiError):
    pass


class JobAlreadyFinished(Conflict):
    pass


class DownloadExpired(ApiError):
    pass


class ValidationError(ApiError):
    @property
    def fields(self) -> dict[str, list[str]]:
        """Per field, what is wrong with it (`{"file_id": ["..."]}`)."""
        fields = self.details.get("fields")
        return fields if isinstance(fields, dict) else {}


class RateLimited(ApiError):
    pass


class ServiceUnavailable(ApiError):
    pass


class ServerError(ApiError):
    pass


class ConnectionFailed(ApiError):
    pass


class JobFailed(ApiError):
    @property
    def retryable(self) -> bool:
        """The worker's verdict: a new job for the same file may well succeed."""
        return bool(self.details.get("retryable"))


class JobCancelled(ApiError):
    pass


class IntegrityError(ApiError):
    pass


class WaitTimeout(ApiError, TimeoutError):
    pass


_BY_CODE: dict[str, type[ApiError]] = {
    "UNAUTHENTICATED": Unauthenticated,
    "PERMISSION_DENIED": PermissionDenied,
    "JOB_NOT_FOUND": JobNotFound,
    "JOB_NOT_READY": JobNotReady,
    "JOB_ALREADY_FINISHED": JobAlreadyFinished,
    "DOWNLOAD_EXPIRED": DownloadExpired,
    "VALIDATION_ERROR": ValidationError,
    "RATE_LIMIT_EXCEEDED": RateLimited,
    "SERVICE_UNAVAILABLE": ServiceUnavailable,
}
_BY_STATUS: dict[int, type[ApiError]] = {
    400: ValidationError,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    410: DownloadExpired,
    429: RateLimited,
    503: ServiceUnavailable,
}


def _seconds(value: Any) -> float | None:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds >= 0 else None


def error_from_answer(
    status: int, payload: Any, headers: Mapping[str, str], *, job_id: str | None = None
) -> ApiError:
    """The error an answer of the API stands for: its envelope's `error` when it has one
    (a proxy's error page has none), else its status; about `job_id` if given."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        error = {}
    code = str(error.get("code") or f"HTTP_{status}")
    message = str(error.get("message") or f"The server answered {status}")
    details = {key: value for key, value in error.items() if key not in ("code", "message")}
    retry_after = _seconds(error.get("retry_after"))
    if retry_after is None:
        retry_after = _seconds(headers.get("Retry-After"))
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    return cls(code, message, status=status, details=details, retry_after=retry_after, job_id=job_id)
