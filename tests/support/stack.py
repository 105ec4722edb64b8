"""Whole stacks of real processes for the tests: a real ASGI server (uvicorn) and a real
Celery worker (and beat), child processes running against the test database, Redis, storage
and the test origin, with their output in test-artifacts/logs/; and `manage.py` in a process
of its own. The session-wide stacks (`local_stack`, `s3_stack`) are fixtures in conftest.py."""

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from django.conf import settings
from django.db import connection

from devtools.servers import free_port, wait_for_port
from infra.roles import ROLE_VARIABLE
from jobs import metrics
from stack import processes
from tests.support.origin_server import OriginServer

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
SLOW_MARKERS = frozenset({"e2e", "browser"})

# The markers of the test being run, as conftest.py's pytest_runtest_setup records them
# (None outside pytest). A stack is real processes: only a test marked `e2e` (or `browser`)
# may start one, so that `make test-fast` (everything but those) never does.
_running_test_markers: frozenset[str] | None = None


def running_test_markers_record(markers: frozenset[str]) -> None:
    global _running_test_markers
    _running_test_markers = markers


def slow_marker_require(what: str) -> None:
    """Refuses to start `what` (real processes, or a browser) for a test without a marker of
    a slow kind: such a test would run, slowly, in `make test-fast`."""
    if _running_test_markers is not None and not _running_test_markers & SLOW_MARKERS:
        raise RuntimeError(f"{what}: a test that starts real processes is marked e2e (or browser)")


def manage(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`manage.py ARGS` in a process of its own, with `env` as its whole environment."""
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def database_url() -> str:
    """The test database as a DATABASE_URL, for processes started by the tests."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class LogTail:
    """Copies a child's output to a log file and lets a test wait for a line."""

    def __init__(self, process: subprocess.Popen[str], path: Path) -> None:
        self.lines: list[str] = []
        self.changed = threading.Condition()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("a")
        threading.Thread(target=self._pump, args=(process,), daemon=True).start()

    def _pump(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.file.write(line)
            self.file.flush()
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()

    def wait_for(self, text: str, *, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while not any(text in line for line in self.lines):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no {text!r} in the log")
                self.changed.wait(remaining)


class Stack:
    """A real ASGI server (uvicorn) and a real Celery worker, both child processes, sharing
    the test database, Redis, storage and the test origin. The worker runs the pool of its
    settings: Celery's thread pool unless the stack's environment sets WORKER_POOL. As
    deployed (Dockerfile), uvicorn does not rewrite the scheme and client address from
    X-Forwarded-* (its default for a peer at 127.0.0.1); the app's settings decide."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.env = env
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.web: subprocess.Popen[str] | None = None
        self.worker: subprocess.Popen[str] | None = None
        self.beat: subprocess.Popen[str] | None = None

    def _spawn(
        self, role: str, argv: list[str], *, env: dict[str, str] | None = None
    ) -> tuple[subprocess.Popen[str], LogTail]:
        slow_marker_require(f"stack {self.name!r} starting its {role}")
        process = subprocess.Popen(
            argv,
            env={**self.env, **(env or {})},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        return process, LogTail(process, ARTIFACTS / "logs" / f"{self.name}-{role}.log")

    def start(self, *, worker: bool = True, web_extra: tuple[str, ...] = ()) -> "Stack":
        if "PROMETHEUS_MULTIPROC_DIR" in self.env:
            metrics.multiprocess_dir_reset(self.env["PROMETHEUS_MULTIPROC_DIR"])
        self.web, _ = self._spawn("web", processes.web_argv(port=self.port, extra=web_extra))
        if worker:
            self.start_worker()
        wait_for_port(self.port, process=self.web)
        return self

    def start_worker(self, *, concurrency: int = 2, env: dict[str, str] | None = None) -> None:
        """A worker running `concurrency` jobs at once (threads of one process, unless the
        stack sets WORKER_POOL=prefork), with `env` added to the stack's environment for it
        alone (its own DATABASE_APPLICATION_NAME, say)."""
        self.worker, log = self._spawn(
            "worker",
            processes.worker_argv(
                concurrency=concurrency,
                name=f"{self.name}-{time.monotonic_ns()}@%h",
                extra=("--without-gossip", "--without-mingle"),
            ),
            env=env,
        )
        log.wait_for(" ready.")

    @contextlib.contextmanager
    def extra_web(self, role: str = "web-2") -> Iterator[str]:
        """One more ASGI process with this stack's settings, on a port of its own, for as
        long as the block runs; yields its base URL. Any process may serve a job's socket."""
        port = free_port()
        process, _ = self._spawn(role, processes.web_argv(port=port))
        try:
            wait_for_port(port, process=process)
            yield f"http://127.0.0.1:{port}"
        finally:
            os.killpg(process.pid, 15)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()

    def start_beat(self, schedule_dir: Path) -> None:
        """A real `celery beat` sending this stack's CELERY_BEAT_SCHEDULE to its broker; its
        schedule file lives in `schedule_dir`. Stopped by `stop_beat()` (not by `stop()`)."""
        self.beat, log = self._spawn(
            "beat",
            processes.beat_argv(schedule=schedule_dir / "celerybeat-schedule"),
        )
        log.wait_for("beat: Starting...")

    def stop_beat(self) -> None:
        if self.beat is not None and self.beat.poll() is None:
            os.killpg(self.beat.pid, 15)
            try:
                self.beat.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.beat.pid, 9)
                self.beat.wait()

    def kill_worker(self) -> None:
        """SIGKILL the worker and its pool children, as a crash would."""
        if self.worker is not None:
            os.killpg(self.worker.pid, 9)
            self.worker.wait()

    def stop(self) -> None:
        for process in (self.worker, self.web):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, 15)
        for process in (self.worker, self.web):
            if process is None:
                continue
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()

    def client(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Token {token}"}, timeout=10)


def stack_env(origin_server: OriginServer, extra: dict[str, str], *, broker_db: int) -> dict[str, str]:
    """Each stack gets a broker database of its own, so its worker takes only its jobs."""
    env = {
        key: value
        for key, value in os.environ.items()
        # A test that imported the ASGI application made this process a web process: each
        # child of a stack takes its own role.
        if not key.startswith(("AWS_", "DJANGO_SETTINGS", "PYTEST", ROLE_VARIABLE))
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "downloads_project.settings",
            "DATABASE_URL": database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "CELERY_BROKER_URL": f"{settings.REDIS_URL}/{broker_db}",
            "VAR_DIR": str(settings.VAR_DIR),
            # The metrics of all the stack's processes, added up by /metrics; emptied by start().
            "PROMETHEUS_MULTIPROC_DIR": str(settings.VAR_DIR / "prometheus" / f"stack-{broker_db}"),
            "ORIGIN": "http",
            "ORIGIN_URL_TEMPLATE": origin_server.url_template,
            # Long enough for a busy CI machine, short of the origin's 5 s stall.
            "ORIGIN_READ_TIMEOUT_S": "3.0",
            "ORIGIN_CONNECT_TIMEOUT_S": "2.0",
            "JOB_RETRY_BACKOFF_S": "0.3",
            "JOB_RETRY_JITTER": "0",
            "JOB_INITIATE_RATE": "1000/min",
            "JOB_INITIATE_RATE_PER_IP": "1000/min",
            # A breaker that a test's failures open recovers within the next test.
            "ORIGIN_BREAKER_OPEN_S": "2",
            "JOB_HEARTBEAT_INTERVAL_S": "0.5",
            "STAGING_CHUNK_BYTES": str(64 * 1024),
            "STAGING_PART_BYTES": str(5 * 1024 * 1024),
        }
    )
    env.update(extra)
    return env
