"""A real webhook receiver for the tests: an HTTP server that verifies every delivery with
the `standardwebhooks` package, as a client of the service would, and answers on cue.

Driven over HTTP, so the same code runs in the test's process (`WebhookReceiver().start()`)
or as a process of its own (`python -m tests.support.webhook_receiver PORT`, with
`ReceiverProcess`): `POST /_control {"secrets": [...], "script": [500, 500, "hang", ...],
"hang_s": 3}` sets the secrets to verify with and the answers of the next deliveries
(200 once the script is spent; "hang": no answer for `hang_s`, then 200; a 3xx
points to /elsewhere);
`GET /_received` lists every delivery: its headers, body and the indexes of the secrets
whose signature `Webhook(secret).verify` accepted.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import httpx
from standardwebhooks import Webhook, WebhookVerificationError

from devtools.servers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.secrets: list[str] = []
        self.script: list[Any] = []
        self.hang_s = 5.0
        self.received: list[dict[str, Any]] = []


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, status: int, data: Any) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        state = self.server.state
        with state.lock:
            self._json(200, list(state.received))

    def do_POST(self) -> None:
        state = self.server.state
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/_control":
            control = json.loads(body)
            with state.lock:
                state.secrets = control.get("secrets", state.secrets)
                state.script = list(control.get("script", []))
                state.hang_s = float(control.get("hang_s", state.hang_s))
                if control.get("reset"):
                    state.received.clear()
            self._json(200, {"ok": True})
            return
        headers = {name.lower(): value for name, value in self.headers.items()}
        with state.lock:
            verified_by = []
            for index, secret in enumerate(state.secrets):
                try:
                    Webhook(secret).verify(body, headers)
                except WebhookVerificationError:
                    continue
                verified_by.append(index)
            answer = state.script.pop(0) if state.script else 200
            state.received.append(
                {
                    "path": self.path,
                    "headers": headers,
                    "body": body.decode(),
                    "verified_by": verified_by,
                    "answer": answer,
                    "at": time.time(),
                }
            )
            hang_s = state.hang_s
        if answer == "hang":
            time.sleep(hang_s)
            answer = 200
        if 300 <= int(answer) < 400:  # a redirect, which a sender must not follow
            self.send_response(int(answer))
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._json(int(answer), {"received": True})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.state = _State()


class ReceiverControl:
    """Drives a receiver at `base_url`, in this process or another."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.url = f"{base_url}/hook"

    @property
    def host_port(self) -> str:
        return self.base_url.removeprefix("http://")

    def control(
        self, *, secrets: list[str] | None = None, script: list[Any] | None = None, **more: Any
    ) -> None:
        body: dict[str, Any] = {"script": script or [], **more}
        if secrets is not None:
            body["secrets"] = secrets
        httpx.post(f"{self.base_url}/_control", json=body, timeout=5).raise_for_status()

    def received(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.base_url}/_received", timeout=5)
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()
        return result


class WebhookReceiver(ReceiverControl):
    """The receiver served by a daemon thread of this process."""

    def __init__(self) -> None:
        self._server = _Server()
        super().__init__(f"http://127.0.0.1:{self._server.server_address[1]}")
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class ReceiverProcess(ReceiverControl):
    """The receiver as a process of its own."""

    def __init__(self) -> None:
        port = free_port()
        super().__init__(f"http://127.0.0.1:{port}")
        self._port = port
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.webhook_receiver", str(self._port)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        wait_for_port(self._port, process=self._process)
        return self

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            self._process.wait(timeout=10)


if __name__ == "__main__":
    server = _Server(int(sys.argv[1]))
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
