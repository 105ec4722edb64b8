"""A worker told to stop (SIGTERM, Celery's warm shutdown, as compose and Kubernetes stop
it) while jobs stream and wait: it takes no new job, finishes the running ones, hands the
ones it had reserved back to the queue, and exits; a new worker finishes the rest. Every
job completes exactly once, and no attempt is lost to the shutdown.

A stack of real processes (uvicorn, a prefork worker with two processes, beat) with a
broker Redis of its own.
"""

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
import redis
from django.contrib.auth.models import User

from jobs.models import DownloadJob
from tests.factories import api_key_for
from tests.support.databases import postgres_only
from tests.support.faults import FAST_REAPER, jobs_through_a_fault, running_stack
from tests.support.flows import eventually
from tests.support.origin_server import OriginServer
from tests.support.redis_servers import RedisServer
from tests.support.stack import Stack, stack_env

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), postgres_only]

JOBS = 6


@pytest.fixture(scope="module")
def worker_stack(
    django_db_setup: None, origin_server: OriginServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, RedisServer]]:
    broker = RedisServer(Path(tmp_path_factory.mktemp("worker-broker"))).start()
    env = stack_env(
        origin_server,
        {"CELERY_BROKER_URL": f"{broker.url}/0", **FAST_REAPER, "JOB_MAX_ACTIVE_PER_USER": str(JOBS)},
        broker_db=0,
    )
    try:
        with running_stack("warm-shutdown", env, beat_dir=tmp_path_factory.mktemp("warm-beat")) as stack:
            yield stack, broker
    finally:
        broker.stop()


def test_a_warm_shutdown_mid_job_finishes_the_running_jobs_and_loses_none(
    worker_stack: tuple[Stack, RedisServer], origin: OriginServer
) -> None:
    stack, broker = worker_stack
    token = api_key_for(User.objects.create_user(f"warm-{uuid4().hex[:12]}"))
    in_flight: set[str] = set()

    def warm_shutdown() -> None:
        assert stack.worker is not None
        in_flight.update(DownloadJob.objects.filter(status="processing").values_list("job_id", flat=True))
        stack.worker.send_signal(signal.SIGTERM)  # the main process only, as a container stop does
        try:
            stack.worker.wait(timeout=60)  # it finishes its running jobs (about 2 s each) first
        except subprocess.TimeoutExpired:
            pytest.fail("the worker did not stop within 60 s of SIGTERM")
        # The running attempts completed before it exited; nothing of it stays unacked.
        assert (
            set(
                DownloadJob.objects.filter(job_id__in=in_flight, status="completed").values_list(
                    "job_id", flat=True
                )
            )
            == in_flight
        )
        stack.start_worker()

    with stack.client(token) as api:
        outcome = jobs_through_a_fault(
            "worker SIGTERM (warm shutdown)",
            stack=stack,
            api=api,
            origin=origin,
            file_ids=[78001 + n for n in range(JOBS)],
            inject=warm_shutdown,
        )

    assert (outcome.started, outcome.completed, outcome.duplicated, outcome.lost) == (JOBS, JOBS, 0, 0)
    assert len(in_flight) == 2
    # No attempt was lost: the jobs that ran through the shutdown completed at their first
    # attempt, and so did the ones the stopping worker handed back unstarted.
    assert sorted(DownloadJob.objects.filter(job_id__in=in_flight).values_list("attempts", flat=True)) == [
        1,
        1,
    ]
    client = redis.Redis.from_url(f"{broker.url}/0")
    eventually(lambda: client.hlen("unacked") == 0, timeout_s=10, what="nothing left unacknowledged")
