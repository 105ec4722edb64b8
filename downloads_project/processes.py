"""The command lines of the service's processes, in one place: `manage.py runstack`, the
test stacks and the benchmarks start the same programs the Dockerfile and the deploy
files run.

uvicorn runs with `--no-proxy-headers`: the app's settings (TRUST_X_FORWARDED_PROTO,
CLIENT_IP_HEADER) alone decide what a forwarded header may change, not uvicorn's default
trust of 127.0.0.1.
"""

import sys
from pathlib import Path

from jobs.queues import WORKER_QUEUES_ARG

ASGI_APP = "downloads_project.asgi:application"


def web_argv(*, port: int, host: str = "127.0.0.1", extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "uvicorn", ASGI_APP, "--host", host, "--port", str(port),
            "--no-proxy-headers", *extra]  # fmt: skip


def worker_argv(*, concurrency: int, name: str | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    """A prefork worker serving every queue, downloads.high first."""
    argv = [sys.executable, "-m", "celery", "-A", "downloads_project", "worker",
            "-Q", WORKER_QUEUES_ARG, "--concurrency", str(concurrency), "--loglevel", "INFO"]  # fmt: skip
    if name is not None:
        argv += ["--hostname", name]
    return [*argv, *extra]


def beat_argv(*, schedule: Path) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "downloads_project", "beat", "--loglevel", "INFO",
            "--schedule", str(schedule)]  # fmt: skip
