"""Initiate's `estimated_time`: the jobs ahead of the new one in the broker's lists over the
rate of recent completions, plus their mean duration (jobs/selectors.py).

The completions are recorded as the completing attempt records them (hot-state Redis;
one test runs a real attempt against the local origin). The broker's lists are real lists
in a Redis database of their own. The one fake is the send to the broker: the `broker`
fixture's pushes a placeholder message (not Celery's) to the tail of the job's list, as
kombu does, when its row commits; `dispatched` records it where no list is read."""

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.utils import timezone

from jobs import completions, queues, services
from jobs.models import DownloadJob, Status
from jobs.selectors import download_job_estimate_s
from tests.factories import make_job
from tests.support.brokers import broker_at, empty_broker
from tests.support.origin_server import FileScript
from tests.support.scrapes import closed_port_url

INITIATE = "/v1/download/initiate"
# Rows and the send commit as they do in a web process: the job's message is in its list
# before the estimate is made.
committed = pytest.mark.django_db(transaction=True)


@pytest.fixture
def broker(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    with empty_broker(settings, f"{settings.REDIS_URL}/9") as client:

        def send(*, job_pk: int, priority: str, countdown_s: float = 0) -> None:
            client.lpush(queues.queue_name(priority), f"job {job_pk}")

        monkeypatch.setattr(queues, "stage_send", send)
        yield client


def waiting(broker: redis.Redis, **depths: int) -> None:
    """Messages of other jobs waiting in each priority's queue."""
    for priority, depth in depths.items():
        broker.lpush(queues.queue_name(priority), *[f"other {n}" for n in range(depth)])


def completed(owner: User, *durations_ago_s: tuple[float, float]) -> None:
    """Jobs that completed `ago_s` before now after `duration_s`, counted as their
    completion counts them."""
    now = timezone.now()
    for duration_s, ago_s in durations_ago_s:
        job = make_job(
            owner,
            status=Status.COMPLETED,
            completed_at=now - timedelta(seconds=ago_s),
            duration_seconds=duration_s,
        )
        completions.completion_record(job)


def estimated_time(client: Any, **body: Any) -> int:
    response = client.post(INITIATE, {"file_id": 1, **body}, format="json")
    assert response.status_code == 200, response.content
    value: int = response.json()["data"]["estimated_time"]
    return value


# Four jobs of 10, 20, 30 and 40 s (25 s on average) completed over the whole 120 s window:
# one every 30 s. Waiting: 2 high, 3 normal and 5 low besides the new job.
RECENT = ((10.0, 110.0), (20.0, 60.0), (30.0, 30.0), (40.0, 5.0))


@committed
@pytest.mark.parametrize(("priority", "ahead"), [("high", 2), ("normal", 5), ("low", 10)])
def test_estimated_time_is_the_wait_for_the_jobs_ahead_plus_one_job(
    api_client, other_user, broker, priority, ahead
):
    completed(other_user, *RECENT)
    waiting(broker, high=2, normal=3, low=5)

    assert estimated_time(api_client, priority=priority) == ahead * 30 + 25


@committed
def test_estimated_time_of_a_job_that_waits_for_none_is_one_job(api_client, other_user, broker):
    completed(other_user, *RECENT)
    waiting(broker, low=7)  # served after a normal job

    assert estimated_time(api_client) == 25


@committed
def test_estimated_time_is_the_default_without_recent_completions(api_client, other_user, broker, settings):
    settings.JOB_DEFAULT_ESTIMATE_S = 45
    completed(other_user, (10.0, 130.0))  # before the window
    waiting(broker, normal=50)

    assert estimated_time(api_client) == 45


@committed
def test_a_shorter_window_leaves_older_completions_out(api_client, other_user, broker, settings):
    settings.JOB_ESTIMATE_WINDOW_S = 60
    completed(other_user, (100.0, 90.0), (20.0, 50.0), (40.0, 10.0))  # 2 in the last 60 s: 30 s each

    assert estimated_time(api_client) == 30


@committed
def test_estimated_time_of_a_reused_file_is_zero(api_client, user, other_user, broker, local_storage):
    completed(other_user, *RECENT)
    key = local_storage.save(f"downloads/{user.pk}/stored", ContentFile(b"hello"))
    make_job(
        user,
        file_id=1,
        status=Status.COMPLETED,
        storage_key=key,
        file_size_bytes=5,
        completed_at=timezone.now(),
        expires_at=timezone.now() + timedelta(days=1),
    )

    response = api_client.post(INITIATE, {"file_id": 1}, format="json")

    assert response.json()["data"]["status"] == "completed"
    assert response.json()["data"]["estimated_time"] == 0
    assert completions.completions_read(now_s=time.time()).count == len(RECENT)  # it took no worker's time


@committed
def test_estimated_time_is_the_default_when_the_broker_cannot_be_read(
    api_client, other_user, settings, dispatched
):
    completed(other_user, *RECENT)
    with broker_at(settings, f"{closed_port_url()}/0"):
        response = api_client.post(INITIATE, {"file_id": 1}, format="json")

    assert response.status_code == 200
    assert response.json()["data"]["estimated_time"] == 60


@pytest.mark.django_db
def test_a_completed_attempt_counts_in_the_recent_completions(
    user, origin, local_storage, django_capture_on_commit_callbacks
):
    origin.add(73100, FileScript(size=1000))
    job = make_job(user, file_id=73100)

    with django_capture_on_commit_callbacks(execute=True):
        services.download_job_run(job_pk=job.pk)

    job.refresh_from_db()
    assert job.status == Status.COMPLETED
    bucket = completions.COMPLETIONS_BUCKET_S
    bucket_s = job.completed_at.timestamp() // bucket * bucket
    assert completions.completions_read(now_s=time.time()) == completions.RecentCompletions(
        count=1, seconds=job.duration_seconds, first_bucket_s=bucket_s
    )


# --- the selector, at a given moment -------------------------------------------------------

# The start of a bucket of completions, as Unix time.
T0 = 1_800_000_000.0


def completion_at(at_s: float, *, duration_s: float) -> None:
    job = DownloadJob(completed_at=datetime.fromtimestamp(at_s, tz=UTC), duration_seconds=duration_s)
    completions.completion_record(job)


@pytest.mark.django_db
def test_the_first_completions_after_a_quiet_spell_count_from_when_their_jobs_started(user, broker):
    """10 slots took 10 jobs of 8 s at T0 - 7, after a quiet spell; they completed at T0 + 1.
    Counted from one mean duration before the bucket of the first completion, not over the
    whole window, the rate is 10 per 11 s (10 per 128 s over the window)."""
    for _ in range(10):
        completion_at(T0 + 1, duration_s=8.0)
    waiting(broker, normal=21)  # 20 ahead, and the job's own message
    job = make_job(user)

    assert download_job_estimate_s(job=job, now_s=T0 + 3) == 20 * 11 / 10 + 8


@pytest.mark.django_db
def test_a_job_waiting_for_its_retry_waits_until_it_is_due(user, broker):
    completion_at(T0, duration_s=12.0)
    waiting(broker, normal=20)  # not ahead of it: a worker holds it until it is due
    job = make_job(user, attempts=1, next_retry_at=datetime.fromtimestamp(T0 + 40, tz=UTC))

    assert download_job_estimate_s(job=job, now_s=T0 + 10) == 30 + 12


@pytest.mark.django_db
def test_a_processing_job_waits_for_no_queue(user, broker):
    completion_at(T0, duration_s=12.5)
    waiting(broker, high=20)
    job = make_job(user, status=Status.PROCESSING, attempts=1)

    assert download_job_estimate_s(job=job, now_s=T0 + 1) == 13


def test_completions_leave_the_window_bucket_by_bucket(settings):
    settings.JOB_ESTIMATE_WINDOW_S = 20  # 4 buckets of 5 s
    for at_s, duration_s in ((T0 - 1, 1.0), (T0, 2.0), (T0 + 4.9, 3.0), (T0 + 16, 4.0)):
        completion_at(at_s, duration_s=duration_s)

    assert completions.completions_read(now_s=T0 + 19.9) == completions.RecentCompletions(
        count=3, seconds=9.0, first_bucket_s=T0
    )
    assert completions.completions_read(now_s=T0 + 20) == completions.RecentCompletions(
        count=1, seconds=4.0, first_bucket_s=T0 + 15
    )
    assert completions.completions_read(now_s=T0 - 1) == completions.RecentCompletions(
        count=1, seconds=1.0, first_bucket_s=T0 - 5
    )
