"""The fixtures of the React client's tests: its build, its static sites, a stack of its
own (uvicorn + a Celery worker) and the app in a page. Session-scoped where a module would
only repeat them."""

from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User

from tests.factories import api_key_for
from tests.support.browser import BrowserSession
from tests.support.origin_server import OriginServer
from tests.support.stack import Stack, stack_env

from .support import (
    LISTED_HOST,
    POLLING_INTERVAL_MS,
    REACT_BROKER_DB,
    UNLISTED_HOST,
    App,
    StaticSite,
    app_in_browser,
    build_app,
)


@pytest.fixture(scope="session")
def react_dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_app(tmp_path_factory.mktemp("react-dist"))


@pytest.fixture(scope="session")
def listed_site() -> Iterator[StaticSite]:
    site = StaticSite(LISTED_HOST)
    yield site
    site.stop()


@pytest.fixture(scope="session")
def unlisted_site() -> Iterator[StaticSite]:
    site = StaticSite(UNLISTED_HOST)
    yield site
    site.stop()


@pytest.fixture(scope="session")
def react_stack(
    django_db_setup: None, origin_server: OriginServer, listed_site: StaticSite
) -> Iterator[Stack]:
    """uvicorn + a Celery worker of these tests', whose CORS_ALLOWED_ORIGINS lists the
    listed site's origin."""
    redis.Redis.from_url(f"{settings.REDIS_URL}/{REACT_BROKER_DB}").flushdb()
    env = stack_env(
        origin_server,
        {"CORS_ALLOWED_ORIGINS": listed_site.origin, "JOB_POLLING_INTERVAL_MS": str(POLLING_INTERVAL_MS)},
        broker_db=REACT_BROKER_DB,
    )
    stack = Stack("react", env).start()
    yield stack
    stack.stop()


@pytest.fixture
def token() -> str:
    """An API key of a user of this test's (made before the browser is driven)."""
    user = User.objects.create_user(f"react-{uuid4().hex[:10]}")
    return api_key_for(user)


@pytest.fixture
def app(
    browser_session: BrowserSession,
    listed_site: StaticSite,
    react_stack: Stack,
    token: str,
    react_dist: Path,
    origin: OriginServer,
) -> Iterator[App]:
    """The app served from the listed origin, pointed at the stack with a user's token."""
    yield from app_in_browser(browser_session, listed_site, react_stack, token, react_dist)
