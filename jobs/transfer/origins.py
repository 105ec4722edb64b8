"""Where files come from. `file_id` names a file at the origin chosen by `ORIGIN`.

Every origin opens a file as an `OriginFile`: its name, type and size (when known) and an
iterator of byte chunks. Failures are raised as `JobError` with a code from `errors.py`,
never as the transport's own exceptions.

An attempt that resumes asks for the file from an offset, with the validator the first
attempt was given (an HTTP `Range` with `If-Range`). The origin starts there only if it
can and the file is still the same version; otherwise it sends the whole file, and says
so by `OriginFile.offset`, which is where its chunks start.

Whatever an origin announces, no more bytes are read than it announced nor than
JOB_MAX_FILE_BYTES allows; its type and validator are kept only if they are well formed
and fit the job's columns.
"""

import ipaddress
import mimetypes
import os
import random
import re
import socket
import time
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from email.message import Message
from email.utils import collapse_rfc2231_value
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import httpx
from django.conf import settings

from jobs.errors import ErrorCode, JobError

DEFAULT_CONTENT_TYPE = "application/octet-stream"
# The longest header value of the origin's that a job keeps: its columns `content_type`
# and `origin_validator` (jobs/models.py) hold 255 characters.
HEADER_VALUE_MAX_CHARS = 255


@dataclass
class OriginFile:
    name: str
    content_type: str
    size: int | None  # of the whole file
    chunks: Iterator[bytes]  # from `offset` to the end
    offset: int = 0
    # This version of the file, for a later request of the rest; empty: cannot resume.
    validator: str = ""


class Origin(Protocol):
    def open(
        self, file_id: int, *, chunk_bytes: int, offset: int = 0, validator: str = ""
    ) -> AbstractContextManager[OriginFile]: ...


_UNSAFE_NAME_CHARS = re.compile(r'[\x00-\x1f\x7f-\x9f/\\:*?"<>|]+')
# Invisible and control characters of Unicode: bidi overrides that disguise an extension
# ("invoice\u202efdp.exe" shows as "invoiceexe.pdf"), zero-width characters, line and
# paragraph separators, surrogates (undecodable bytes), private and unassigned ones.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
FILE_NAME_MAX_BYTES = 200  # of UTF-8: file systems count bytes (255 at most)


def _cut_utf8(text: str, max_bytes: int) -> str:
    return text.encode()[:max_bytes].decode("utf-8", "ignore")


def safe_file_name(name: str, *, fallback: str) -> str:
    """A file name fit for a Content-Disposition header and any file system: no path,
    no control or invisible characters, no leading dots, at most 200 bytes of UTF-8
    (the extension kept). Quotes and semicolons that remain are for the header's
    builder (`jobs.transfer.storage.attachment_disposition`) to encode."""
    name = unicodedata.normalize("NFC", name)
    name = "".join("\x00" if unicodedata.category(char) in _INVISIBLE_CATEGORIES else char for char in name)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE_NAME_CHARS.sub("_", name).strip().lstrip(".")
    if len(name.encode()) > FILE_NAME_MAX_BYTES:
        stem, dot, ext = name.rpartition(".")
        if dot and len(ext.encode()) <= 16:
            name = _cut_utf8(stem, FILE_NAME_MAX_BYTES - len(ext.encode()) - 1) + dot + ext
        else:
            name = _cut_utf8(name, FILE_NAME_MAX_BYTES)
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


def read_size_check(bytes_read: int) -> None:
    """FILE_TOO_LARGE as soon as more bytes of a file arrived than the limit allows,
    whatever its origin announced: checked before the chunk that crosses it is used."""
    if bytes_read > settings.JOB_MAX_FILE_BYTES:
        raise JobError(
            ErrorCode.FILE_TOO_LARGE, f"File is larger than the limit of {settings.JOB_MAX_FILE_BYTES} bytes"
        )


# A media type (RFC 9110 8.3.1) in ASCII: type/subtype, then parameters whose values are
# tokens or quoted strings of printable characters.
_MEDIA_TYPE = re.compile(
    r"[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*(?:[ \t]*;[ \t]*[\w.+-]+=(?:[\w.+-]+|\"[ !#-\[\]-~]*\"))*",
    re.ASCII,
)


def media_type_or_default(value: str) -> str:
    """`value` if it is a well-formed media type short enough to be kept, else
    application/octet-stream. What a browser is then served is `storage.safe_content_type`'s
    decision."""
    if len(value) <= HEADER_VALUE_MAX_CHARS and _MEDIA_TYPE.fullmatch(value):
        return value
    return DEFAULT_CONTENT_TYPE


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


_DEFAULT_PORTS = {"http": 80, "https": 443}


def address_is_public(address: str) -> bool:
    """False for an address of this machine or its networks: loopback, private, link-local
    (the metadata services at 169.254.169.254 and fd00:ec2::254 among them), shared (carrier
    NAT), reserved (IPv4-mapped IPv6 among them), multicast and unspecified ones."""
    ip = ipaddress.ip_address(address)
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    )


def _host_key(host: str) -> str:
    """A host as compared: an IP address in its canonical form, a name in lower case."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower()


def _endpoint(url: httpx.URL) -> tuple[str, str, int]:
    return url.scheme, _host_key(url.host), url.port or _DEFAULT_PORTS[url.scheme]


def _allowed_host(entry: str) -> tuple[str, int | None]:
    """An ORIGIN_ALLOWED_HOSTS entry, `host` or `host:port` (an IPv6 address in brackets),
    as (host, port or None)."""
    parts = urlsplit(f"//{entry.strip()}")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if not parts.hostname or port == 0 or parts.path or parts.query or parts.fragment or parts.username:
        raise ValueError(f"ORIGIN_ALLOWED_HOSTS: {entry!r} is not a host or host:port")
    return _host_key(parts.hostname), port


def _redirect_refused(reason: str) -> JobError:
    return JobError(ErrorCode.ORIGIN_REDIRECT_REFUSED, f"Origin redirected {reason}")


def _public_addresses(url: httpx.URL) -> list[str]:
    """The addresses of `url`'s host, resolved once; refused unless every one is public."""
    port = url.port or _DEFAULT_PORTS[url.scheme]
    try:
        found = socket.getaddrinfo(url.raw_host.decode("ascii"), port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise JobError(
            ErrorCode.NETWORK_ERROR, f"Origin redirected to {url.host}, which could not be resolved"
        ) from exc
    addresses = list(dict.fromkeys(str(sockaddr[0]) for *_, sockaddr in found))
    if not all(address_is_public(address) for address in addresses):
        raise _redirect_refused(f"to {url.host}, which resolves to an address that is not public")
    return addresses


class HttpOrigin:
    """Streams `url_template.format(file_id=...)` with connect and read timeouts.

    It connects to the configured origin (the scheme, host and port of the template),
    trusted as configured, wherever its name leads (an internal file server). It follows
    up to `max_redirects` redirects there or to a host of `allowed_hosts` (`host`: on its
    scheme's port; `host:port`); such a host's name is resolved once, every address it
    has must be public, and the request goes to one of those addresses (no second lookup
    that could answer otherwise). Any other redirect fails ORIGIN_REDIRECT_REFUSED before
    a connection is opened: an origin cannot make the worker fetch an internal service."""

    def __init__(
        self,
        *,
        url_template: str,
        connect_timeout_s: float,
        read_timeout_s: float,
        allowed_hosts: Iterable[str] = (),
        max_redirects: int = 5,
    ) -> None:
        if "{file_id}" not in url_template:
            raise ValueError("ORIGIN_URL_TEMPLATE must contain {file_id}")
        origin = httpx.URL(url_template.format(file_id=0))
        if origin.scheme not in _DEFAULT_PORTS or not origin.host:
            raise ValueError("ORIGIN_URL_TEMPLATE must be an http or https URL")
        if max_redirects < 0:
            raise ValueError("ORIGIN_MAX_REDIRECTS must be 0 or more")
        self.url_template = url_template
        self.origin = _endpoint(origin)
        self.allowed_hosts = frozenset(_allowed_host(entry) for entry in allowed_hosts if entry.strip())
        self.max_redirects = max_redirects
        self.timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)

    @contextmanager
    def open(
        self, file_id: int, *, chunk_bytes: int, offset: int = 0, validator: str = ""
    ) -> Iterator[OriginFile]:
        url = httpx.URL(self.url_template.format(file_id=file_id))
        headers = {"Accept-Encoding": "identity"}
        if offset and validator:
            # If-Range: the rest of the file if it is still this version, else all of it.
            headers |= {"Range": f"bytes={offset}-", "If-Range": validator}
        try:
            with httpx.Client(timeout=self.timeout) as http:
                with self._get(http, url, headers) as response:
                    start = _range_start(response, offset) if "Range" in headers else None
                    if start is not None:
                        yield self._file(file_id, url, response, chunk_bytes, offset=start)
                        return
                    if response.status_code == 200:
                        yield self._file(file_id, url, response, chunk_bytes)
                        return
                    if "Range" not in headers or response.status_code not in (206, 416):
                        raise _http_error(response.status_code)
                # A range it could not serve as asked: the whole file.
                del headers["Range"], headers["If-Range"]
                with self._get(http, url, headers) as response:
                    if response.status_code != 200:
                        raise _http_error(response.status_code)
                    yield self._file(file_id, url, response, chunk_bytes)
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc

    @contextmanager
    def _get(self, http: httpx.Client, url: httpx.URL, headers: dict[str, str]) -> Iterator[httpx.Response]:
        """The answer to a GET of `url` (streamed), after the redirects it may follow."""
        response = self._send(http, url, headers)
        redirects = 0
        while response.has_redirect_location:
            response.close()
            if redirects == self.max_redirects:
                raise _redirect_refused(f"more than {self.max_redirects} times")
            redirects += 1
            url = self._redirect_target(url, response.headers["location"])
            response = self._send(http, url, headers)
        try:
            yield response
        finally:
            response.close()

    def _redirect_target(self, url: httpx.URL, location: str) -> httpx.URL:
        try:
            target = url.join(location)
        except httpx.InvalidURL as exc:
            raise _redirect_refused("to an invalid URL") from exc
        if target.scheme not in _DEFAULT_PORTS:
            raise _redirect_refused(f"to a {target.scheme}: URL")
        if not target.host:
            raise _redirect_refused("to an invalid URL")
        scheme, host, port = _endpoint(target)
        allowed = (host, port) in self.allowed_hosts or (
            (host, None) in self.allowed_hosts and port == _DEFAULT_PORTS[scheme]
        )
        if (scheme, host, port) != self.origin and not allowed:
            raise _redirect_refused(f"to {target.host}, which is not an allowed host")
        return target

    def _send(self, http: httpx.Client, url: httpx.URL, headers: dict[str, str]) -> httpx.Response:
        if _endpoint(url) == self.origin:
            return http.send(http.build_request("GET", url, headers=headers), stream=True)
        # An allowed host: sent to an address checked just now, under its own name (the
        # Host header, and TLS's server name and certificate check).
        pinned_headers = headers | {"Host": url.netloc.decode("ascii")}
        failure: httpx.ConnectError | None = None
        for address in _public_addresses(url):
            request = http.build_request(
                "GET",
                url.copy_with(host=address),
                headers=pinned_headers,
                extensions={"sni_hostname": url.raw_host.decode("ascii")},
            )
            try:
                return http.send(request, stream=True)
            except httpx.ConnectError as exc:  # the next address, as a lookup-and-connect would
                failure = exc
        assert failure is not None  # getaddrinfo answers at least one address or raises
        raise failure

    def _file(
        self, file_id: int, url: httpx.URL, response: httpx.Response, chunk_bytes: int, *, offset: int = 0
    ) -> OriginFile:
        content_type = media_type_or_default(response.headers.get("content-type", ""))
        length = response.headers.get("content-length", "")
        size = rest = int(length) if length.isdigit() else None
        if offset:
            size = _content_range_total(response)
            rest = size - offset  # what the range holds, whatever Content-Length says
        _check_size(size)
        name = None
        if disposition := response.headers.get("content-disposition"):
            name = _name_from_disposition(disposition)
        if not name:
            last_segment = url.path.rsplit("/", 1)[-1]
            name = last_segment if "." in last_segment else None
        fallback = _default_name(file_id, content_type)
        return OriginFile(
            name=safe_file_name(name or fallback, fallback=fallback),
            content_type=content_type,
            size=size,
            chunks=self._chunks(response, rest, chunk_bytes, offset=offset),
            offset=offset,
            validator=_validator(response),
        )

    @staticmethod
    def _chunks(
        response: httpx.Response, expected: int | None, chunk_bytes: int, *, offset: int
    ) -> Iterator[bytes]:
        received = 0
        try:
            for chunk in response.iter_raw(chunk_bytes):
                received += len(chunk)
                read_size_check(offset + received)
                if expected is not None and received > expected:
                    raise JobError(
                        ErrorCode.NETWORK_ERROR, f"Origin sent more than the {expected} bytes it announced"
                    )
                yield chunk
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        if expected is not None and received != expected:
            raise JobError(ErrorCode.NETWORK_ERROR, f"Origin sent {received} of {expected} bytes")


_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


def _range_start(response: httpx.Response, offset: int) -> int | None:
    """`offset` if the response is the rest of the file from there, else None."""
    if response.status_code != 206:
        return None
    match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
    if not match or int(match[1]) != offset or int(match[2]) + 1 != int(match[3]):
        return None
    return offset


def _content_range_total(response: httpx.Response) -> int:
    match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
    assert match is not None  # checked by _range_start
    return int(match[3])


# Printable ASCII that fits its column: sent back as If-Range, kept as `origin_validator`.
_VALIDATOR = re.compile(rf"[ -~]{{1,{HEADER_VALUE_MAX_CHARS}}}")


def _validator(response: httpx.Response) -> str:
    """A strong ETag, else Last-Modified: what If-Range accepts. A weak ETag cannot be
    used for a range (RFC 9110 13.1.5), so such a file is fetched whole again; nor can a
    value too long for its column or not ASCII."""
    etag = response.headers.get("etag", "")
    if _VALIDATOR.fullmatch(etag) and not etag.startswith("W/"):
        return etag
    last_modified = response.headers.get("last-modified", "")
    return last_modified if _VALIDATOR.fullmatch(last_modified) else ""


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
    def open(
        self, file_id: int, *, chunk_bytes: int, offset: int = 0, validator: str = ""
    ) -> Iterator[OriginFile]:
        path = self._find(file_id)
        try:
            handle = path.open("rb")
        except PermissionError as exc:
            raise JobError(ErrorCode.PERMISSION_DENIED, "File is not readable") from exc
        with handle:
            stat = os.fstat(handle.fileno())
            size = stat.st_size
            _check_size(size)
            current = f"{stat.st_mtime_ns}-{size}"
            start = offset if offset and validator == current and offset <= size else 0
            handle.seek(start)
            content_type = mimetypes.guess_type(path.name)[0] or DEFAULT_CONTENT_TYPE
            yield OriginFile(
                name=safe_file_name(path.name, fallback=_default_name(file_id, content_type)),
                content_type=content_type,
                size=size,
                chunks=iter(lambda: handle.read(chunk_bytes), b""),
                offset=start,
                validator=current,
            )


# --- synthetic ----------------------------------------------------------------------------

SYNTHETIC_SEGMENT_BYTES = 1024 * 1024


def synthetic_chunks(file_id: int, size: int, chunk_bytes: int, *, start: int = 0) -> Iterator[bytes]:
    """The bytes of synthetic file `file_id` from `start`: the same for the same id and
    size, anywhere. Each MiB is one random block (seeded by the id) that starts with its
    own index, so the file is not one block repeated."""
    block = random.Random(file_id).randbytes(SYNTHETIC_SEGMENT_BYTES)  # noqa: S311 (test data)
    offset = start
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
    def open(
        self, file_id: int, *, chunk_bytes: int, offset: int = 0, validator: str = ""
    ) -> Iterator[OriginFile]:
        _check_size(self.size_bytes)
        current = f"synthetic-{self.size_bytes}"
        start = offset if validator == current and offset <= self.size_bytes else 0
        yield OriginFile(
            name=f"synthetic_{file_id}.bin",
            content_type=DEFAULT_CONTENT_TYPE,
            size=self.size_bytes,
            chunks=self._throttled(synthetic_chunks(file_id, self.size_bytes, chunk_bytes, start=start)),
            offset=start,
            validator=current,
        )


def get_origin() -> Origin:
    kind = settings.ORIGIN
    if kind == "http":
        return HttpOrigin(
            url_template=settings.ORIGIN_URL_TEMPLATE,
            connect_timeout_s=settings.ORIGIN_CONNECT_TIMEOUT_S,
            read_timeout_s=settings.ORIGIN_READ_TIMEOUT_S,
            allowed_hosts=settings.ORIGIN_ALLOWED_HOSTS,
            max_redirects=settings.ORIGIN_MAX_REDIRECTS,
        )
    if kind == "directory":
        return DirectoryOrigin(root=settings.ORIGIN_DIRECTORY)
    if kind == "synthetic":
        return SyntheticOrigin(size_bytes=settings.SYNTHETIC_FILE_BYTES, rate_bps=settings.SYNTHETIC_RATE_BPS)
    raise ValueError(f"Unknown ORIGIN {kind!r}: use http, directory or synthetic")
