"""Where files come from. `file_id` names a file at the origin chosen by `ORIGIN`.

Every origin opens a file as an `OriginFile`: its name, type and size (when known) and an
iterator of byte chunks. Failures are raised as `JobError` with a code from `errors.py`,
never as the transport's own exceptions.
"""

import mimetypes
import random
import re
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from email.message import Message
from email.utils import collapse_rfc2231_value
from pathlib import Path
from typing import Protocol

import httpx
from django.conf import settings

from .errors import ErrorCode, JobError

DEFAULT_CONTENT_TYPE = "application/octet-stream"


@dataclass
class OriginFile:
    name: str
    content_type: str
    size: int | None
    chunks: Iterator[bytes]


class Origin(Protocol):
    def open(self, file_id: int, *, chunk_bytes: int) -> AbstractContextManager[OriginFile]: ...


_UNSAFE_NAME_CHARS = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]+')


def safe_file_name(name: str, *, fallback: str) -> str:
    """A file name fit for a Content-Disposition header and any file system: no path,
    no control characters, no leading dots, at most 200 characters."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE_NAME_CHARS.sub("_", name).strip().lstrip(".")
    if len(name) > 200:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: 200 - len(ext) - 1] + dot + ext) if dot and len(ext) <= 16 else name[:200]
    return name or fallback


def _default_name(file_id: int, content_type: str) -> str:
    ext = mimetypes.guess_extension(content_type.split(";")[0].strip()) or ".bin"
    return f"file_{file_id}{ext}"


def _check_size(size: int | None) -> None:
    if size is not None and size > settings.JOB_MAX_FILE_BYTES:
        raise JobError(
            ErrorCode.FILE_TOO_LARGE,
            f"File is {size} bytes; the limit is {settings.JOB_MAX_FILE_BYTES} bytes",
        )


# --- http ---------------------------------------------------------------------------------

_HTTP_STATUS_CODES = {
    400: ErrorCode.INVALID_FILE_ID,
    401: ErrorCode.PERMISSION_DENIED,
    403: ErrorCode.PERMISSION_DENIED,
    404: ErrorCode.FILE_NOT_FOUND,
    408: ErrorCode.TIMEOUT,
    410: ErrorCode.FILE_NOT_FOUND,
    413: ErrorCode.FILE_TOO_LARGE,
    422: ErrorCode.INVALID_FILE_ID,
    429: ErrorCode.RATE_LIMIT,
    504: ErrorCode.TIMEOUT,
}


def _http_error(status: int) -> JobError:
    if status in _HTTP_STATUS_CODES:
        code = _HTTP_STATUS_CODES[status]
    elif status >= 500:
        code = ErrorCode.TEMPORARY_UNAVAILABLE
    else:
        code = ErrorCode.PROCESSING_ERROR
    return JobError(code, f"Origin answered HTTP {status}")


def _transport_error(exc: httpx.HTTPError) -> JobError:
    if isinstance(exc, httpx.TimeoutException):
        return JobError(ErrorCode.TIMEOUT, f"Origin timed out ({type(exc).__name__})")
    return JobError(ErrorCode.NETWORK_ERROR, f"Origin connection failed ({type(exc).__name__})")


def _name_from_disposition(header: str) -> str | None:
    msg = Message()
    msg["content-disposition"] = header
    # RFC 6266 4.3: when both are sent, `filename*` (RFC 5987, any charset) wins over the
    # plain `filename` fallback, wherever it stands; get_filename() takes the first.
    for name, value in msg.get_params(header="content-disposition") or []:
        if name.lower() == "filename" and isinstance(value, tuple):
            return collapse_rfc2231_value(value)
    return msg.get_filename()


class HttpOrigin:
    """Streams `url_template.format(file_id=...)` with connect and read timeouts."""

    def __init__(self, *, url_template: str, connect_timeout_s: float, read_timeout_s: float) -> None:
        if "{file_id}" not in url_template:
            raise ValueError("ORIGIN_URL_TEMPLATE must contain {file_id}")
        self.url_template = url_template
        self.timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)

    @contextmanager
    def open(self, file_id: int, *, chunk_bytes: int) -> Iterator[OriginFile]:
        url = self.url_template.format(file_id=file_id)
        try:
            with (
                httpx.Client(timeout=self.timeout, follow_redirects=True) as http,
                http.stream("GET", url, headers={"Accept-Encoding": "identity"}) as response,
            ):
                if response.status_code != 200:
                    raise _http_error(response.status_code)
                yield self._file(file_id, url, response, chunk_bytes)
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc

    def _file(self, file_id: int, url: str, response: httpx.Response, chunk_bytes: int) -> OriginFile:
        content_type = response.headers.get("content-type", DEFAULT_CONTENT_TYPE)
        length = response.headers.get("content-length")
        size = int(length) if length and length.isdigit() else None
        _check_size(size)
        name = None
        if disposition := response.headers.get("content-disposition"):
            name = _name_from_disposition(disposition)
        if not name:
            last_segment = httpx.URL(url).path.rsplit("/", 1)[-1]
            name = last_segment if "." in last_segment else None
        fallback = _default_name(file_id, content_type)
        return OriginFile(
            name=safe_file_name(name or fallback, fallback=fallback),
            content_type=content_type,
            size=size,
            chunks=self._chunks(response, size, chunk_bytes),
        )

    @staticmethod
    def _chunks(response: httpx.Response, size: int | None, chunk_bytes: int) -> Iterator[bytes]:
        received = 0
        try:
            for chunk in response.iter_raw(chunk_bytes):
                received += len(chunk)
                if size is None:
                    _check_size(received)
                yield chunk
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        if size is not None and received != size:
            raise JobError(ErrorCode.NETWORK_ERROR, f"Origin sent {received} of {size} bytes")


# --- directory ----------------------------------------------------------------------------


class DirectoryOrigin:
    """Files named `<file_id>` or `<file_id>.<ext>` directly under `root` (an on-prem share).
    A symlink that leads outside the root is refused."""

    def __init__(self, *, root: str) -> None:
        self.root = Path(root).resolve()

    def _find(self, file_id: int) -> Path:
        candidates = [self.root / str(file_id), *sorted(self.root.glob(f"{file_id}.*"))]
        for candidate in candidates:
            if not candidate.exists():
                continue
            resolved = candidate.resolve()
            if not resolved.is_relative_to(self.root):
                raise JobError(ErrorCode.PERMISSION_DENIED, "File is outside the origin directory")
            if resolved.is_file():
                return resolved
        raise JobError(ErrorCode.FILE_NOT_FOUND, f"No file {file_id} at the origin")

    @contextmanager
    def open(self, file_id: int, *, chunk_bytes: int) -> Iterator[OriginFile]:
        path = self._find(file_id)
        try:
            handle = path.open("rb")
        except PermissionError as exc:
            raise JobError(ErrorCode.PERMISSION_DENIED, "File is not readable") from exc
        with handle:
            size = path.stat().st_size
            _check_size(size)
            content_type = mimetypes.guess_type(path.name)[0] or DEFAULT_CONTENT_TYPE
            yield OriginFile(
                name=safe_file_name(path.name, fallback=_default_name(file_id, content_type)),
                content_type=content_type,
                size=size,
                chunks=iter(lambda: handle.read(chunk_bytes), b""),
            )


# --- synthetic ----------------------------------------------------------------------------

SYNTHETIC_SEGMENT_BYTES = 1024 * 1024


def synthetic_chunks(file_id: int, size: int, chunk_bytes: int) -> Iterator[bytes]:
    """The bytes of synthetic file `file_id`: the same for the same id and size, anywhere.
    Each MiB is one random block (seeded by the id) that starts with its own index, so the
    file is not one block repeated."""
    block = random.Random(file_id).randbytes(SYNTHETIC_SEGMENT_BYTES)  # noqa: S311 (test data)
    offset = 0
    while offset < size:
        index, start = divmod(offset, SYNTHETIC_SEGMENT_BYTES)
        segment = memoryview(index.to_bytes(8, "big") + block[8:])
        segment_end = min(SYNTHETIC_SEGMENT_BYTES, size - offset + start)
        while start < segment_end:
            end = min(segment_end, start + chunk_bytes)
            yield bytes(segment[start:end])
            offset += end - start
            start = end


class SyntheticOrigin:
    """Generated bytes at a configured rate: for the demo, benchmarks and tests. Not real files."""

    def __init__(self, *, size_bytes: int, rate_bps: int) -> None:
        self.size_bytes = size_bytes
        self.rate_bps = rate_bps

    def _throttled(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        started = time.monotonic()
        sent = 0
        for chunk in chunks:
            sent += len(chunk)
            if self.rate_bps:
                time.sleep(max(0.0, started + sent / self.rate_bps - time.monotonic()))
            yield chunk

    @contextmanager
    def open(self, file_id: int, *, chunk_bytes: int) -> Iterator[OriginFile]:
        _check_size(self.size_bytes)
        yield OriginFile(
            name=f"synthetic_{file_id}.bin",
            content_type=DEFAULT_CONTENT_TYPE,
            size=self.size_bytes,
            chunks=self._throttled(synthetic_chunks(file_id, self.size_bytes, chunk_bytes)),
        )


def get_origin() -> Origin:
    kind = settings.ORIGIN
    if kind == "http":
        return HttpOrigin(
            url_template=settings.ORIGIN_URL_TEMPLATE,
            connect_timeout_s=settings.ORIGIN_CONNECT_TIMEOUT_S,
            read_timeout_s=settings.ORIGIN_READ_TIMEOUT_S,
        )
    if kind == "directory":
        return DirectoryOrigin(root=settings.ORIGIN_DIRECTORY)
    if kind == "synthetic":
        return SyntheticOrigin(size_bytes=settings.SYNTHETIC_FILE_BYTES, rate_bps=settings.SYNTHETIC_RATE_BPS)
    raise ValueError(f"Unknown ORIGIN {kind!r}: use http, directory or synthetic")
