"""Redis failover with Sentinel: the master dies while jobs stream and wait; the sentinels
promote the replica; every job completes exactly once and new initiates work.

A group of real `redis-server` processes (a master, its replica, three sentinels) that the
test starts, and a stack of real processes (uvicorn, a prefork worker, beat) configured
with REDIS_SENTINELS and REDIS_SENTINEL_MASTER only: the broker (kombu's sentinel
transport), hot state, rate limits, the channel layer and the cache all find the master
through the sentinels. The master is killed (SIGKILL) with two jobs streaming and four
queued. What the replica had not received is lost with it: messages, heartbeats, progress.
The reaper (every second here) sends lost jobs again, and fencing keeps an attempt that
survived the failover from completing beside its replacement.
"""

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from django.contrib.auth.models import User

from infra import redis as redis_clients
from tests.factories import api_key_for
from tests.support.databases import postgres_only
from tests.support.faults import FAST_REAPER, jobs_through_a_fault, running_stack
from tests.support.flows import assert_downloads_exactly, eventually, initiate, job_status
from tests.support.origin_server import FileScript, OriginServer
from tests.support.redis_servers import SentinelGroup
from tests.support.stack import Stack, stack_env

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), postgres_only]

JOBS = 6


@pytest.fixture(scope="module")
def sentinel_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    group = SentinelGroup(Path(tmp_path_factory.mktemp("sentinel"))).start()
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture(scope="module")
def sentinel_stack(
    django_db_setup: None,
    origin_server: OriginServer,
    sentinel_group: SentinelGroup,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    env = stack_env(
        origin_server,
        {**sentinel_group.env, **FAST_REAPER, "JOB_MAX_ACTIVE_PER_USER": str(JOBS + 1)},
        broker_db=0,
    )
    for name in ("REDIS_STATE_URL", "CHANNEL_LAYER_URL", "REDIS_CACHE_URL"):
        env.pop(name, None)
    with running_stack("sentinel", env, beat_dir=tmp_path_factory.mktemp("sentinel-beat")) as stack:
        yield stack


@pytest.fixture
def token() -> str:
    user = User.objects.create_user(f"sentinel-{uuid4().hex[:12]}")
    return api_key_for(user)


def test_an_asyncio_client_finds_the_master_and_waits_for_a_free_connection(
    sentinel_group: SentinelGroup, settings: Any
) -> None:
    """What the web process's event loop uses for hot state (the sockets' places, the
    legacy wait): the master through the sentinels, and a bounded pool where a command
    waits for a connection instead of failing."""
    settings.REDIS_SENTINELS = redis_clients.sentinels_parse(sentinel_group.env["REDIS_SENTINELS"].split(","))
    settings.REDIS_SENTINEL_MASTER = sentinel_group.env["REDIS_SENTINEL_MASTER"]
    key = f"sentinel-async-{uuid4().hex}"

    async def scenario() -> Any:
        client = redis_clients.async_client(f"redis://{settings.REDIS_SENTINEL_MASTER}/5", max_connections=1)
        try:
            await asyncio.gather(*(client.incr(key) for _ in range(20)))
            value = await client.get(key)
            await client.delete(key)
            return value
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == b"20"


def test_every_job_completes_once_through_a_sentinel_failover_and_new_initiates_work(
    sentinel_stack: Stack, sentinel_group: SentinelGroup, origin: OriginServer, token: str
) -> None:
    stack = sentinel_stack
    with stack.client(token) as api:
        outcome = jobs_through_a_fault(
            "redis master killed (Sentinel failover)",
            stack=stack,
            api=api,
            origin=origin,
            file_ids=[76001 + n for n in range(JOBS)],
            inject=sentinel_group.kill_master,
        )
        assert (outcome.started, outcome.completed, outcome.duplicated, outcome.lost) == (JOBS, JOBS, 0, 0)

        # After the failover, a new job goes through the new master end to end.
        script = origin.add(76100, FileScript(size=256 * 1024))
        job_id = initiate(api, 76100)
        eventually(lambda: job_status(api, job_id)["status"] == "completed", timeout_s=30, what="a new job")
        assert_downloads_exactly(api, job_id, script, 76100)
