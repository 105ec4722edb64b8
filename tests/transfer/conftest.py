"""Fixtures of the transfer tests."""

from collections.abc import Iterator
from typing import Any

import pytest

from devtools.servers import free_port
from jobs import hotstate


@pytest.fixture
def redis_down(settings: Any) -> Iterator[None]:
    """Hot-state Redis at a closed port; back to the real one before other fixtures' teardown."""
    reachable = settings.REDIS_STATE_URL
    settings.REDIS_STATE_URL = f"redis://127.0.0.1:{free_port()}/1"
    hotstate.client.cache_clear()
    yield
    settings.REDIS_STATE_URL = reachable
    hotstate.client.cache_clear()
