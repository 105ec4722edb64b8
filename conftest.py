"""Fixtures shared by every test module: users and API clients, the real HTTP origin, an
S3 endpoint (moto's standalone server), and whole stacks of real processes (ASGI server
+ Celery worker) running against the test database."""

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.storage import storages
from django.db import connection
from playwright.sync_api import Browser, sync_playwright
from rest_framework.test import APIClient

from devtools.servers import S3Endpoint, free_port, s3_endpoint, wait_for_port
from infra import redis as redis_clients
from infra.roles import ROLE_VARIABLE
from jobs import queues
from jobs.ops import metrics
from jobs.transfer.storage import SignedFileSystemStorage
from stack import processes
from tests.factories import api_key_for
from tests.support.origin_server import OriginServer

ROOT = Path(__file__).resolve().parent
ARTIFACTS = ROOT / "test-artifacts"
# As deployed (Dockerfile): uvicorn does not rewrite the scheme and client address from
# X-Forwarded-* (its default for a peer at 127.0.0.1); the app's settings decide.


# --- users and clients -------------------------------------------------------------------


@pytest.fixture
def user(db: None) -> User:
    return User.objects.create_user("alice", password="alice-password")


@pytest.fixture
def other_user(db: None) -> User:
    return User.objects.create_user("bob", password="bob-password")


@pytest.fixture
def api_client(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_key_for(user)}")
    return client


@pytest.fixture
def other_client(other_user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_key_for(other_user)}")
    return client


@pytest.fixture(autouse=True)
def _fast_password_hasher(settings: Any) -> None:
    """The default hasher spends ~0.5 s per user on purpose; tests need no such cost."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    """The cache, rate-limit counters, circuit breakers, recent completions and cached API
    keys live in Redis: each test starts with none."""
    from django.core.cache import cache

    from jobs import completions
    from jobs.api.ratelimits import rate_limits_reset
    from jobs.api_keys import api_keys_cache_reset
    from jobs.transfer.breaker import OriginBreaker, breakers_all
    from jobs.web.login_protection import login_failures_reset

    cache.clear()
    rate_limits_reset()
    login_failures_reset()
    for breaker in breakers_all():
        OriginBreaker(breaker.name).reset()
    completions.completions_reset()
    api_keys_cache_reset()


# --- settings as a new process reads them ------------------------------------------------


def manage(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`manage.py ARGS` in a process of its own, with `env` as its whole environment."""
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def clean_env(tmp_path: Path) -> dict[str, str]:
    """This environment without any DJANGO_* or TLS variable, on a scratch SQLite database."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "PYTEST", "TRUST_X_", "USE_X_", "DATABASE_URL", ROLE_VARIABLE))
    }
    env |= {"VAR_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    return env


# --- storage and broker ------------------------------------------------------------------


@pytest.fixture
def redis_down(settings: Any) -> Iterator[None]:
    """Hot-state Redis at a closed port; back to the real one before other fixtures' teardown."""
    reachable = settings.REDIS_STATE_URL
    settings.REDIS_STATE_URL = f"redis://127.0.0.1:{free_port()}/1"
    redis_clients.reset()
    yield
    settings.REDIS_STATE_URL = reachable
    redis_clients.reset()


@pytest.fixture
def local_storage(settings: Any, tmp_path: Path) -> SignedFileSystemStorage:
    """Local downloads storage in a directory of this test's own."""
    settings.STORAGES = {
        **settings.STORAGES,
        "downloads": {
            "BACKEND": "jobs.transfer.storage.SignedFileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "media"), "base_url": "/files/"},
        },
    }
    storage = storages["downloads"]
    assert isinstance(storage, SignedFileSystemStorage)
    return storage


@pytest.fixture
def dispatched(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Named fake: the send to the Celery broker, recorded instead of sent (the real
    worker path is tested end to end)."""
    calls: list[dict[str, Any]] = []

    def record(*, job_pk: int, priority: str, countdown_s: float = 0) -> None:
        calls.append({"args": (job_pk,), "queue": queues.queue_name(priority), "countdown": countdown_s})

    monkeypatch.setattr(queues, "stage_send", record)
    return calls


# --- the origin --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def origin_server() -> Iterator[OriginServer]:
    server = OriginServer().start()
    yield server
    server.stop()


@pytest.fixture
def origin(origin_server: OriginServer, settings: Any) -> Iterator[OriginServer]:
    """The HTTP origin, emptied, and this process's settings pointed at it."""
    origin_server.reset()
    settings.ORIGIN = "http"
    settings.ORIGIN_URL_TEMPLATE = origin_server.url_template
    settings.ORIGIN_READ_TIMEOUT_S = 1.0
    yield origin_server
    origin_server.reset()


# --- S3 ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Endpoint]:
    """An S3 endpoint with a bucket of this session's: the configured one (CI starts a
    moto server) or a moto server of our own. moto speaks the S3 protocol over real HTTP
    but does not enforce the expiry of presigned URLs: tests check the signed expiry."""
    with s3_endpoint(bucket_prefix="downloads-test") as endpoint:
        yield endpoint


# --- whole stacks of real processes -------------------------------------------------------


def database_url() -> str:
    """The test database as a DATABASE_URL, for processes started by the tests."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class _LogTail:
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
    settings: Celery's thread pool unless the stack's environment sets WORKER_POOL."""

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
    ) -> tuple[subprocess.Popen[str], _LogTail]:
        process = subprocess.Popen(
            argv,
            env={**self.env, **(env or {})},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        return process, _LogTail(process, ARTIFACTS / "logs" / f"{self.name}-{role}.log")

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


LOCAL_BROKER_DB, S3_BROKER_DB = 5, 6


def _flush(db: int) -> None:
    redis.Redis.from_url(f"{settings.REDIS_URL}/{db}").flushdb()


@pytest.fixture(scope="session")
def local_stack(django_db_setup: None, origin_server: OriginServer) -> Iterator[Stack]:
    _flush(LOCAL_BROKER_DB)
    stack = Stack("local", stack_env(origin_server, {}, broker_db=LOCAL_BROKER_DB)).start()
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def s3_stack(django_db_setup: None, origin_server: OriginServer, s3: S3Endpoint) -> Iterator[Stack]:
    _flush(S3_BROKER_DB)
    stack = Stack("s3", stack_env(origin_server, s3.env, broker_db=S3_BROKER_DB)).start()
    yield stack
    stack.stop()


# --- a browser ---------------------------------------------------------------------------

# Debian's Chromium, headless, with nothing that would reach beyond this machine.
LAUNCH_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class BrowserSession:
    """The session's browser. `enter()` before driving it, `leave()` after: between tests
    the thread has no running event loop, as the rest of the suite expects."""

    def __init__(self, browser: Browser, loop: asyncio.AbstractEventLoop | None) -> None:
        self.browser = browser
        self.loop = loop

    def enter(self) -> None:
        asyncio._set_running_loop(self.loop)

    def leave(self) -> None:
        asyncio._set_running_loop(None)


@pytest.fixture(scope="session")
def browser_session() -> Iterator[BrowserSession]:
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip(
            "no `chromium` on PATH: the browser tests need Debian's chromium (apt-get install chromium)"
        )
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=executable, args=LAUNCH_ARGS)
    except BaseException:
        playwright.stop()
        raise
    session = BrowserSession(browser, asyncio._get_running_loop())
    session.leave()
    yield session
    session.enter()
    try:
        browser.close()
    finally:
        playwright.stop()
        session.leave()
