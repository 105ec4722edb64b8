"""A small TCP proxy that a test puts between the service and a dependency, to take the
dependency away and give it back as a real outage looks from the service's side.

`down()` resets every connection through the proxy and refuses new ones (the port stays
bound, so a client sees "connection refused" rather than a silent hang), `up()` accepts
again; `silent()` instead accepts and forwards nothing (a dependency that hangs).
"""

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from devtools.servers import free_port


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._state = "up"  # up | down | silent
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "TcpProxy":
        self._open_listener()
        threading.Thread(target=self._accept_loop, name=f"proxy-{self.port}", daemon=True).start()
        return self

    def _open_listener(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(256)
        listener.settimeout(0.2)
        self._listener = listener

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            listener = self._listener
            if listener is None:  # down: nothing listens, connections are refused
                self._stopped.wait(0.05)
                continue
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            if self._state == "silent":
                with self._lock:
                    self._pairs.append((client, client))
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._pairs.append((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def _reset_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for end in pair:
                with suppress(OSError):
                    # RST rather than FIN: as when the server process dies.
                    end.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                with suppress(OSError):
                    # Wakes the pipe thread blocked reading it: until that read returns, a
                    # close() alone releases nothing, and both ends (the dependency's
                    # session, an open transaction with its locks) would live on.
                    end.shutdown(socket.SHUT_RD)
                with suppress(OSError):
                    end.close()

    def down(self) -> None:
        """The dependency is gone: open connections are reset, new ones refused."""
        self._state = "down"
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self._reset_all()

    def silent(self) -> None:
        """The dependency hangs: open connections are reset, new ones accepted and left
        without an answer."""
        self._state = "silent"
        self._reset_all()

    def up(self) -> None:
        if self._listener is None:
            self._open_listener()
        self._state = "up"
        self._reset_all()  # connections accepted while silent were never answered

    def stop(self) -> None:
        self._stopped.set()
        self.down()


@contextmanager
def tcp_proxy(target_host: str, target_port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(target_host, target_port).start()
    try:
        yield proxy
    finally:
        proxy.stop()
