"""A signed link's file, sent from the event loop rather than from a pool thread.

The view of a signed link (jobs/web/signed_links.py) runs in the WSGI thread pool (asgi.py). Had
it streamed the file itself, its thread would be held for as long as the client takes to
read it: twenty clients that stop reading would hold the whole pool, and every request
would wait. So the view answers with the file's headers, no body, and `X-Accel-Redirect`
naming the file (the storage's `internal_url`). Behind nginx (FILES_ACCEL_REDIRECT=true)
nginx sends the bytes. Otherwise this middleware, in front of the pool, takes that answer,
removes the header, and sends the file itself once the view's thread is free again:

- read in CHUNK_BYTES pieces on a small executor of its own (the loop never waits for
  the disk);
- each piece handed to the server within SEND_IDLE_TIMEOUT_S: a client that reads
  nothing for that long loses its connection (the server then logs that the response was
  not completed);
- stopped as soon as the client leaves.

It acts only on the app's answers, never on a request: a header a client sends is not
looked at. A target outside the storage's directory, or a file gone since the view saw
it, answers 404.
"""

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from django.conf import settings

from jobs.transfer.links import SignedFileSystemStorage
from jobs.transfer.storage import downloads_storage

logger = logging.getLogger(__name__)

HEADER = b"x-accel-redirect"
CHUNK_BYTES = 256 * 1024
# Reads of a local disk take microseconds to milliseconds: a few threads serve every send.
_READS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="file-read")
# The app's headers that describe its own (empty) body, not the file's.
_BODY_HEADERS = {HEADER, b"content-length", b"transfer-encoding"}

Scope = dict[str, Any]
Message = dict[str, Any]


class FileSender:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answer = _Intercepted(send)
        await self.app(scope, receive, answer.send)
        if answer.target is None:
            return
        storage = downloads_storage()
        path = storage.internal_path(answer.target) if isinstance(storage, SignedFileSystemStorage) else None
        await _file_send(path, answer.start, scope, receive, send)


class _Intercepted:
    """Passes the app's answer through, unless it names a file: then its start is kept
    and its (empty) body dropped."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self.target: str | None = None
        self.start: Message = {}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            for name, value in message.get("headers", []):
                if name.lower() == HEADER:
                    self.target = value.decode("latin-1")
                    self.start = message
                    return
        if self.target is None:
            await self._send(message)


async def _file_send(path: Path | None, start: Message, scope: Scope, receive: Any, send: Any) -> None:
    loop = asyncio.get_running_loop()
    try:
        file, size = await loop.run_in_executor(_READS, _open, path)
    except OSError:  # gone since the view saw it, or not a file of the storage
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    idle_s = settings.SEND_IDLE_TIMEOUT_S
    gone = asyncio.ensure_future(_disconnect(receive))
    try:
        headers = [
            (name, value) for name, value in start.get("headers", []) if name.lower() not in _BODY_HEADERS
        ]
        async with asyncio.timeout(idle_s):
            await send({**start, "headers": [*headers, (b"content-length", str(size).encode())]})
        left = 0 if scope["method"] == "HEAD" else size
        if left == 0:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        while left > 0 and not gone.done():
            chunk = await loop.run_in_executor(_READS, file.read, min(CHUNK_BYTES, left))
            if not chunk:
                logger.warning("File sender: %s ended %d bytes short of its size", path, left)
                return  # the server closes a response that did not complete
            left -= len(chunk)
            async with asyncio.timeout(idle_s):
                await send({"type": "http.response.body", "body": chunk, "more_body": left > 0})
    except TimeoutError:
        logger.warning("File sender: closing a download that read nothing for %s s", idle_s)
    finally:
        gone.cancel()
        await loop.run_in_executor(_READS, file.close)


def _open(path: Path | None) -> tuple[IO[bytes], int]:
    if path is None:
        raise FileNotFoundError
    file = path.open("rb")
    return file, os.fstat(file.fileno()).st_size


async def _disconnect(receive: Any) -> None:
    """Returns when the client has left (the app has read the whole body already)."""
    while (await receive())["type"] != "http.disconnect":
        pass
