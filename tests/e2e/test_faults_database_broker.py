"""Faults of the database and of the broker, mid-job: PostgreSQL restarted, and the broker's
Redis restarted with its append-only file. Several jobs stream and several wait when the
dependency goes; every job completes exactly once with the origin's bytes.

Each fault has a stack of real processes of its own (uvicorn, a prefork worker, beat) with
short reaper thresholds, on Redis servers that the test starts (no database of the
machine's Redis is shared with another test):

- PostgreSQL restarted: the stack reaches the test database through a TCP proxy that the
  test takes down for 10 s (open connections reset, new ones refused, as when PostgreSQL
  stops) and brings back; the test process keeps its own direct connection. While it is
  down the API answers 503 in the envelope with Retry-After wherever it needs the
  database, and `/ready` says 503; then 200 again.
- broker Redis restarted: the broker is a `redis-server` with an append-only file
  (appendfsync always) that the test kills (SIGKILL) and starts again on the same port
  and directory: what it had acknowledged is kept, what it was doing is not. Afterwards
  no message is left unacknowledged.
"""

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import httpx
import pytest
import redis
from django.contrib.auth.models import User
from django.db import connection

from jobs.models import DownloadJob, Status
from tests.factories import api_key_for, key_digest
from tests.support.databases import postgres_only
from tests.support.faults import FAST_REAPER, jobs_through_a_fault, running_stack
from tests.support.flows import eventually
from tests.support.origin_server import OriginServer
from tests.support.redis_servers import RedisServer
from tests.support.stack import Stack, stack_env
from tests.support.tcp_proxy import TcpProxy, tcp_proxy

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), postgres_only]

JOBS = 6
OUTAGE_S = 10.0
ROUND_S = 6.0  # one round of checks while the database is down, at most


def faults_env(origin_server: OriginServer, *, broker_url: str, hot: RedisServer) -> dict[str, str]:
    """The stack's environment: its broker at `broker_url`, its hot state, channel layer
    and cache in databases 1-3 of `hot`."""
    env = stack_env(origin_server, {**FAST_REAPER, "JOB_MAX_ACTIVE_PER_USER": str(JOBS + 1)}, broker_db=0)
    env |= {
        "REDIS_URL": hot.url,
        "CELERY_BROKER_URL": broker_url,
        "REDIS_STATE_URL": f"{hot.url}/1",
        "CHANNEL_LAYER_URL": f"{hot.url}/2",
        "REDIS_CACHE_URL": f"{hot.url}/3",
    }
    env.pop("REDIS_SENTINELS", None)
    env.pop("REDIS_SENTINEL_MASTER", None)
    return env


@pytest.fixture
def token() -> str:
    user = User.objects.create_user(f"faults-{uuid4().hex[:12]}")
    return api_key_for(user)


# --- PostgreSQL restarted -------------------------------------------------------------------


@pytest.fixture(scope="module")
def database_proxy(django_db_setup: None) -> Iterator[TcpProxy]:
    db = connection.settings_dict
    with tcp_proxy(db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def postgres_stack(
    database_proxy: TcpProxy, origin_server: OriginServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    hot = RedisServer(tmp_path_factory.mktemp("faults-postgres-redis")).start()
    try:
        env = faults_env(origin_server, broker_url=f"{hot.url}/0", hot=hot)
        # The stack's processes reach PostgreSQL through the proxy only.
        direct = urlsplit(env["DATABASE_URL"])
        credentials = direct.netloc.rpartition("@")[0]
        netloc = f"{credentials}@{database_proxy.address}" if credentials else database_proxy.address
        env["DATABASE_URL"] = urlunsplit(direct._replace(netloc=netloc))
        with running_stack("faults-postgres", env, beat_dir=tmp_path_factory.mktemp("pg-beat")) as stack:
            yield stack
    finally:
        hot.stop()


def assert_unavailable(response: httpx.Response, what: str) -> None:
    """A dependency's fault, as the API answers it: 503 in the envelope, with Retry-After."""
    assert response.status_code == 503, (what, response.status_code, response.text[:500])
    body = response.json()
    assert body["success"] is False, (what, body)
    assert body["error"]["code"] == "SERVICE_UNAVAILABLE", (what, body)
    assert int(response.headers["Retry-After"]) > 0, (what, response.headers)


def test_every_job_completes_once_through_a_postgresql_restart(
    postgres_stack: Stack, database_proxy: TcpProxy, origin: OriginServer, token: str
) -> None:
    stack = postgres_stack
    hot = redis.Redis.from_url(stack.env["REDIS_STATE_URL"])
    checked = {"rounds": 0, "slowest_round_s": 0.0}

    def restart_postgresql() -> None:
        """PostgreSQL is gone for OUTAGE_S: the API answers 503 where it needs the
        database, /ready is 503; then it is back and /ready 200 again."""
        queued = DownloadJob.objects.filter(
            owner__auth_token_set__digest=key_digest(token), status=Status.QUEUED
        )
        job_id = queued.values_list("job_id", flat=True).first()
        assert job_id is not None
        database_proxy.down()
        down_at = time.monotonic()
        # Rounds of checks, each at once, while one more fits in the outage: a request
        # that needs the database waits DATABASE_POOL_TIMEOUT_S for a connection.
        with stack.client(token) as api, ThreadPoolExecutor(4) as pool:
            while time.monotonic() - down_at < OUTAGE_S - ROUND_S:
                round_at = time.monotonic()
                hot.delete(f"job:{job_id}:card")  # a poll of a job whose card Redis does not hold
                answers = {
                    what: pool.submit(request)
                    for what, request in {
                        "ready": lambda: httpx.get(f"{stack.base_url}/ready", timeout=15),
                        "status": lambda: api.get(f"/v1/download/status/{job_id}"),
                        "list": lambda: api.get("/v1/downloads"),
                        "initiate": lambda: api.post("/v1/download/initiate", json={"file_id": 77999}),
                    }.items()
                }
                ready = answers.pop("ready").result()
                assert ready.status_code == 503, ready.text
                assert "database" in ready.json()["failed"], ready.json()
                for what, answer in answers.items():
                    assert_unavailable(answer.result(), what)
                checked["rounds"] += 1
                checked["slowest_round_s"] = max(checked["slowest_round_s"], time.monotonic() - round_at)
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        database_proxy.up()
        up_at = time.monotonic()
        eventually(
            lambda: httpx.get(f"{stack.base_url}/ready", timeout=15).status_code == 200,
            timeout_s=30,
            what="/ready 200 once PostgreSQL is back",
        )
        checked["ready_again_s"] = time.monotonic() - up_at

    with stack.client(token) as api:
        outcome = jobs_through_a_fault(
            "postgresql restarted (down 10 s)",
            stack=stack,
            api=api,
            origin=origin,
            file_ids=[77001 + n for n in range(JOBS)],
            inject=restart_postgresql,
        )
    assert (outcome.started, outcome.completed, outcome.duplicated, outcome.lost) == (JOBS, JOBS, 0, 0)
    assert checked["rounds"] >= 1, checked


# --- broker Redis restarted with its append-only file ----------------------------------------


@pytest.fixture(scope="module")
def broker_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("faults-broker"), appendonly=True).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def broker_stack(
    django_db_setup: None,
    broker_redis: RedisServer,
    origin_server: OriginServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    hot = RedisServer(tmp_path_factory.mktemp("faults-broker-hot")).start()
    try:
        env = faults_env(origin_server, broker_url=f"{broker_redis.url}/0", hot=hot)
        with running_stack("faults-broker", env, beat_dir=tmp_path_factory.mktemp("broker-beat")) as stack:
            yield stack
    finally:
        hot.stop()


def test_every_job_completes_once_through_a_broker_restart_with_its_append_only_file(
    broker_stack: Stack, broker_redis: RedisServer, origin: OriginServer, token: str
) -> None:
    stack = broker_stack

    def restart_broker() -> None:
        broker_redis.stop()  # SIGKILL: what the AOF holds survives, nothing else
        time.sleep(3)
        broker_redis.start()

    with stack.client(token) as api:
        outcome = jobs_through_a_fault(
            "broker redis restarted (append-only file)",
            stack=stack,
            api=api,
            origin=origin,
            file_ids=[78001 + n for n in range(JOBS)],
            inject=restart_broker,
        )
    assert (outcome.started, outcome.completed, outcome.duplicated, outcome.lost) == (JOBS, JOBS, 0, 0)
    broker = redis.Redis.from_url(stack.env["CELERY_BROKER_URL"])
    eventually(lambda: broker.hlen("unacked") == 0, timeout_s=30, what="nothing left unacknowledged")
