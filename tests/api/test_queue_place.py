"""A queued job's place in line (`queue_position`, `estimated_time`) in its status answer,
and the progress a cancelled job keeps (jobs/selectors.py, jobs/services/actions.py)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import completions, hotstate
from jobs.hotstate import HotProgress
from jobs.models import Status
from jobs.selectors import download_job_queue_place
from tests.factories import make_job


def status_of(client, job):
    response = client.get(f"/v1/download/status/{job.job_id}")
    assert response.status_code == 200, response.content
    return response.json()["data"]


def test_a_queued_jobs_place_counts_the_jobs_served_before_it(api_client, user, other_user):
    make_job(other_user, priority="normal")
    make_job(other_user, priority="low")  # served after a normal job, whenever it came
    mine = make_job(user, priority="normal")
    make_job(other_user, priority="high")  # later, yet served first
    make_job(other_user, priority="normal")  # later, same priority: behind it
    # Not in line: waiting for a retry, running, ended.
    make_job(other_user, priority="high", attempts=1, next_retry_at=timezone.now() + timedelta(seconds=30))
    make_job(other_user, priority="high", status=Status.PROCESSING)
    make_job(other_user, priority="high", status=Status.COMPLETED)

    data = status_of(api_client, mine)

    assert data["queue_position"] == 3
    assert data["estimated_time"] == 60  # the default: no job completed recently


def test_the_estimate_of_a_place_is_the_jobs_ahead_over_the_completion_rate(
    api_client, user, other_user, settings
):
    now = timezone.now()
    # Four jobs of 10, 20, 30 and 40 s completed over the 120 s window: one every 30 s.
    for duration_s, ago_s in ((10.0, 110.0), (20.0, 60.0), (30.0, 30.0), (40.0, 5.0)):
        completions.completion_record(
            make_job(
                other_user,
                status=Status.COMPLETED,
                completed_at=now - timedelta(seconds=ago_s),
                duration_seconds=duration_s,
            )
        )
    for _ in range(2):
        make_job(other_user, priority="high")
    first, second = make_job(user, priority="high"), make_job(user, priority="high")

    assert (
        status_of(api_client, first)["queue_position"],
        status_of(api_client, first)["estimated_time"],
    ) == (
        3,
        2 * 30 + 25,
    )
    assert status_of(api_client, second)["queue_position"] == 4
    assert status_of(api_client, second)["estimated_time"] == 3 * 30 + 25


def test_the_place_is_one_count_query(user, django_assert_num_queries):
    job = make_job(user)

    with django_assert_num_queries(1):
        assert download_job_queue_place(job=job)["queue_position"] == 1


@pytest.mark.parametrize(
    "fields",
    [
        {"status": Status.PROCESSING, "attempts": 1},
        {"status": Status.COMPLETED},
        {"status": Status.QUEUED, "attempts": 1, "next_retry_at": timezone.now()},
    ],
    ids=["processing", "completed", "waiting-for-retry"],
)
def test_only_a_job_waiting_for_its_turn_has_a_place(api_client, user, fields):
    job = make_job(user, **fields)

    assert download_job_queue_place(job=job) == {}
    data = status_of(api_client, job)
    assert "queue_position" not in data
    assert "estimated_time" not in data


def test_a_cancelled_job_keeps_the_progress_it_had_reached(
    api_client, user, django_capture_on_commit_callbacks
):
    job = make_job(user, status=Status.PROCESSING, attempts=2, bytes_total=1000)
    hotstate.progress_write(
        job_id=job.job_id, progress=HotProgress(attempt=2, bytes_done=370, bytes_total=1000, progress=37)
    )

    with django_capture_on_commit_callbacks(execute=True):
        assert api_client.delete(f"/v1/download/{job.job_id}").status_code == 200

    data = status_of(api_client, job)
    assert (data["status"], data["progress"]) == ("cancelled", 37)
    listed = api_client.get("/v1/downloads").json()["data"]["results"]
    assert [(row["job_id"], row["progress"]) for row in listed] == [(job.job_id, 37)]


def test_a_cancel_ignores_the_progress_of_an_earlier_attempt(
    api_client, user, django_capture_on_commit_callbacks
):
    job = make_job(user, status=Status.PROCESSING, attempts=2, progress=5, bytes_done=50, bytes_total=1000)
    hotstate.progress_write(
        job_id=job.job_id, progress=HotProgress(attempt=1, bytes_done=900, bytes_total=1000, progress=90)
    )

    with django_capture_on_commit_callbacks(execute=True):
        assert api_client.delete(f"/v1/download/{job.job_id}").status_code == 200

    assert status_of(api_client, job)["progress"] == 5
