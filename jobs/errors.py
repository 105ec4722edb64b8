"""Error codes of a job's work, and which of them are worth another attempt.

Origins and staging raise `JobError` with one of these codes; the services decide from
`retryable` whether the job is retried or fails at once. Nothing else classifies errors.
"""

from enum import StrEnum


class ErrorCode(StrEnum):
    # Retryable: the same request may well succeed later.
    NETWORK_ERROR = "NETWORK_ERROR"
    TEMPORARY_UNAVAILABLE = "TEMPORARY_UNAVAILABLE"
    RATE_LIMIT = "RATE_LIMIT"
    PROCESSING_ERROR = "PROCESSING_ERROR"
    TIMEOUT = "TIMEOUT"
    STORAGE_ERROR = "STORAGE_ERROR"
    # Not a failure: a queued job waits its turn because the origin already serves
    # ORIGIN_MAX_IN_FLIGHT jobs or its ORIGIN_START_RATE is used up. No attempt is used.
    ORIGIN_BUSY = "ORIGIN_BUSY"
    # Not retryable: asking again gives the same answer.
    FILE_NOT_FOUND = "FILE_NOT_FOUND"
    INVALID_FILE_ID = "INVALID_FILE_ID"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    FILE_TOO_LARGE = "FILE_TOO_LARGE"
    # The origin sent the worker elsewhere than the origin and the hosts allowed for it.
    ORIGIN_REDIRECT_REFUSED = "ORIGIN_REDIRECT_REFUSED"
    # The job ran past its time limit: another attempt would run past it again.
    DOWNLOAD_TIMEOUT = "DOWNLOAD_TIMEOUT"
    # Local storage ran out of space (or quota): another attempt would meet the same disk.
    STORAGE_FULL = "STORAGE_FULL"


RETRYABLE_CODES = frozenset(
    {
        ErrorCode.NETWORK_ERROR,
        ErrorCode.TEMPORARY_UNAVAILABLE,
        ErrorCode.RATE_LIMIT,
        ErrorCode.PROCESSING_ERROR,
        ErrorCode.TIMEOUT,
        # A storage hiccup (S3 5xx, throttling) is transient; a misconfigured bucket is
        # not, but it fails every attempt quickly and ends dead-lettered for an operator.
        ErrorCode.STORAGE_ERROR,
        ErrorCode.ORIGIN_BUSY,
    }
)

# Failures that say the origin is unwell (rather than the file or our storage): counted
# by the origin's circuit breaker.
ORIGIN_FAILURE_CODES = frozenset(
    {ErrorCode.NETWORK_ERROR, ErrorCode.TEMPORARY_UNAVAILABLE, ErrorCode.RATE_LIMIT, ErrorCode.TIMEOUT}
)


# Failures that are the caller's own: the file id names no file, or one it may not have or
# that is too large. Asking again gives the same answer whatever the service does, so they
# do not count against the service's objective (`download_jobs_terminal_total{fault}`).
CLIENT_FAULT_CODES = frozenset(
    {
        ErrorCode.FILE_NOT_FOUND,
        ErrorCode.INVALID_FILE_ID,
        ErrorCode.PERMISSION_DENIED,
        ErrorCode.FILE_TOO_LARGE,
    }
)

FAULT_NONE, FAULT_SERVICE, FAULT_CLIENT = "none", "service", "client"


def error_fault(code: str) -> str:
    """Whose fault a job's end is: none (no error), the client's, or the service's (every
    other code, the origin's and the storage's included: the caller can do nothing about them)."""
    if not code:
        return FAULT_NONE
    return FAULT_CLIENT if code in CLIENT_FAULT_CODES else FAULT_SERVICE


class JobError(Exception):
    """A classified failure of a job's work. `message` is shown to the job's owner.

    `origin_fault` says whether the origin's circuit breaker counts it as the origin's
    failure: by default, when its code is one of ORIGIN_FAILURE_CODES; a DOWNLOAD_TIMEOUT
    counts when the attempt spent its time waiting for the origin's bytes (a slow or
    trickling origin), not for the store's."""

    def __init__(self, code: ErrorCode, message: str, *, origin_fault: bool | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.origin_fault = code in ORIGIN_FAILURE_CODES if origin_fault is None else origin_fault

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES


class JobCancelled(Exception):
    """The job was cancelled while its work ran; the worker stops and cleans up."""


class JobSuperseded(Exception):
    """The job is no longer this attempt's to write (cancelled, or a newer attempt runs)."""
