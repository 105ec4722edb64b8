"""The command lines of the service's processes, in one place: `manage.py runstack`, the
test stacks and the benchmarks start the same programs the Dockerfile and the deploy
files run.

uvicorn runs with WEB_FLAGS, as the Dockerfile, compose and the k8s manifest do:
- `--no-proxy-headers`: the app's settings (TRUST_X_FORWARDED_PROTO, CLIENT_IP_HEADER) alone
  decide what a forwarded header may change, not uvicorn's default trust of 127.0.0.1.
- `--ws-per-message-deflate false`: a job socket's messages are a few hundred bytes, a few a
  second. Compressing each costs about a tenth of the process's CPU per message and a zlib
  context per socket (about 40 KiB), to save bytes that do not matter at that rate.
- `--http edge.http_protocol:BoundedHttpToolsProtocol`: httptools' parser, with
  a size limit and a deadline on each request's head (slow or endless headers).
"""

import sys
from pathlib import Path

from jobs.queues import WORKER_QUEUES_ARG

ASGI_APP = "downloads_project.asgi:application"
HTTP_PROTOCOL = "edge.http_protocol:BoundedHttpToolsProtocol"
WEB_FLAGS = ("--no-proxy-headers", "--ws-per-message-deflate", "false", "--http", HTTP_PROTOCOL)


def web_argv(*, port: int, host: str = "127.0.0.1", extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "uvicorn", ASGI_APP, "--host", host, "--port", str(port),
            *WEB_FLAGS, *extra]  # fmt: skip


def worker_argv(
    *, concurrency: int | None = None, name: str | None = None, extra: tuple[str, ...] = ()
) -> list[str]:
    """A worker serving every queue, downloads.high first. Its pool is the settings'
    (WORKER_POOL in its environment: Celery takes `--pool prefork` for its own default and
    lets the configured pool win over it); its concurrency too (WORKER_CONCURRENCY), unless
    given here."""
    argv = [sys.executable, "-m", "celery", "-A", "downloads_project", "worker",
            "-Q", WORKER_QUEUES_ARG, "--loglevel", "INFO"]  # fmt: skip
    if concurrency is not None:
        argv += ["--concurrency", str(concurrency)]
    if name is not None:
        argv += ["--hostname", name]
    return [*argv, *extra]


def beat_argv(*, schedule: Path) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "downloads_project", "beat", "--loglevel", "INFO",
            "--schedule", str(schedule)]  # fmt: skip
