"""A request's whole body, read on the event loop before the request takes a thread.

HTTP views run in the WSGI thread pool (asgi.py), and a2wsgi hands them the body as a file
that reads from the connection: a view, or Django's CSRF middleware reading `request.POST`,
would block its thread for as long as the client takes to send the body. Twenty clients
sending a byte every few seconds would hold the whole pool. So this middleware, in front
of the pool, reads the body first, on the loop, where a slow client costs a coroutine:

- at most `REQUEST_BODY_MAX_BYTES`: a `Content-Length` above it is refused at once, a
  chunked body as soon as it grows past it (413 `PAYLOAD_TOO_LARGE`);
- within `REQUEST_BODY_TIMEOUT_S` of the request's head (408 `REQUEST_TIMEOUT`).

Both answers are the API's error envelope and close the connection: the rest of the body
is never read. The request then reaches the app with its body as one message, and any
later `receive()` (a client that leaves) goes to the server as before. WebSockets pass
untouched.
"""

import asyncio
import json
from typing import Any

from django.conf import settings

from jobs.api.errors import error_body

Scope = dict[str, Any]
Message = dict[str, Any]


def error_answer(status: int, code: str, message: str) -> tuple[Message, Message]:
    """The start and body messages of an error in the API's envelope, closing the
    connection (a client in the middle of its body may not send a next request)."""
    body = json.dumps(error_body(code, message)).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            (b"connection", b"close"),
        ],
    }
    return start, {"type": "http.response.body", "body": body, "more_body": False}


TOO_LARGE = error_answer(413, "PAYLOAD_TOO_LARGE", "The request body is too large")
TIMED_OUT = error_answer(408, "REQUEST_TIMEOUT", "The request body did not arrive in time")


class _TooLarge(Exception):
    pass


class RequestBodyRead:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = settings.REQUEST_BODY_MAX_BYTES
        if _declared_length(scope) > max_bytes:
            await _answer(send, TOO_LARGE)
            return
        try:
            async with asyncio.timeout(settings.REQUEST_BODY_TIMEOUT_S):
                first = await _body_read(receive, max_bytes)
        except TimeoutError:
            await _answer(send, TIMED_OUT)
            return
        except _TooLarge:
            await _answer(send, TOO_LARGE)
            return
        if first["type"] == "http.disconnect":
            return  # the client left before its body was in: nobody to answer
        await self.app(scope, _Replay(first, receive), send)


def _declared_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0  # the server's parser refuses a malformed length before here
    return 0


async def _body_read(receive: Any, max_bytes: int) -> Message:
    """The body as one `http.request` message, or the `http.disconnect` that came first."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return message
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}


async def _answer(send: Any, messages: tuple[Message, Message]) -> None:
    for message in messages:
        await send(message)


class _Replay:
    """The body read, then what the server says next (`http.disconnect` when the client
    leaves)."""

    def __init__(self, first: Message, receive: Any) -> None:
        self._first: Message | None = first
        self._receive = receive

    async def __call__(self) -> Message:
        first, self._first = self._first, None
        if first is not None:
            return first
        later: Message = await self._receive()
        return later
