"""What the API answers, as small typed records. Each keeps the answer's JSON in `raw`, so
a field the server adds later is still at hand."""

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

Priority = Literal["low", "normal", "high"]
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "low")
ACTIVE_STATUSES = frozenset({"queued", "processing"})
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "expired"})
STATUSES = ACTIVE_STATUSES | TERMINAL_STATUSES


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 timestamp of the API (UTC, with `Z`), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Job:
    """A job just started (the answer of initiate)."""

    job_id: str
    status: str
    estimated_time_s: int | None
    polling_interval_s: float
    websocket_url: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> "Job":
        interval_ms = data.get("polling_interval")
        return cls(
            job_id=str(data["job_id"]),
            status=str(data.get("status", "queued")),
            estimated_time_s=_int(data.get("estimated_time")),
            polling_interval_s=interval_ms / 1000
            if isinstance(interval_ms, int | float) and interval_ms > 0
            else 2.0,
            websocket_url=data.get("websocket_url") or None,
            raw=data,
        )


@dataclass(frozen=True)
class JobError:
    code: str
    message: str
    retryable: bool


@dataclass(frozen=True)
class JobStatus:
    """A job's status object: the same from GET /v1/download/status/<id>, the list, and
    the last message of its socket."""

    job_id: str
    status: str
    progress: int
    file_id: int | None = None
    priority: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    # processing
    bytes_done: int | None = None
    bytes_total: int | None = None
    estimated_completion: datetime | None = None
    # completed
    file_name: str | None = None
    file_size: int | None = None
    expires_at: datetime | None = None
    # failed, or queued again after a failed attempt
    error: JobError | None = None
    attempts: int | None = None
    next_retry_at: datetime | None = None
    # queued or processing: opens the job's socket for a few minutes
    websocket_url: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> "JobStatus":
        error = data.get("error")
        return cls(
            job_id=str(data["job_id"]),
            status=str(data.get("status", "")),
            progress=_int(data.get("progress")) or 0,
            file_id=_int(data.get("file_id")),
            priority=data.get("priority"),
            created_at=parse_time(data.get("created_at")),
            updated_at=parse_time(data.get("updated_at")),
            bytes_done=_int(data.get("bytes_done")),
            bytes_total=_int(data.get("bytes_total")),
            estimated_completion=parse_time(data.get("estimated_completion")),
            file_name=data.get("file_name") or None,
            file_size=_int(data.get("file_size")),
            expires_at=parse_time(data.get("expires_at")),
            error=(
                JobError(
                    code=str(error.get("code", "")),
                    message=str(error.get("message", "")),
                    retryable=bool(error.get("retryable")),
                )
                if isinstance(error, dict)
                else None
            ),
            attempts=_int(data.get("attempts")),
            next_retry_at=parse_time(data.get("next_retry_at")),
            websocket_url=data.get("websocket_url") or None,
            raw=data,
        )


@dataclass(frozen=True)
class Link:
    """A fresh download link of a completed job's file (GET /v1/download/<id>)."""

    download_url: str
    expires_at: datetime | None
    retained_until: datetime | None
    file_name: str | None
    file_size: int | None
    content_type: str | None
    sha256: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> "Link":
        return cls(
            download_url=str(data["download_url"]),
            expires_at=parse_time(data.get("expires_at")),
            retained_until=parse_time(data.get("retained_until")),
            file_name=data.get("file_name") or None,
            file_size=_int(data.get("file_size")),
            content_type=data.get("content_type") or None,
            sha256=(data.get("sha256") or "").lower() or None,
            raw=data,
        )


@dataclass(frozen=True)
class DownloadResult:
    """A file saved and verified: its size and sha256 are the API's."""

    path: Path
    size: int
    sha256: str
    job_id: str
    file_name: str | None = None


Phase = Literal["queued", "processing", "downloading"]
Transport = Literal["websocket", "polling"]


@dataclass(frozen=True)
class Progress:
    """What `on_progress` is called with: the job being prepared on the server (`queued`,
    `processing`), then its file being fetched (`downloading`). `bytes_total` is None while
    unknown. `transport` says how the job is followed (None while downloading)."""

    job_id: str
    phase: Phase
    percent: int
    bytes_done: int | None
    bytes_total: int | None
    transport: Transport | None
    job: JobStatus | None
