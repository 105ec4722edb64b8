"""A real HTTP origin for the tests: serves deterministic files slowly, and fails on cue.

Each file id has a script: its size, its serving rate, and a list of faults that the next
requests meet one by one (`500`, `404`, `drop` = connection closed mid-body, `stall` =
body stops for longer than the client's read timeout, `silent` = headers, then nothing
for `silent_s`, `trickle` = the body one byte every `trickle_s`). Requests, bytes sent and
bodies sent at once are counted so tests can assert on origin traffic. Files carry an ETag
and answer `Range` requests (206 with Content-Range; the whole file if `If-Range` names
another version), unless a script says the origin does not support ranges.

`ReplyServer` is the other kind: it answers each path with a fixed reply (any status,
headers and body, true or not) and records the requests it got, to stand for an origin
that misbehaves or for a service the worker must never reach.
"""

import contextlib
import hashlib
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

from jobs.transfer.origins import synthetic_chunks

CHUNK = 64 * 1024


@dataclass
class FileScript:
    size: int
    rate_bps: int = 0  # 0 = as fast as possible
    # > 0: from this byte of the file on, the body goes at `tail_rate_bps` instead (0 = as
    # fast as possible): a file whose first part comes quickly and the rest slowly.
    tail_from: int = 0
    tail_rate_bps: int = 0
    faults: list[str] = field(default_factory=list)
    content_type: str = "application/pdf"
    file_name: str | None = None
    ranges: bool = True  # answers `Range` (with `If-Range`) as a file server does
    version: int = 1  # a new version has a new ETag; its bytes are the same here
    validators: bool = True  # sends an ETag

    def etag(self, file_id: int) -> str:
        return f'"{file_id}-{self.size}-{self.version}"'

    def sha256(self, file_id: int) -> str:
        digest = hashlib.sha256()
        for chunk in synthetic_chunks(file_id, self.size, CHUNK):
            digest.update(chunk)
        return digest.hexdigest()

    def content(self, file_id: int) -> bytes:
        return b"".join(synthetic_chunks(file_id, self.size, CHUNK))


class _LoopbackServer(ThreadingHTTPServer):
    """An HTTP server on a free loopback port, served by a daemon thread once started."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class OriginServer(_LoopbackServer):
    stall_s = 5.0
    silent_s = 30.0
    trickle_s = 0.5

    def __init__(self) -> None:
        super().__init__(_Handler)
        self.files: dict[int, FileScript] = {}
        self.requests: Counter[int] = Counter()
        self.bytes_sent: Counter[int] = Counter()
        # Per file, each body served: [the offset it started at, the bytes sent].
        self.bodies: dict[int, list[list[int]]] = {}
        # Bodies being sent right now, and the most at any one moment since the last reset.
        self.serving = 0
        self.serving_peak = 0

    @property
    def url_template(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/files/{{file_id}}"

    def add(self, file_id: int, script: FileScript) -> FileScript:
        with self.lock:
            self.files[file_id] = script
        return script

    def next_fault(self, file_id: int) -> str | None:
        with self.lock:
            self.requests[file_id] += 1
            script = self.files.get(file_id)
            if script is None or not script.faults:
                return None
            return script.faults.pop(0)

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hangs up (a cancelled or timed-out download) is expected here."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]

    def reset(self) -> None:
        with self.lock:
            self.files.clear()
            self.requests.clear()
            self.bytes_sent.clear()
            self.bodies.clear()
            self.serving_peak = self.serving


class _Handler(BaseHTTPRequestHandler):
    server: OriginServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        try:
            file_id = int(self.path.rstrip("/").rsplit("/", 1)[-1])
        except ValueError:
            self._status(400)
            return
        fault = self.server.next_fault(file_id)
        script = self.server.files.get(file_id)
        if script is None or fault == "404":
            self._status(404)
            return
        if fault is not None and fault.isdigit():
            self._status(int(fault))
            return
        start = self._range_start(file_id, script)
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", script.content_type)
        self.send_header("Content-Length", str(script.size - start))
        if script.validators:
            self.send_header("ETag", script.etag(file_id))
        if script.ranges:
            self.send_header("Accept-Ranges", "bytes")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{script.size - 1}/{script.size}")
        if script.file_name:
            self.send_header("Content-Disposition", f'attachment; filename="{script.file_name}"')
        self.end_headers()
        with self.server.lock:
            self.server.serving += 1
            self.server.serving_peak = max(self.server.serving_peak, self.server.serving)
        try:
            self._body(file_id, script, fault, start)
        finally:
            with self.server.lock:
                self.server.serving -= 1

    def _range_start(self, file_id: int, script: FileScript) -> int:
        """Where the body starts: a `bytes=N-` range of the current version, else 0."""
        wanted = self.headers.get("Range", "")
        if not script.ranges or not wanted.startswith("bytes=") or not wanted.endswith("-"):
            return 0
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range != script.etag(file_id):
            return 0
        start = wanted.removeprefix("bytes=").removesuffix("-")
        return int(start) if start.isdigit() and int(start) < script.size else 0

    def _body(self, file_id: int, script: FileScript, fault: str | None, start: int) -> None:
        if fault == "silent":
            self.wfile.flush()
            time.sleep(self.server.silent_s)
            self.close_connection = True
            return
        if fault == "trickle":
            self._trickle(file_id, script, start)
            return
        due = time.monotonic()  # when the bytes sent so far are due at the script's rates
        sent = 0
        body = [start, 0]
        with self.server.lock:
            self.server.bodies.setdefault(file_id, []).append(body)
        for chunk in synthetic_chunks(file_id, script.size, CHUNK, start=start):
            if fault in ("drop", "stall") and start + sent >= script.size // 2:
                if fault == "stall":
                    time.sleep(self.server.stall_s)
                self.close_connection = True
                return
            try:
                self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                return
            sent += len(chunk)
            with self.server.lock:
                self.server.bytes_sent[file_id] += len(chunk)
                body[1] += len(chunk)
            # Read at each chunk: a test may change the rates while the body is sent.
            in_tail = script.tail_from and start + sent > script.tail_from
            rate_bps = script.tail_rate_bps if in_tail else script.rate_bps
            if rate_bps:
                due += len(chunk) / rate_bps
                time.sleep(max(0.0, due - time.monotonic()))
            else:
                due = time.monotonic()

    def _trickle(self, file_id: int, script: FileScript, start: int) -> None:
        """The body, a byte at a time, each `trickle_s` after the last: never silent for as
        long as a read timeout, never done within a time limit."""
        for chunk in synthetic_chunks(file_id, script.size, CHUNK, start=start):
            for index in range(len(chunk)):
                try:
                    self.wfile.write(chunk[index : index + 1])
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return
                with self.server.lock:
                    self.server.bytes_sent[file_id] += 1
                time.sleep(self.server.trickle_s)

    def _status(self, code: int) -> None:
        body = f"status {code}\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


# --- a server that answers with any status, headers and body --------------------------------


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    content_length: bool = True  # False: no Content-Length, the body ends with the connection
    # > 0: the body is written in pieces of this many bytes, each flushed, `piece_pause_s`
    # apart, so that the client reads it in as many small network reads.
    piece_bytes: int = 0
    piece_pause_s: float = 0.0


class _ReplyHandler(BaseHTTPRequestHandler):
    server: "ReplyServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.received.append((self.path, dict(self.headers.items())))
        reply = self.server.replies.get(self.path, Reply(status=404))
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.content_length:
            self.send_header("Content-Length", str(len(reply.body)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        # A client that stops reading (a refused body) hangs up.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            step = reply.piece_bytes or max(1, len(reply.body))
            for start in range(0, len(reply.body), step):
                self.wfile.write(reply.body[start : start + step])
                self.wfile.flush()
                if reply.piece_pause_s:
                    time.sleep(reply.piece_pause_s)


class ReplyServer(_LoopbackServer):
    def __init__(self) -> None:
        super().__init__(_ReplyHandler)
        self.replies: dict[str, Reply] = {}
        # Each request answered: its path and headers.
        self.received: list[tuple[str, dict[str, str]]] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def reset(self) -> None:
        with self.lock:
            self.replies.clear()
            self.received.clear()
