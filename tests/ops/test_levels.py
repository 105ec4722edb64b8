"""The levels a scrape of /metrics reads from their source of truth (jobs/ops/levels.py):
the workers' heartbeats and the memory of real Redis servers of this module's own, the
stored files, the jobs awaiting an operator and the oldest due job from rows in the test
database, and the dependencies as /ready checks them. A source that cannot be read is
left out and the scrape still answers 200."""

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from infra.redis import reset as redis_clients_reset
from jobs.models import DownloadJob, Status
from jobs.ops.levels import queue_oldest
from jobs.ops.worker_heartbeat import WorkerBeat, heartbeat_forget, heartbeat_write, heartbeats_read
from tests.factories import make_job
from tests.support.brokers import broker_at
from tests.support.redis_servers import RedisServer
from tests.support.scrapes import closed_port_url, samples

pytestmark = pytest.mark.django_db

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
GiB = 1024**3


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(Path(tmp_path_factory.mktemp("levels-redis"))).start()
    yield server
    server.stop()


@pytest.fixture
def servers(settings: Any, own_redis: RedisServer) -> Iterator[redis.Redis]:
    """The broker, hot state and channel layer on this module's Redis (databases 0-2),
    emptied before and after: a client of it."""
    client = redis.Redis.from_url(own_redis.url)
    client.flushall()
    settings.REDIS_STATE_URL = f"{own_redis.url}/1"
    settings.CHANNEL_LAYER_URL = f"{own_redis.url}/2"
    with broker_at(settings, f"{own_redis.url}/0"):
        yield client
    client.flushall()
    client.config_set("maxmemory", 0)
    client.config_set("maxmemory-policy", "noeviction")
    redis_clients_reset()


def scrape(client: Client) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    return samples(response.content.decode())


def of(found: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (sample, labels), value in found.items() if sample == name}


# --- workers -------------------------------------------------------------------------------


def test_live_workers_their_queues_and_each_queues_consumers(
    client: Client, servers: redis.Redis, local_storage: Any
) -> None:
    now = timezone.now().timestamp()
    heartbeat_write(WorkerBeat("celery@a", ("downloads.high", "downloads.normal"), now - 4), interval_s=10)
    heartbeat_write(WorkerBeat("celery@b", ("downloads.high",), now - 1), interval_s=10)

    found = scrape(client)

    assert of(found, "download_workers_alive") == {
        (("host", "celery@a"), ("queue", "downloads.high")): 1,
        (("host", "celery@a"), ("queue", "downloads.normal")): 1,
        (("host", "celery@b"), ("queue", "downloads.high")): 1,
    }
    assert of(found, "download_workers_alive_total") == {(): 2}
    assert of(found, "download_queue_consumers") == {
        (("priority", "high"),): 2,
        (("priority", "normal"),): 1,
        (("priority", "low"),): 0,
    }
    ages = of(found, "download_worker_heartbeat_age_seconds")
    assert 4 <= ages[(("host", "celery@a"),)] < 10
    assert 1 <= ages[(("host", "celery@b"),)] < 7
    assert 0 < servers.ttl("downloads:worker-heartbeat:celery@a") <= 30


def test_no_live_worker_still_says_zero(client: Client, servers: redis.Redis, local_storage: Any) -> None:
    heartbeat_write(WorkerBeat("celery@gone", ("downloads.low",), 0), interval_s=10)
    heartbeat_forget("celery@gone")

    found = scrape(client)

    assert of(found, "download_workers_alive") == {}
    assert of(found, "download_workers_alive_total") == {(): 0}
    assert set(of(found, "download_queue_consumers").values()) == {0}


def test_a_heartbeat_expires_after_three_periods(servers: redis.Redis) -> None:
    heartbeat_write(WorkerBeat("celery@short", ("downloads.high",), 0), interval_s=0.4)
    assert servers.ttl("downloads:worker-heartbeat:celery@short") == 2  # ceil(3 * 0.4)
    servers.set("downloads:worker-heartbeat:celery@broken", "not json")
    assert [beat.host for beat in heartbeats_read()] == ["celery@short"]


# --- Redis memory and the dependencies -----------------------------------------------------


def test_the_memory_of_each_redis_role(client: Client, servers: redis.Redis, local_storage: Any) -> None:
    servers.config_set("maxmemory", 512 * 1024 * 1024)
    servers.config_set("maxmemory-policy", "allkeys-lru")

    found = scrape(client)

    roles = ("broker", "hotstate", "channels")
    used = of(found, "download_redis_memory_used_bytes")
    assert set(used) == {(("role", role),) for role in roles}
    assert all(value > 100_000 for value in used.values())
    assert of(found, "download_redis_memory_max_bytes") == {
        (("role", role),): 512 * 1024 * 1024 for role in roles
    }
    assert of(found, "download_redis_evicted_keys_total") == {(("role", role),): 0 for role in roles}
    assert of(found, "download_redis_maxmemory_policy_info") == {
        (("policy", "allkeys-lru"), ("role", role)): 1 for role in roles
    }
    assert of(found, "download_dependency_up") == {
        (("dependency", name),): 1 for name in ("database", "broker", "hotstate", "channels", "storage")
    }


def test_a_redis_that_does_not_answer_is_left_out_and_down(
    client: Client, servers: redis.Redis, settings: Any, local_storage: Any
) -> None:
    settings.REDIS_STATE_URL = f"{closed_port_url()}/1"

    found = scrape(client)

    assert set(of(found, "download_redis_memory_used_bytes")) == {
        (("role", "broker"),),
        (("role", "channels"),),
    }
    up = of(found, "download_dependency_up")
    assert up[(("dependency", "hotstate"),)] == 0
    assert up[(("dependency", "broker"),)] == up[(("dependency", "database"),)] == 1


def test_an_unreachable_broker_leaves_out_the_workers_and_the_scrape_answers(
    client: Client, settings: Any, local_storage: Any
) -> None:
    with broker_at(settings, f"{closed_port_url()}/0"):
        found = scrape(client)
    assert of(found, "download_workers_alive_total") == {}
    assert of(found, "download_queue_consumers") == {}
    assert of(found, "download_dependency_up")[(("dependency", "broker"),)] == 0
    assert of(found, "download_storage_budget_bytes") == {(): 50 * GiB}


def test_storage_that_is_not_a_folder_is_down(client: Client, settings: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    settings.STORAGES = {
        **settings.STORAGES,
        "downloads": {
            "BACKEND": "jobs.transfer.links.SignedFileSystemStorage",
            "OPTIONS": {"location": str(blocker / "media"), "base_url": "/files/"},
        },
    }
    assert of(scrape(client), "download_dependency_up")[(("dependency", "storage"),)] == 0


# --- the job table -------------------------------------------------------------------------


def test_stored_files_count_each_file_once(
    client: Client, user: User, settings: Any, local_storage: Any
) -> None:
    settings.STORAGE_BUDGET_BYTES = 10 * GiB
    later = timezone.now() + timedelta(hours=1)
    source = make_job(user, status=Status.COMPLETED, storage_key="a", file_size_bytes=1000, expires_at=later)
    make_job(user, status=Status.COMPLETED, storage_key="a", file_size_bytes=1000, reused_from=source)
    make_job(user, status=Status.COMPLETED, storage_key="b", file_size_bytes=24, expires_at=later)
    make_job(user, status=Status.EXPIRED, storage_key="c", file_size_bytes=5000)  # deleted
    make_job(user, status=Status.FAILED, storage_key="d")
    make_job(user, status=Status.COMPLETED, storage_key="", file_size_bytes=7)  # no file

    found = scrape(client)

    assert of(found, "download_storage_held_bytes") == {(): 1024}
    assert of(found, "download_storage_held_objects") == {(): 2}
    assert of(found, "download_storage_budget_bytes") == {(): 10 * GiB}


def test_jobs_awaiting_an_operator(client: Client, user: User, local_storage: Any) -> None:
    now = timezone.now()
    make_job(user, status=Status.FAILED, failed_at=now - timedelta(hours=1), dead_lettered_at=now)
    make_job(user, status=Status.FAILED, failed_at=now - timedelta(days=3), dead_lettered_at=now)
    make_job(user, status=Status.FAILED, failed_at=now - timedelta(hours=2), error_code="FILE_NOT_FOUND")
    make_job(user, status=Status.FAILED, failed_at=now - timedelta(hours=25))
    # Retried by an operator since it was dead-lettered: queued, the mark cleared.
    make_job(user, status=Status.QUEUED, failed_at=None, dead_lettered_at=None)

    found = scrape(client)

    assert of(found, "download_jobs_awaiting_operator") == {
        (("reason", "dead_lettered"),): 2,
        (("reason", "failed"),): 2,
    }


def set_times(job: DownloadJob, **times: Any) -> None:
    DownloadJob.objects.filter(pk=job.pk).update(**times)


def test_the_oldest_due_job_of_each_queue(client: Client, user: User, local_storage: Any) -> None:
    now = timezone.now()
    first = make_job(user, priority="high")
    set_times(first, created_at=now - timedelta(seconds=90))
    newer = make_job(user, priority="high")
    set_times(newer, created_at=now - timedelta(seconds=10))
    retry_due = make_job(user, priority="normal", attempts=1, next_retry_at=now - timedelta(seconds=30))
    set_times(retry_due, created_at=now - timedelta(hours=2))
    not_due = make_job(user, priority="normal", attempts=1, next_retry_at=now + timedelta(seconds=60))
    set_times(not_due, created_at=now - timedelta(hours=3))
    requeued = make_job(user, priority="low", attempts=2)
    set_times(requeued, created_at=now - timedelta(hours=4), updated_at=now - timedelta(seconds=300))
    make_job(user, priority="low", status=Status.PROCESSING, attempts=1)

    oldest = queue_oldest(now=now)
    assert oldest == {
        "high": pytest.approx(90, abs=1),
        "normal": pytest.approx(30, abs=1),
        "low": pytest.approx(300, abs=1),
    }
    assert all(
        job.due_since is not None
        for job in DownloadJob.objects.filter(status=Status.QUEUED, next_retry_at__isnull=True)
    )

    DownloadJob.objects.filter(priority="low").delete()
    found = of(scrape(client), "download_queue_oldest_age_seconds")
    assert found[(("priority", "low"),)] == 0
    assert 90 <= found[(("priority", "high"),)] < 100
