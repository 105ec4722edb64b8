"""The one way a webhook leaves the service: a POST to the endpoint's URL, checked first.

The URL must be https (or http with WEBHOOK_ALLOW_HTTP), and its host must resolve only
to public addresses, checked at creation and again at every attempt; the request goes to
an address checked just now (infra/addresses.py), so a name that changes its answer in
between reaches nothing internal. WEBHOOK_ALLOWED_HOSTS lets an operator name internal
receivers, which skip the address check. Redirects are not followed: a 3xx is the
receiver's answer. At most RESPONSE_KEEP_BYTES of the answer are read.
"""

import threading
import time
from dataclasses import dataclass

import httpx
from django.conf import settings

from infra import addresses

RESPONSE_KEEP_BYTES = 4096


class UrlRefused(Exception):
    """The URL may not be called (its scheme, or where its host resolves). `retryable`: a
    host that did not resolve may resolve later."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class Answer:
    """How an attempt ended: the receiver's status and the start of its body, or the
    transport error (status None)."""

    status_code: int | None
    body: str
    error: str
    seconds: float


def _allowed_hosts() -> frozenset[tuple[str, int | None]]:
    """WEBHOOK_ALLOWED_HOSTS, parsed (a few entries: read at each check)."""
    return frozenset(
        addresses.allowed_host(entry, setting="WEBHOOK_ALLOWED_HOSTS")
        for entry in settings.WEBHOOK_ALLOWED_HOSTS
        if entry.strip()
    )


def url_check(url: str) -> list[str] | None:
    """The addresses to connect to for `url` (None: an allowed host, connected as named).
    Raises UrlRefused with the reason."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UrlRefused("The URL is not valid") from exc
    schemes = ("https", "http") if settings.WEBHOOK_ALLOW_HTTP else ("https",)
    if parsed.scheme not in schemes:
        raise UrlRefused(f"The URL must be {' or '.join(schemes)}")
    if not parsed.host or parsed.userinfo:
        raise UrlRefused("The URL must name a host, without credentials")
    if addresses.host_allowed(parsed, _allowed_hosts()):
        return None
    try:
        return addresses.public_addresses(parsed)
    except addresses.AddressUnresolved as exc:
        raise UrlRefused(f"{parsed.host} could not be resolved", retryable=True) from exc
    except addresses.AddressNotPublic as exc:
        raise UrlRefused(f"{parsed.host} resolves to an address that is not public") from exc


_client_lock = threading.Lock()
_client: httpx.Client | None = None


def _http() -> httpx.Client:
    """One client per process, shared by its threads (as the origin's is)."""
    global _client
    with _client_lock:
        if _client is None:
            _client = httpx.Client(
                follow_redirects=False,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=20),
                headers={"User-Agent": "download-service-webhooks/1"},
            )
        return _client


def webhook_post(*, url: str, headers: dict[str, str], body: str) -> Answer:
    """POSTs `body` to `url`. Raises UrlRefused before any connection if the URL fails
    the check; a transport error (timeout, refused connection) is an Answer without a
    status."""
    pinned = url_check(url)
    http = _http()
    target = httpx.URL(url)
    headers = {**headers, "Content-Type": "application/json"}
    timeout = httpx.Timeout(settings.WEBHOOK_TIMEOUT_S)
    started = time.perf_counter()
    try:
        if pinned is None:
            requests = [
                http.build_request("POST", target, headers=headers, content=body.encode(), timeout=timeout)
            ]
        else:
            requests = [
                addresses.pinned_request(
                    http, "POST", target, address, headers=headers, content=body.encode(), timeout=timeout
                )
                for address in pinned
            ]
        return _send_first(http, requests, started)
    except httpx.HTTPError as exc:
        kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection error"
        return Answer(None, "", f"{kind}: {type(exc).__name__}", time.perf_counter() - started)


def _send_first(http: httpx.Client, requests: list[httpx.Request], started: float) -> Answer:
    """The answer to the first request that connects (the next address after a refused
    connection, as a lookup-and-connect would)."""
    failure: httpx.ConnectError | None = None
    for request in requests:
        try:
            response = http.send(request, stream=True)
        except httpx.ConnectError as exc:
            failure = exc
            continue
        try:
            kept = b""
            for chunk in response.iter_raw():
                kept += chunk
                if len(kept) >= RESPONSE_KEEP_BYTES:
                    break
        finally:
            response.close()
        text = kept[:RESPONSE_KEEP_BYTES].decode("utf-8", errors="replace")
        return Answer(response.status_code, text, "", time.perf_counter() - started)
    assert failure is not None  # at least one address, or the check raised
    raise failure
