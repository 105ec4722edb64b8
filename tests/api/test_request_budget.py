"""A web request's budget: a slow dependency costs a request a bounded time, never a pool
thread for as long as the dependency hangs, and the answer is then 503 with Retry-After
in the envelope (or, where the API has a fallback, that fallback's answer), well inside a
proxy's 60 s. A real uvicorn process (the web role) with no worker, against the real
PostgreSQL and a Redis behind a proxy that a test silences."""

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from botocore.exceptions import ReadTimeoutError
from django.conf import settings
from django.contrib.auth.models import User

from jobs import selectors
from tests.factories import api_key_for, make_job
from tests.support.databases import postgres_only
from tests.support.origin_server import OriginServer
from tests.support.stack import Stack, database_url, stack_env
from tests.support.tcp_proxy import tcp_proxy

ROOT = Path(__file__).resolve().parents[2]

BUDGET_BROKER_DB = 4  # a broker database no other stack of the suite uses
SERVICE_UNAVAILABLE = {
    "success": False,
    "error": {
        "code": "SERVICE_UNAVAILABLE",
        "message": "The service is briefly unavailable; try again",
        "retry_after": 5,
    },
}
# Far above what each budget allows, far below what an unbounded wait would take.
GENEROUS_BOUND_S = 30.0
# A request's few Redis commands at 1 s each, with room for a busy machine; under the
# 5 s per command that a web process had before (initiate then took about 30 s).
REDIS_BOUND_S = 20.0


def _token(name: str) -> str:
    return api_key_for(User.objects.create_user(name))


@pytest.fixture
def web_process(
    django_db_setup: None, origin_server: OriginServer
) -> Iterator[Callable[[str, dict[str, str]], Stack]]:
    stacks: list[Stack] = []

    def start(name: str, extra: dict[str, str]) -> Stack:
        stack = Stack(name, stack_env(origin_server, extra, broker_db=BUDGET_BROKER_DB)).start(worker=False)
        stacks.append(stack)
        return stack

    yield start
    for stack in stacks:
        stack.stop()


@pytest.mark.e2e
@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_statement_past_the_web_budget_answers_503_and_frees_its_thread(web_process):
    """Another session holds a lock on the jobs table (a slow migration, a stuck
    transaction): the list's query waits on it until statement_timeout cancels it."""
    web = web_process("budget-pg", {"WEB_STATEMENT_TIMEOUT_MS": "1000"})
    token = _token("budget-pg")
    holder = psycopg.connect(database_url())
    holder.execute("LOCK TABLE jobs_downloadjob IN ACCESS EXCLUSIVE MODE")
    # Without a budget the request would wait for the lock: let it go in the end.
    release = threading.Timer(2 * GENEROUS_BOUND_S, holder.rollback)
    release.start()
    try:
        with web.client(token) as api:
            api.timeout = 3 * GENEROUS_BOUND_S
            started = time.monotonic()
            refused = api.get("/v1/downloads")
            elapsed_s = time.monotonic() - started
            holder.rollback()
            after = api.get("/v1/downloads")
    finally:
        release.cancel()
        holder.close()

    assert refused.status_code == 503, refused.text
    assert refused.json() == SERVICE_UNAVAILABLE
    assert refused.headers["Retry-After"] == "5"
    assert elapsed_s < GENEROUS_BOUND_S
    assert after.status_code == 200  # the connection went back to the pool, usable


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_redis_that_does_not_answer_costs_a_request_seconds_not_a_minute(web_process):
    """Hot state's Redis accepts connections and never answers. Each request asks it
    several times (its token, the rate limits, the card) and falls back on the database
    each time: with the web role's 1 s per command it answers in a few seconds (a 5 s
    timeout made initiate take about 30 s, half a proxy's patience, its thread held)."""
    redis_address = urlsplit(settings.REDIS_URL)
    with tcp_proxy(redis_address.hostname or "127.0.0.1", redis_address.port or 6379) as proxy:
        web = web_process("budget-redis", {"REDIS_STATE_URL": f"redis://{proxy.address}/1"})
        token = _token("budget-redis")
        job = make_job(User.objects.get(username="budget-redis"))
        proxy.silent()
        answers = []
        with web.client(token) as api:
            api.timeout = 3 * GENEROUS_BOUND_S
            for method, path in [
                ("GET", f"/v1/download/status/{job.job_id}"),
                ("GET", "/v1/downloads"),
                ("POST", "/v1/download/initiate"),
                ("GET", f"/v1/download/{job.job_id}"),
            ]:
                started = time.monotonic()
                response = api.request(method, path, json={"file_id": 5} if method == "POST" else None)
                answers.append((path, response.status_code, time.monotonic() - started))

    assert [status for _, status, _ in answers] == [200, 200, 200, 404], answers  # 404: JOB_NOT_READY
    slowest = max(elapsed_s for _, _, elapsed_s in answers)
    assert slowest < REDIS_BOUND_S, answers


def test_an_s3_timeout_answers_503(api_client, user, monkeypatch):
    """botocore's timeouts are a dependency's fault like the database's and Redis's."""
    job = make_job(user)

    def s3_hangs(*args: object, **kwargs: object) -> None:
        raise ReadTimeoutError(endpoint_url="https://s3.example.com/downloads")

    monkeypatch.setattr(selectors, "download_job_card_for_owner", s3_hangs)
    response = api_client.get(f"/v1/download/status/{job.job_id}")

    assert response.status_code == 503
    assert response.json() == SERVICE_UNAVAILABLE
    assert response["Retry-After"] == "5"


def test_the_web_role_has_the_request_budget_and_workers_do_not(tmp_path):
    """The role decides the defaults (infra/roles.py, DOWNLOADS_PROCESS_ROLE): read the
    settings as a web process and as any other process would."""
    script = (
        "import django\n"
        "django.setup(); from django.conf import settings as s\n"
        "c = s.STORAGES['downloads']['OPTIONS']['client_config']\n"
        "print(s.REDIS_SOCKET_TIMEOUT_S, c.connect_timeout, c.read_timeout, c.retries['max_attempts'],"
        " s.DATABASES['default']['OPTIONS'].get('options', ''))\n"
    )
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "REDIS_SOCKET", "WEB_", "DJANGO_", "DOWNLOADS_PROCESS_ROLE"))
        },
        "DJANGO_SETTINGS_MODULE": "downloads_project.settings",
        "AWS_STORAGE_BUCKET_NAME": "budget",
        "DATABASE_URL": "postgres://nobody@127.0.0.1:1/never-connected",
        "VAR_DIR": str(tmp_path),
    }
    read = {
        role: subprocess.run(
            [sys.executable, "-c", script],
            env={**env, "DOWNLOADS_PROCESS_ROLE": role},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        for role in ("web", "worker")
    }

    assert read["web"].stdout.split() == ["1.0", "3.0", "5.0", "2", "-c", "statement_timeout=10000"], read[
        "web"
    ].stderr
    assert read["worker"].stdout.split() == ["5.0", "10.0", "60.0", "10"], read["worker"].stderr
