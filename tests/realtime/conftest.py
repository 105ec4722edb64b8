"""The stack and the browser page of the downloads page's tests (test_page*.py)."""

from collections.abc import Iterator

import pytest
import redis
from django.conf import settings
from playwright.sync_api import Page

from tests.support.browser import BrowserSession
from tests.support.origin_server import OriginServer
from tests.support.page import PAGE_BROKER_DB, POLLING_INTERVAL_MS, page_open
from tests.support.stack import Stack, stack_env


@pytest.fixture(scope="package")
def page_stack(django_db_setup: None, origin_server: OriginServer) -> Iterator[Stack]:
    """uvicorn + a Celery worker of this package's, on a broker database of its own; the page
    polls every 500 ms when it has no socket, so the polling test does not idle."""
    redis.Redis.from_url(f"{settings.REDIS_URL}/{PAGE_BROKER_DB}").flushdb()
    env = stack_env(
        origin_server, {"JOB_POLLING_INTERVAL_MS": str(POLLING_INTERVAL_MS)}, broker_db=PAGE_BROKER_DB
    )
    stack = Stack("page", env).start()
    yield stack
    stack.stop()


@pytest.fixture
def page(browser_session: BrowserSession, page_stack: Stack, origin: OriginServer) -> Iterator[Page]:
    """A page in a fresh browser context, pointed at the page stack. Fails the test on any
    uncaught error in the page's script."""
    with page_open(
        browser_session, page_stack.base_url, viewport={"width": 1024, "height": 900}, accept_downloads=True
    ) as page:
        yield page
