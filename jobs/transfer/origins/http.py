"""The http origin: `ORIGIN_URL_TEMPLATE`, redirects followed by hand to allowed hosts only
(each hop resolved once and connected to by its checked address), resume by `Range` +
`If-Range`."""

import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from email.message import Message
from email.utils import collapse_rfc2231_value

import httpx

from infra import addresses
from jobs.errors import ErrorCode, JobError
from jobs.transfer.deadline import Deadline
from jobs.transfer.origins.base import (
    HEADER_VALUE_MAX_CHARS,
    OriginFile,
    check_size,
    default_name,
    media_type_or_default,
    read_size_check,
    safe_file_name,
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


def name_from_disposition(header: str) -> str | None:
    msg = Message()
    msg["content-disposition"] = header
    # RFC 6266 4.3: when both are sent, `filename*` (RFC 5987, any charset) wins over the
    # plain `filename` fallback, wherever it stands; get_filename() takes the first.
    for name, value in msg.get_params(header="content-disposition") or []:
        if name.lower() == "filename" and isinstance(value, tuple):
            return collapse_rfc2231_value(value)
    return msg.get_filename()


def _redirect_refused(reason: str) -> JobError:
    return JobError(ErrorCode.ORIGIN_REDIRECT_REFUSED, f"Origin redirected {reason}")


def _public_addresses(url: httpx.URL) -> list[str]:
    """The addresses of `url`'s host, resolved once; refused unless every one is public."""
    try:
        return addresses.public_addresses(url)
    except addresses.AddressUnresolved as exc:
        raise JobError(
            ErrorCode.NETWORK_ERROR, f"Origin redirected to {url.host}, which could not be resolved"
        ) from exc
    except addresses.AddressNotPublic as exc:
        raise _redirect_refused(f"to {url.host}, which resolves to an address that is not public") from exc


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
        if origin.scheme not in addresses.DEFAULT_PORTS or not origin.host:
            raise ValueError("ORIGIN_URL_TEMPLATE must be an http or https URL")
        if max_redirects < 0:
            raise ValueError("ORIGIN_MAX_REDIRECTS must be 0 or more")
        self.url_template = url_template
        self.origin = addresses.endpoint(origin)
        self.allowed_hosts = frozenset(
            addresses.allowed_host(entry, setting="ORIGIN_ALLOWED_HOSTS")
            for entry in allowed_hosts
            if entry.strip()
        )
        self.max_redirects = max_redirects
        self.timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()

    def _http(self) -> httpx.Client:
        """The origin's one client, shared by every job of the process (an httpx.Client may
        be shared between threads). Its pool keeps a few idle connections and opens as many
        as the jobs ask for: a job must never wait for another's connection. One client
        rather than one per job: making one costs a TLS context (several ms of CPU)."""
        with self._client_lock:
            if self._client is None:
                limits = httpx.Limits(max_connections=None, max_keepalive_connections=20)
                self._client = httpx.Client(timeout=self.timeout, limits=limits)
            return self._client

    @contextmanager
    def open(
        self,
        file_id: int,
        *,
        chunk_bytes: int,
        offset: int = 0,
        validator: str = "",
        deadline: Deadline | None = None,
    ) -> Iterator[OriginFile]:
        url = httpx.URL(self.url_template.format(file_id=file_id))
        headers = {"Accept-Encoding": "identity"}
        if offset and validator:
            # If-Range: the rest of the file if it is still this version, else all of it.
            headers |= {"Range": f"bytes={offset}-", "If-Range": validator}
        http = self._http()
        try:
            with self._get(http, url, headers) as response:
                start = _range_start(response, offset) if "Range" in headers else None
                if start is not None:
                    yield self._file(file_id, url, response, chunk_bytes, offset=start, deadline=deadline)
                    return
                if response.status_code == 200:
                    yield self._file(file_id, url, response, chunk_bytes, deadline=deadline)
                    return
                if "Range" not in headers or response.status_code not in (206, 416):
                    raise _http_error(response.status_code)
            # A range it could not serve as asked: the whole file.
            del headers["Range"], headers["If-Range"]
            with self._get(http, url, headers) as response:
                if response.status_code != 200:
                    raise _http_error(response.status_code)
                yield self._file(file_id, url, response, chunk_bytes, deadline=deadline)
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
        if target.scheme not in addresses.DEFAULT_PORTS:
            raise _redirect_refused(f"to a {target.scheme}: URL")
        if not target.host:
            raise _redirect_refused("to an invalid URL")
        allowed = addresses.host_allowed(target, self.allowed_hosts)
        if addresses.endpoint(target) != self.origin and not allowed:
            raise _redirect_refused(f"to {target.host}, which is not an allowed host")
        return target

    def _send(self, http: httpx.Client, url: httpx.URL, headers: dict[str, str]) -> httpx.Response:
        if addresses.endpoint(url) == self.origin:
            return http.send(http.build_request("GET", url, headers=headers), stream=True)
        # An allowed host: sent to an address checked just now, under its own name (the
        # Host header, and TLS's server name and certificate check).
        failure: httpx.ConnectError | None = None
        for address in _public_addresses(url):
            request = addresses.pinned_request(http, "GET", url, address, headers=headers)
            try:
                return http.send(request, stream=True)
            except httpx.ConnectError as exc:  # the next address, as a lookup-and-connect would
                failure = exc
        assert failure is not None  # getaddrinfo answers at least one address or raises
        raise failure

    def _file(
        self,
        file_id: int,
        url: httpx.URL,
        response: httpx.Response,
        chunk_bytes: int,
        *,
        offset: int = 0,
        deadline: Deadline | None = None,
    ) -> OriginFile:
        content_type = media_type_or_default(response.headers.get("content-type", ""))
        length = response.headers.get("content-length", "")
        size = rest = int(length) if length.isdigit() else None
        if offset:
            size = _content_range_total(response)
            rest = size - offset  # what the range holds, whatever Content-Length says
        check_size(size)
        name = None
        if disposition := response.headers.get("content-disposition"):
            name = name_from_disposition(disposition)
        if not name:
            last_segment = url.path.rsplit("/", 1)[-1]
            name = last_segment if "." in last_segment else None
        fallback = default_name(file_id, content_type)
        return OriginFile(
            name=safe_file_name(name or fallback, fallback=fallback),
            content_type=content_type,
            size=size,
            chunks=self._chunks(response, rest, chunk_bytes, offset=offset, deadline=deadline),
            offset=offset,
            validator=_validator(response),
        )

    @staticmethod
    def _chunks(
        response: httpx.Response,
        expected: int | None,
        chunk_bytes: int,
        *,
        offset: int,
        deadline: Deadline | None = None,
    ) -> Iterator[bytes]:
        """The body in chunks of `chunk_bytes` (the last may be shorter), made of the
        network's reads as they come: between two reads the attempt's deadline is checked,
        so an origin that trickles a byte at a time, never slow enough for the read
        timeout, still ends at the deadline (DOWNLOAD_TIMEOUT, the origin's fault)."""
        received = 0
        pieces: list[bytes] = []
        buffered = 0

        def checked(chunk: bytes) -> bytes:
            # Whatever was announced, no byte past JOB_MAX_FILE_BYTES nor past the
            # announced size is handed on.
            nonlocal received
            received += len(chunk)
            read_size_check(offset + received)
            if expected is not None and received > expected:
                raise JobError(
                    ErrorCode.NETWORK_ERROR, f"Origin sent more than the {expected} bytes it announced"
                )
            return chunk

        try:
            for data in response.iter_raw():
                if deadline is not None:
                    deadline.check(origin_fault=True)
                pieces.append(data)
                buffered += len(data)
                del data
                while buffered >= chunk_bytes:
                    # Nothing of the chunk stays referenced here while the caller uses it.
                    yield checked(_chunk_take(pieces, chunk_bytes))
                    buffered = sum(len(piece) for piece in pieces)
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        if pieces:
            yield checked(b"".join(pieces))
        if expected is not None and received != expected:
            raise JobError(ErrorCode.NETWORK_ERROR, f"Origin sent {received} of {expected} bytes")


def _chunk_take(pieces: list[bytes], chunk_bytes: int) -> bytes:
    """The first `chunk_bytes` of `pieces` as one chunk; what is left over stays in
    `pieces`."""
    joined = pieces[0] if len(pieces) == 1 else b"".join(pieces)
    pieces.clear()
    if len(joined) > chunk_bytes:
        pieces.append(joined[chunk_bytes:])
        return joined[:chunk_bytes]
    return joined


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
