"""The reaper and the broker's unacknowledged messages: an attempt's message that a
worker took and could not acknowledge (its connection to the broker was lost) stays in
kombu's `unacked` hash until the visibility timeout; the reaper drops those of jobs that
ended, and leaves the others. Real messages in a `redis-server` of this module's own,
delivered without acknowledgement as a worker's channel takes them."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.utils import timezone

from downloads_project.celery import app
from jobs import services, tasks
from jobs.models import DownloadJob, Status
from jobs.services.maintenance import _stage_job_pk
from tests import factories
from tests.support.brokers import broker_at, empty_broker
from tests.support.redis_servers import RedisServer
from tests.support.scrapes import closed_port_url

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def broker_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(Path(tmp_path_factory.mktemp("unacked-broker"))).start()
    yield server
    server.stop()


@pytest.fixture
def broker(settings: Any, broker_server: RedisServer) -> Iterator[redis.Redis]:
    with empty_broker(settings, f"{broker_server.url}/0") as client:
        yield client


@contextmanager
def delivered_unacknowledged(url: str, sends: list[tuple[Any, tuple[int, ...]]]) -> Iterator[None]:
    """Sends each task, then takes every message as a worker's channel does, and does not
    acknowledge them while the block runs (closed, the channel would hand them back)."""
    with app.connection_for_write(url) as connection:
        for task, args in sends:
            task.apply_async(args=args, queue="downloads.normal", connection=connection)
        channel: Any = connection.default_channel  # kombu's virtual channel: basic_get
        for _ in sends:
            assert channel.basic_get("downloads.normal", no_ack=False) is not None
        yield


def test_the_reaper_drops_the_unacknowledged_messages_of_jobs_that_ended(
    broker: redis.Redis, settings: Any, user: User
) -> None:
    completed = factories.make_job(user, status=Status.COMPLETED, attempts=1)
    cancelled = factories.make_job(user, status=Status.CANCELLED)
    queued = factories.make_job(user)
    running = factories.make_job(user, status=Status.PROCESSING, attempts=1)
    factories.beat(running, seconds_ago=0)  # alive: the reaper leaves it running
    sends = [
        (tasks.download_job_stage, (completed.pk,)),
        (tasks.download_job_stage, (completed.pk,)),  # a duplicate the reaper had sent
        (tasks.download_job_stage, (cancelled.pk,)),
        (tasks.download_job_stage, (queued.pk,)),
        (tasks.download_job_stage, (running.pk,)),
        (tasks.download_job_stage, (999_999_999,)),  # no such row here: left alone
        (tasks.download_jobs_purge, ()),  # not an attempt's
    ]
    with delivered_unacknowledged(settings.CELERY_BROKER_URL, sends):
        assert broker.hlen("unacked") == 7
        assert broker.zcard("unacked_index") == 7

        services.download_jobs_reap()

        left = broker.hgetall("unacked")
        assert set(broker.zrange("unacked_index", 0, -1)) == set(left)
        job_pks = sorted(_stage_job_pk(raw) or 0 for raw in left.values())
        assert job_pks == sorted([0, queued.pk, running.pk, 999_999_999])  # 0: the purge's


def test_an_unreachable_broker_leaves_the_reaper_to_its_jobs(
    settings: Any, user: User, caplog: pytest.LogCaptureFixture
) -> None:
    with broker_at(settings, f"{closed_port_url()}/0"):
        queued = factories.make_job(user)
        DownloadJob.objects.filter(pk=queued.pk).update(updated_at=timezone.now() - timedelta(hours=1))
        with caplog.at_level(logging.WARNING, logger="jobs.services.maintenance"):
            assert services.download_jobs_reap() == 1  # the queued job, sent again
    assert "Cannot read the broker's unacknowledged messages" in caplog.text
