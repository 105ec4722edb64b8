"""uvicorn's httptools protocol with bounds on a request's head: its size and its time.

httptools (llhttp) sets no limit on a request line or a header, and joins a header's
pieces by concatenation as they arrive: one endless header grew a web process by hundreds
of MiB and held its event loop for seconds, 50,000 headers were accepted, and connections
that send a byte now and then (slowloris) were held for as long as their clients liked.
uvicorn takes a protocol class by import string (`--http`, processes.WEB_FLAGS), so the
web processes run this one, which keeps httptools' parser (and its speed) and adds:

- REQUEST_HEAD_MAX_BYTES for the request line and headers: past it, 431 and closed;
- REQUEST_URL_MAX_BYTES for the request target: past it, 414 and closed;
- REQUEST_HEAD_TIMEOUT_S from a new connection, or from the first byte of a later
  request on a kept-alive one, until that request's headers are in: past it, 408 and
  closed if some of the request came, closed quietly if none did. The quiet time between
  two requests of one connection is uvicorn's own keep-alive timeout
  (`--timeout-keep-alive`), which a load balancer that keeps connections to its targets
  (the ALB: longer than its idle timeout) needs to set;
- SEND_IDLE_TIMEOUT_S for a client that takes nothing of an answer: once the output
  waiting for it passes the transport's high-water mark, it must fall below the low one
  within that time, or the connection is aborted. (Closing alone would not do: asyncio
  keeps a closed connection open until its output is sent.)

The size is checked after each read of the socket, so the parser holds at most the limit
plus one read (uvicorn reads up to 256 KiB at a time) before the connection is dropped.
The request body is bounded in time and size by edge/request_body.py.
"""

import asyncio
import json
import logging
from typing import Any

from django.conf import settings
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

logger = logging.getLogger("uvicorn.error")


def _refusal(status: int, code: str, message: str) -> bytes:
    """A whole HTTP answer in the API's error envelope that closes the connection. Written
    here rather than imported from jobs.api.errors: uvicorn imports this module before the
    ASGI application, so before Django is set up."""
    body = json.dumps({"success": False, "error": {"code": code, "message": message}}).encode()
    return b"".join(
        [
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"cache-control: no-store\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
    )


HEAD_TOO_LARGE = _refusal(431, "REQUEST_HEADER_FIELDS_TOO_LARGE", "The request's headers are too large")
URL_TOO_LONG = _refusal(414, "URI_TOO_LONG", "The request's URL is too long")
HEAD_TIMED_OUT = _refusal(408, "REQUEST_TIMEOUT", "The request's headers did not arrive in time")


# The settings' defaults (downloads_project/settings/web.py), for an application served with
# this protocol under settings of its own (bench/status_baselines.py).
HEAD_MAX_BYTES = 64 * 1024
URL_MAX_BYTES = 8 * 1024
HEAD_TIMEOUT_S = 10.0
SEND_IDLE_TIMEOUT_S = 30.0


class _Refused(Exception):
    """Raised from a parser callback to stop the parser; the answer is in `refusal`."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_max_bytes: int = getattr(settings, "REQUEST_HEAD_MAX_BYTES", HEAD_MAX_BYTES)
        self.url_max_bytes: int = getattr(settings, "REQUEST_URL_MAX_BYTES", URL_MAX_BYTES)
        self.head_timeout_s: float = getattr(settings, "REQUEST_HEAD_TIMEOUT_S", HEAD_TIMEOUT_S)
        # Bytes read since the previous request was read whole (or the connection opened),
        # while the next request's head is not complete; None while it is.
        self.head_bytes: int | None = 0
        # The head of the request being parsed, as the parser hands it over.
        self.url_bytes = 0
        self.header_bytes = 0
        self.head_timer: asyncio.TimerHandle | None = None
        self.refusal: bytes | None = None
        self.send_idle_timeout_s: float = getattr(settings, "SEND_IDLE_TIMEOUT_S", SEND_IDLE_TIMEOUT_S)
        self.write_timer: asyncio.TimerHandle | None = None

    def _head_timer_start(self) -> None:
        self._head_timer_cancel()
        self.head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _head_timer_cancel(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _refuse(self, answer: bytes) -> None:
        self._head_timer_cancel()
        self.head_bytes = None
        if self.transport.is_closing():
            return
        # A request still being answered keeps the connection's output: the connection is
        # closed without a word of ours in it.
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(answer)
        self.transport.close()

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.head_bytes:
            logger.info("Request head not complete after %s s: 408, connection closed", self.head_timeout_s)
            self._refuse(HEAD_TIMED_OUT)
        elif not self.transport.is_closing():
            self.transport.close()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer_start()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_timer_cancel()
        self._write_timer_cancel()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._write_timer_cancel()
        self.write_timer = self.loop.call_later(self.send_idle_timeout_s, self._write_stalled)

    def resume_writing(self) -> None:
        self._write_timer_cancel()
        super().resume_writing()

    def _write_timer_cancel(self) -> None:
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None

    def _write_stalled(self) -> None:
        self.write_timer = None
        logger.info("Client took nothing for %s s: connection aborted", self.send_idle_timeout_s)
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.head_bytes is not None:
            if self.head_bytes == 0 and self.head_timer is None and data:
                self._head_timer_start()  # the first byte of a kept-alive connection's next request
            self.head_bytes += len(data)
        super().data_received(data)
        # A head still not complete after this read (one endless header, or thousands).
        if self.head_bytes is not None and self.head_bytes > self.head_max_bytes:
            self._refuse(HEAD_TOO_LARGE)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error, which a refusal of ours raised."""
        if self.refusal is None:
            super().send_400_response(msg)
        else:
            self._refuse(self.refusal)

    # httptools' callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.url_bytes = self.header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.url_bytes += len(url)
        if self.url_bytes > self.url_max_bytes:
            self.refusal = URL_TOO_LONG
            raise _Refused
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.url_bytes + self.header_bytes > self.head_max_bytes:
            self.refusal = HEAD_TOO_LARGE
            raise _Refused
        self._head_timer_cancel()
        self.head_bytes = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.head_bytes = 0  # what follows is the next request's head

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Part of the next request's head is in already (pipelined): its time runs. Else
        # the connection is idle, for uvicorn's keep-alive timeout, until its next byte.
        if self.head_bytes and not self.transport.is_closing():
            self._head_timer_start()
