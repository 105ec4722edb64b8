"""A queued job's place in line (`queue_position`, `estimated_time`) in its status answer,
read from the line's snapshot in hot-state Redis, and the progress a cancelled job keeps
(jobs/selectors.py, jobs/queue_line.py, jobs/services/actions.py)."""

import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from infra.redis import state_client
from jobs import completions, hotstate, queue_line
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


def position(job, now_s):
    return download_job_queue_place(job=job, now_s=now_s).get("queue_position")


def test_the_place_orders_the_line_by_priority_then_by_arrival(api_client, user, other_user):
    jobs = [
        make_job(user, priority="low"),
        make_job(user, priority="normal"),
        make_job(user, priority="high"),
        make_job(user, priority="low"),
        make_job(user, priority="high"),
        make_job(user, priority="normal"),
        make_job(user, priority="low"),
    ]
    # A job waiting for a retry keeps no place, whatever its priority and age.
    make_job(other_user, priority="high", attempts=1, next_retry_at=timezone.now() - timedelta(seconds=1))

    places = [status_of(api_client, job)["queue_position"] for job in jobs]

    assert places == [5, 3, 1, 6, 2, 4, 7]


def test_one_query_builds_the_line_for_every_poll_within_its_age(user, other_user, settings):
    jobs = [make_job(other_user, priority=priority) for priority in ("low", "normal", "high") * 4]
    now_s = time.time()

    with CaptureQueriesContext(connection) as queries:
        for poll in range(3):
            places = [position(job, now_s + poll * 0.5) for job in jobs]

    assert len(queries) == 1
    assert places == [9, 5, 1, 10, 6, 2, 11, 7, 3, 12, 8, 4]


def test_the_place_is_at_most_the_lines_age_old(user, other_user, settings, django_assert_num_queries):
    settings.QUEUE_LINE_MAX_AGE_S = 2.0
    mine = make_job(user, priority="normal")
    now_s = time.time()
    assert position(mine, now_s) == 1

    make_job(other_user, priority="high")  # served first, but not yet in the line's snapshot
    with django_assert_num_queries(0):
        assert position(mine, now_s + 1.9) == 1
    with django_assert_num_queries(1):
        assert position(mine, now_s + 2.0) == 2


def test_while_another_request_builds_the_line_the_older_one_answers(
    user, other_user, django_assert_num_queries
):
    mine = make_job(user, priority="low")
    now_s = time.time()
    assert position(mine, now_s) == 1
    make_job(other_user, priority="normal")
    state_client().set("queue-line:claim", 1)  # as a request building it would hold it

    with django_assert_num_queries(0):
        assert position(mine, now_s + 60) == 1

    state_client().delete("queue-line:claim")
    assert position(mine, now_s + 60) == 2


def test_a_job_newer_than_the_lines_snapshot_has_all_of_it_ahead(user, other_user):
    make_job(other_user, priority="high")
    make_job(other_user, priority="normal")
    now_s = time.time()
    assert position(make_job(other_user, priority="normal"), now_s) == 3

    late = make_job(user, priority="normal")

    assert position(late, now_s + 0.1) == 4  # the snapshot's high and its three normal ones


def test_beyond_the_exact_head_of_the_line_the_place_is_short_by_less_than_a_step(user, monkeypatch):
    monkeypatch.setattr(queue_line, "QUEUE_LINE_EXACT", 3)
    monkeypatch.setattr(queue_line, "QUEUE_LINE_STEP", 4)
    jobs = [make_job(user, priority="normal") for _ in range(10)]
    now_s = time.time()

    places = [position(job, now_s) for job in jobs]

    # Exact for the first three and the 4th; beyond, the place after the last job kept
    # before it (every 4th: the 4th, the 8th), so exact again for the 5th and the 9th.
    assert places == [1, 2, 3, 4, 5, 5, 5, 5, 9, 9]
    assert all(0 <= true - found < 4 for true, found in zip(range(1, 11), places, strict=True))


def test_a_snapshot_of_another_shape_is_built_again(user, other_user):
    # As an older version of the snapshot, without the recent completions.
    state_client().set("queue-line:meta", '{"built_s": 0, "totals": {"high": 7}}')
    make_job(other_user, priority="high")
    mine = make_job(user, priority="normal")

    assert position(mine, time.time()) == 2


def test_without_hot_state_the_status_of_a_queued_job_leaves_its_place_out(api_client, user, redis_down):
    job = make_job(user, priority="high")

    data = status_of(api_client, job)

    assert (data["status"], data["job_id"]) == ("queued", job.job_id)
    assert "queue_position" not in data
    assert "estimated_time" not in data


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
