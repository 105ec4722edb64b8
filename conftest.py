"""Fixtures shared by every test module: users and API clients, the real HTTP origin, an
S3 endpoint (moto's standalone server), the session's whole stacks of real processes
(tests/support/stack.py: ASGI server + Celery worker) running against the test database,
and a browser."""

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.storage import storages
from playwright.sync_api import sync_playwright
from rest_framework.test import APIClient

from devtools.servers import S3Endpoint, free_port, s3_endpoint
from infra import redis as redis_clients
from infra.roles import ROLE_VARIABLE
from jobs import queues
from jobs.transfer.links import SignedFileSystemStorage
from tests.factories import api_key_for
from tests.support.browser import LAUNCH_ARGS, BrowserSession
from tests.support.origin_server import OriginServer
from tests.support.stack import Stack, running_test_markers_record, slow_marker_require, stack_env


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """What kind of test is about to run: a stack or the browser refuses to start for a
    test that is not marked `e2e` or `browser` (tests/support/stack.py)."""
    running_test_markers_record(frozenset(mark.name for mark in item.iter_markers()))


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
    """The cache, rate-limit counters, circuit breakers, recent completions, the queue's
    line and cached API keys live in Redis: each test starts with none."""
    from django.core.cache import cache

    from jobs import completions, queue_line
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
    queue_line.queue_line_reset()
    api_keys_cache_reset()


# --- settings as a new process reads them ------------------------------------------------


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
            "BACKEND": "jobs.transfer.links.SignedFileSystemStorage",
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


# --- the session's stacks of real processes ----------------------------------------------

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


@pytest.fixture(scope="session")
def browser_session() -> Iterator[BrowserSession]:
    slow_marker_require("the browser")
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
