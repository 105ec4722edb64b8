"""The one builder of Redis clients (infra/redis.py): each shared client is built once, and
one `reset()` makes every one of them anew from the settings as they are then, the Lua
scripts registered on them included."""

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from devtools.servers import free_port
from infra import redis as redis_clients
from jobs import hotstate
from jobs.hotstate import HotProgress


@pytest.fixture
def fresh_clients() -> Iterator[None]:
    redis_clients.reset()
    yield
    redis_clients.reset()


def test_each_shared_client_is_built_once(fresh_clients) -> None:
    assert redis_clients.state_client() is redis_clients.state_client()
    assert redis_clients.broker_client() is redis_clients.broker_client()
    assert redis_clients.state_script("return 1") is redis_clients.state_script("return 1")


def test_after_reset_hot_states_scripts_go_to_the_server_the_settings_name(
    fresh_clients, settings: Any
) -> None:
    """A script registered before the reset (the chunk report) must not keep the old
    client: pointed at a closed port, the next report fails instead of reaching the old
    server."""
    job_id = uuid.uuid4().hex
    assert not hotstate.chunk_report(job_id=job_id, progress=HotProgress(1, 10, 100, 10))

    reachable = settings.REDIS_STATE_URL
    settings.REDIS_STATE_URL = f"redis://127.0.0.1:{free_port()}/1"
    redis_clients.reset()
    try:
        with pytest.raises(redis.ConnectionError):
            hotstate.chunk_report(job_id=job_id, progress=HotProgress(1, 20, 100, 20))
    finally:
        settings.REDIS_STATE_URL = reachable
        redis_clients.reset()
    assert hotstate.progress_read_many([job_id])[job_id].bytes_done == 10
    hotstate.progress_clear(job_id)


def test_after_reset_the_broker_client_reads_the_broker_the_settings_name(
    fresh_clients, settings: Any
) -> None:
    first = redis_clients.broker_client()
    port = free_port()
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{port}/9"
    redis_clients.reset()
    moved = redis_clients.broker_client()

    assert moved is not first
    assert moved.connection_pool.connection_kwargs["port"] == port


def test_publishing_on_hot_states_server_shares_its_client(fresh_clients, settings: Any) -> None:
    """Pub/sub ignores the database number: another database of hot state's server is
    published to through hot state's own pool."""
    other_database = settings.REDIS_STATE_URL.rsplit("/", 1)[0] + "/2"
    assert redis_clients.publish_client(other_database, timeout_s=2.0) is redis_clients.state_client()


def test_each_event_loop_has_its_own_asyncio_client(fresh_clients) -> None:
    async def twice() -> tuple[Any, Any]:
        return redis_clients.state_async_client(), redis_clients.state_async_client()

    first_loop = asyncio.run(twice())
    second_loop = asyncio.run(twice())

    assert first_loop[0] is first_loop[1]
    assert second_loop[0] is not first_loop[0]
