"""Two small real proxies that stand between the client and the stack, to break what a
network breaks:

- `UpgradeRefusingProxy`: a reverse proxy in front of the web server that passes HTTP
  through and answers every WebSocket handshake 403, as a proxy without WebSocket
  support does. The API builds `websocket_url` from the Host it was asked on, so the
  client's socket goes to this proxy too.
- `CuttingProxy`: a forward HTTP proxy (the client's `http_proxy`) for everything the
  client does, the API, its socket (CONNECT) and the file's link (on S3 another host), that
  cuts the connection of the first file download after `cut_after_bytes` of its body, and
  then refuses the next one 403, as S3 refuses an expired link. It records each request.
"""

import contextlib
import socket
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

HEAD_END = b"\r\n\r\n"
BUFFER = 64 * 1024


def _read_head(conn: socket.socket) -> tuple[bytes, bytes]:
    """The request or response head (up to its blank line) and what came after it."""
    data = b""
    while HEAD_END not in data:
        chunk = conn.recv(BUFFER)
        if not chunk:
            raise ConnectionError("closed before the end of the head")
        data += chunk
        if len(data) > BUFFER:
            raise ConnectionError("head too long")
    head, _, rest = data.partition(HEAD_END)
    return head + HEAD_END, rest


def _headers(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(BUFFER):
            sink.sendall(chunk)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def _tunnel(client: socket.socket, upstream: socket.socket) -> None:
    """Both ways until both sides are done."""
    back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
    back.start()
    _pipe(client, upstream)
    back.join()


class _Proxy:
    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.lock = threading.Lock()
        self._open: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                with self.lock:
                    self._open.add(conn)
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                self.handle(conn)
        except OSError:
            pass
        finally:
            with self.lock:
                self._open.discard(conn)

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.listener.close()
        with self.lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


class UpgradeRefusingProxy(_Proxy):
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.refused = 0
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        head, rest = _read_head(conn)
        _, headers = _headers(head)
        if headers.get("upgrade", "").lower() == "websocket":
            with self.lock:
                self.refused += 1
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        with socket.create_connection(("127.0.0.1", self.upstream_port)) as upstream:
            upstream.sendall(head + rest)
            _tunnel(conn, upstream)


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    status: int | None  # the answer's status, None for a tunnel
    action: str  # "passed", "cut", "refused", "tunnel"


class CuttingProxy(_Proxy):
    def __init__(self, *, cut_after_bytes: int, refuse_after_cut: bool = True) -> None:
        self.cut_after_bytes = cut_after_bytes
        self.cuts_left = 1
        self.refusals_left = 1 if refuse_after_cut else 0
        self.seen: list[Seen] = []
        super().__init__()

    def file_requests(self) -> list[Seen]:
        """The requests for the file's bytes: anything but the API."""
        with self.lock:
            return [s for s in self.seen if s.method == "GET" and not s.path.startswith("/v1/")]

    def api_requests(self, prefix: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.path.startswith(prefix)]

    def _record(self, seen: Seen) -> None:
        with self.lock:
            self.seen.append(seen)

    def handle(self, conn: socket.socket) -> None:
        head, rest = _read_head(conn)
        request_line, headers = _headers(head)
        method, target, _version = request_line.split(" ", 2)
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            with socket.create_connection((host, int(port))) as upstream:
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                self._record(Seen(method, target, None, None, "tunnel"))
                upstream.sendall(rest)
                _tunnel(conn, upstream)
            return
        url = urlsplit(target)
        path = url.path + (f"?{url.query}" if url.query else "")
        is_file = method == "GET" and not url.path.startswith("/v1/")
        range_ = headers.get("range")
        with self.lock:
            refuse = is_file and range_ is not None and self.cuts_left == 0 and self.refusals_left > 0
            if refuse:
                self.refusals_left -= 1
        if refuse:
            self._record(Seen(method, url.path, range_, 403, "refused"))
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        body = rest
        length = int(headers.get("content-length", "0") or 0)
        while len(body) < length:
            chunk = conn.recv(BUFFER)
            if not chunk:
                return
            body += chunk
        # As sent by the client, to the origin's form, on a connection of its own.
        lines = head.decode("latin-1").split("\r\n")[1:]
        kept = [line for line in lines if line and not line.lower().startswith(("proxy-", "connection:"))]
        upstream_head = "\r\n".join([f"{method} {path} HTTP/1.1", *kept, "Connection: close", "", ""])
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 80)) as upstream:
            upstream.sendall(upstream_head.encode("latin-1") + body)
            answer_head, answer_rest = _read_head(upstream)
            status_line, _ = _headers(answer_head)
            status = int(status_line.split(" ")[1])
            with self.lock:
                cut = is_file and status == 200 and self.cuts_left > 0
                if cut:
                    self.cuts_left -= 1
            answer_lines = answer_head.decode("latin-1").split("\r\n")
            answer_lines = [line for line in answer_lines if not line.lower().startswith("connection:")]
            answer_lines.insert(1, "Connection: close")
            conn.sendall("\r\n".join(answer_lines).encode("latin-1"))
            self._record(Seen(method, url.path, range_, status, "cut" if cut else "passed"))
            if not cut:
                conn.sendall(answer_rest)
                _pipe(upstream, conn)
                return
            sent = 0
            data = answer_rest
            while True:
                piece = data[: self.cut_after_bytes - sent]
                conn.sendall(piece)
                sent += len(piece)
                if sent >= self.cut_after_bytes:
                    break
                data = upstream.recv(BUFFER)
                if not data:
                    break
            # Then the connection drops, as a network would drop it.
            conn.shutdown(socket.SHUT_RDWR)
