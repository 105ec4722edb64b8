"""Polling from the job's card: the status answer from hot-state Redis is the answer the
row gives, field by field, through every state change the services make; a warm poll
costs no database query; the card falls back to the row when Redis cannot answer; a
revoked token's cached user is refused at once."""

import dataclasses
import io
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from rest_framework.test import APIClient

from jobs import hotstate, selectors, services
from jobs.errors import ErrorCode, JobError
from jobs.hotstate import HotProgress, JobCard
from jobs.models import ACTIVE_STATUSES, ApiKey, DownloadJob, Status
from jobs.services import attempt
from jobs.services.attempt_hooks import AttemptHooks
from jobs.transfer.staging import StagedFile

pytestmark = pytest.mark.django_db

CaptureOnCommit = Callable[..., AbstractContextManager[Any]]
NOW = datetime(2026, 6, 1, 12, 0, 0, 123456, tzinfo=timezone.get_current_timezone())


@pytest.fixture(autouse=True)
def _frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """`estimated_completion` is computed from the clock: both paths read the same one."""
    monkeypatch.setattr(selectors, "timezone", SimpleNamespace(now=lambda: NOW))


def status_path(job_id: str) -> str:
    return f"/v1/download/status/{job_id}"


def answer_from_the_row(job_id: str) -> dict[str, Any]:
    """The status answer as it was made before cards: the row, merged with the hot progress
    (and a queued job's place in line, which the view adds)."""
    job = DownloadJob.objects.get(job_id=job_id)
    hot = selectors.download_job_hot([job]).get(job_id)
    data = selectors.download_job_status(job=job, hot=hot) | selectors.download_job_queue_place(job=job)
    return {"success": True, "data": data}


def polled(client: APIClient, job_id: str) -> dict[str, Any]:
    """The status answer, without the socket URL that the view adds for an active job (its
    ticket is new in every answer; neither the card nor the row holds it)."""
    response = client.get(status_path(job_id))
    assert response.status_code == 200, response.content
    body: dict[str, Any] = response.json()
    websocket_url = body["data"].pop("websocket_url", None)
    assert (websocket_url is not None) == (body["data"]["status"] in ACTIVE_STATUSES), body
    return body


def assert_card_answers_as_the_row(client: APIClient, job_id: str) -> dict[str, Any]:
    """Two polls (the first may fill the card, the second reads it) both equal the row's answer."""
    expected = answer_from_the_row(job_id)
    assert polled(client, job_id) == expected
    assert hotstate.card_read(job_id)[0] is not None
    assert polled(client, job_id) == expected
    return expected["data"]


# --- every status, field by field ------------------------------------------------------------


def _fields_by_status(owner: User) -> Iterator[dict[str, Any]]:
    started = NOW - timedelta(seconds=30)
    yield {"status": Status.QUEUED}
    yield {
        "status": Status.QUEUED,
        "attempts": 1,
        "next_retry_at": NOW + timedelta(seconds=7),
        "error_code": ErrorCode.NETWORK_ERROR,
        "error_message": "The origin reset the connection",
        "error_retryable": True,
    }
    yield {
        "status": Status.PROCESSING,
        "attempts": 2,
        "started_at": started,
        "progress": 10,
        "bytes_done": 10_000,
        "bytes_total": 100_000,
    }
    yield {"status": Status.PROCESSING, "attempts": 1, "started_at": started}  # size not known yet
    yield {
        "status": Status.COMPLETED,
        "attempts": 1,
        "started_at": started,
        "completed_at": NOW,
        "progress": 100,
        "bytes_done": 4096,
        "bytes_total": 4096,
        "expires_at": NOW + timedelta(days=1),
        "file_name": "report \u00e9t\u00e9.pdf",
        "file_size_bytes": 4096,
        "storage_key": "downloads/x/y-1",
        "sha256": "0" * 64,
    }
    yield {
        "status": Status.FAILED,
        "attempts": 3,
        "error_code": ErrorCode.FILE_NOT_FOUND,
        "error_message": "File 70000 not found",
        "error_retryable": False,
    }
    yield {"status": Status.CANCELLED, "attempts": 1, "progress": 40, "bytes_done": 40, "bytes_total": 100}
    yield {"status": Status.EXPIRED, "expires_at": NOW - timedelta(hours=1), "file_name": "gone.bin"}


@pytest.mark.parametrize("case", range(8))
def test_the_card_answers_every_status_as_the_row_does(api_client: APIClient, user: User, case: int) -> None:
    fields = list(_fields_by_status(user))[case]
    job = DownloadJob.objects.create(owner=user, file_id=70000, **fields)
    if job.status == Status.PROCESSING:
        progress = HotProgress(attempt=job.attempts, bytes_done=55_000, bytes_total=100_000, progress=55)
        hotstate.progress_write(job_id=job.job_id, progress=progress)
    assert_card_answers_as_the_row(api_client, job.job_id)


def test_hot_progress_of_an_older_attempt_is_not_shown(api_client: APIClient, user: User) -> None:
    job = DownloadJob.objects.create(
        owner=user, file_id=1, status=Status.PROCESSING, attempts=3, progress=7, bytes_done=7, bytes_total=100
    )
    hotstate.progress_write(job_id=job.job_id, progress=HotProgress(2, 90, 100, 90))
    data = assert_card_answers_as_the_row(api_client, job.job_id)
    assert data["progress"] == 7


# --- the services keep the card true --------------------------------------------------------


def test_the_card_follows_every_state_change_of_the_services(
    api_client: APIClient,
    user: User,
    dispatched: list[dict[str, Any]],
    local_storage: Any,
    settings: Any,
    django_capture_on_commit_callbacks: CaptureOnCommit,
) -> None:
    """Each step is polled (so a card is there) before the next write: a card that the
    write did not replace would answer the old state."""

    def step(action: Callable[[], Any]) -> None:
        with django_capture_on_commit_callbacks(execute=True):
            action()

    def check(status: str) -> dict[str, Any]:
        data = assert_card_answers_as_the_row(api_client, job_id)
        assert data["status"] == status
        return data

    response = api_client.post("/v1/download/initiate", {"file_id": 4242}, format="json")
    job_id = response.json()["data"]["job_id"]
    pk = DownloadJob.objects.get(job_id=job_id).pk
    check(Status.QUEUED)

    def job() -> DownloadJob:
        return DownloadJob.objects.get(pk=pk)

    step(lambda: services.download_job_start(job_pk=pk, task_id="t1"))
    check(Status.PROCESSING)
    # The attempt's throttled row write (heartbeat and progress) changes updated_at.
    hooks = AttemptHooks(job())
    step(lambda: hooks._write_row(progress=30, bytes_done=30, bytes_total=100))
    assert check(Status.PROCESSING)["progress"] == 30
    # A retryable failure queues it again, with the error and the time of the retry.
    step(lambda: attempt.attempt_fail(job(), attempt=1, error=JobError(ErrorCode.NETWORK_ERROR, "reset")))
    assert check(Status.QUEUED)["error"]["code"] == ErrorCode.NETWORK_ERROR
    step(lambda: services.download_job_cancel(job=job()))
    check(Status.CANCELLED)
    step(lambda: services.download_job_retry(job=job()))
    check(Status.QUEUED)
    step(lambda: services.download_job_start(job_pk=pk, task_id="t2"))
    check(Status.PROCESSING)
    local_storage.save(f"downloads/{user.pk}/{job_id}-2", io.BytesIO(b"x" * 10))
    staged = StagedFile(
        key=f"downloads/{user.pk}/{job_id}-2", file_name="f.bin", content_type="", size=10, sha256="a" * 64
    )
    step(lambda: services.download_job_complete(job=job(), attempt=2, staged=staged))
    assert check(Status.COMPLETED)["file_size"] == 10
    # Another request for the same file completes at once from the stored one (reuse).
    reused_id = api_client.post("/v1/download/initiate", {"file_id": 4242}, format="json").json()["data"][
        "job_id"
    ]
    assert assert_card_answers_as_the_row(api_client, reused_id)["status"] == Status.COMPLETED
    # Retention: both expire, the file with them.
    step(
        lambda: services.download_jobs_expire(
            now=timezone.now() + timedelta(seconds=settings.JOB_RETENTION_S + 1)
        )
    )
    check(Status.EXPIRED)
    assert assert_card_answers_as_the_row(api_client, reused_id)["status"] == Status.EXPIRED


def test_a_card_is_replaced_only_by_a_newer_version(user: User) -> None:
    job = DownloadJob.objects.create(owner=user, file_id=1, status=Status.CANCELLED, version=7)
    newer = JobCard.of(job)
    older = dataclasses.replace(newer, version=6, status=Status.PROCESSING)
    assert hotstate.card_write(newer)
    assert not hotstate.card_write(older)  # a late copy of an older state
    assert not hotstate.card_write(newer)  # the same version: nothing to replace
    assert hotstate.card_read(job.job_id)[0] == newer


def test_a_write_drops_the_card_before_it_commits(user: User) -> None:
    """Until the write commits (and the new card is written), a poll reads the row."""
    job = DownloadJob.objects.create(owner=user, file_id=1)
    hotstate.card_write(JobCard.of(job))
    services.download_job_cancel(job=job)  # inside the test's transaction: never commits
    assert hotstate.card_read(job.job_id)[0] is None


# --- cost and fallbacks ---------------------------------------------------------------------


def test_a_warm_poll_makes_no_database_query(
    api_client: APIClient, user: User, django_assert_num_queries: Callable[..., AbstractContextManager[Any]]
) -> None:
    job = DownloadJob.objects.create(owner=user, file_id=1, status=Status.PROCESSING, attempts=1)
    polled(api_client, job.job_id)  # fills the token cache and the card
    with django_assert_num_queries(0):
        assert polled(api_client, job.job_id)["data"]["status"] == Status.PROCESSING


def test_another_users_job_is_not_found_from_the_card(
    api_client: APIClient, other_client: APIClient, user: User
) -> None:
    job = DownloadJob.objects.create(owner=user, file_id=1)
    polled(api_client, job.job_id)  # the card is there
    response = other_client.get(status_path(job.job_id))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "JOB_NOT_FOUND"


def test_status_is_read_from_the_row_when_redis_cannot_answer(
    api_client: APIClient, user: User, redis_down: None
) -> None:
    job = DownloadJob.objects.create(owner=user, file_id=1, status=Status.QUEUED)
    assert polled(api_client, job.job_id) == answer_from_the_row(job.job_id)


# --- the token's cached user ---------------------------------------------------------------


def test_a_deleted_token_is_refused_at_once(api_client: APIClient, user: User) -> None:
    job = DownloadJob.objects.create(owner=user, file_id=1)
    polled(api_client, job.job_id)  # the token's user is cached
    ApiKey.objects.filter(user=user).delete()
    assert api_client.get(status_path(job.job_id)).status_code == 401


def test_a_deactivated_user_is_refused_at_once(api_client: APIClient, user: User) -> None:
    job = DownloadJob.objects.create(owner=user, file_id=1)
    polled(api_client, job.job_id)
    user.is_active = False
    user.save()
    assert api_client.get(status_path(job.job_id)).status_code == 401
