"""The old `POST /download/start` through DRF's test client, in process: what it answers
without the ASGI wait in front of it (202 at once, 302 for a file already there, the
errors), its deprecation headers, its retirement, the sticky share of users moved at once,
and the counts of its callers. The wait itself, through a real uvicorn and worker, is in
tests/legacy/test_wait.py. The broker send is the one fake (`dispatched`)."""

from datetime import timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.utils import timezone
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from jobs.models import DownloadJob, Status
from legacy import policy
from legacy.models import LegacyCaller
from tests.factories import make_job
from tests.support.files import served_bytes

START = "/download/start"


def legacy_count(outcome: str) -> float:
    return REGISTRY.get_sample_value("download_legacy_requests_total", {"outcome": outcome}) or 0.0


def assert_deprecated(response: Any, settings: Any) -> None:
    assert response["Deprecation"] == f"@{int(settings.LEGACY_DEPRECATED_AT.timestamp())}"
    assert parsedate_to_datetime(response["Sunset"]) == settings.LEGACY_SUNSET_AT
    assert '</v1/download/initiate>; rel="successor-version"' in response["Link"]
    assert f'<{settings.LEGACY_MIGRATION_URL}>; rel="deprecation"' in response["Link"]


def test_a_start_without_the_wait_answers_202_with_the_new_flow(api_client, user, settings, dispatched):
    response = api_client.post(START, {"file_id": 4242}, format="json", HTTP_USER_AGENT="old-client/1.0")

    assert response.status_code == 202
    data = response.json()["data"]
    job = DownloadJob.objects.get(job_id=data["job_id"])
    assert (job.owner, job.file_id, job.status) == (user, 4242, Status.QUEUED)
    assert data["status"] == "queued"
    assert data["polling_interval"] == settings.JOB_POLLING_INTERVAL_MS
    assert data["websocket_url"].startswith(f"ws://testserver/v1/download/subscribe/{job.job_id}?ticket=")
    assert response["Location"] == f"/v1/download/status/{job.job_id}"
    assert response["Retry-After"] == str(-(-settings.JOB_POLLING_INTERVAL_MS // 1000))
    assert "X-Downloads-Legacy-Wait" not in response
    assert_deprecated(response, settings)


def test_the_marker_of_the_asgi_wait_gets_the_job_and_owner_back_and_no_count_yet(
    api_client, user, settings, dispatched
):
    """The marker is the ASGI wait's (legacy/wait.py), which removes any
    client's; a request that has it gets the job id back and no count yet."""
    before = legacy_count(policy.ACCEPTED)

    response = api_client.post(START, {"file_id": 4242}, format="json", HTTP_X_DOWNLOADS_LEGACY_WAIT="1")

    assert response.status_code == 202
    assert response["X-Downloads-Legacy-Wait"] == f"{response.json()['data']['job_id']} {user.pk}"
    assert legacy_count(policy.ACCEPTED) == before
    assert not LegacyCaller.objects.exists()


def test_the_202_carries_initiates_own_body(api_client, dispatched):
    """One body for both: a replay of initiate's `Idempotency-Key` on the old endpoint
    answers the data initiate answered, field for field (the ticket aside, minted anew)."""
    initiated = api_client.post(
        "/v1/download/initiate", {"file_id": 4242}, format="json", HTTP_IDEMPOTENCY_KEY="k-same"
    )
    started = api_client.post(START, {"file_id": 4242}, format="json", HTTP_IDEMPOTENCY_KEY="k-same")

    assert (initiated.status_code, started.status_code) == (200, 202)
    new, old = initiated.json()["data"], started.json()["data"]
    assert new.keys() == old.keys()
    assert {**old, "websocket_url": None} == {**new, "websocket_url": None}
    assert old["websocket_url"].partition("?")[0] == new["websocket_url"].partition("?")[0]


def test_a_file_already_stored_is_a_302_to_a_fresh_link(
    api_client, user, local_storage, settings, dispatched
):
    settings.JOB_REUSE = "owner"
    done = make_job(user, file_id=4343, status=Status.COMPLETED, attempts=1, file_name="report.pdf")
    done.storage_key = f"downloads/{user.pk}/{done.job_id}-1"
    storages["downloads"].save(done.storage_key, ContentFile(b"%PDF"))
    done.file_size_bytes, done.content_type, done.sha256 = 4, "application/pdf", "0" * 64
    done.completed_at = timezone.now()
    done.expires_at = timezone.now() + timedelta(days=1)
    done.save()

    response = api_client.post(START, {"file_id": 4343}, format="json")

    assert response.status_code == 302
    assert response["Location"].startswith("http://testserver/files/")
    assert_deprecated(response, settings)
    file = APIClient().get(response["Location"])
    assert file.status_code == 200
    assert served_bytes(file) == b"%PDF"


@pytest.mark.parametrize("ended", [Status.FAILED, Status.CANCELLED])
def test_the_answer_for_a_job_that_ended_is_the_new_apis_error(api_client, user, settings, ended):
    job = make_job(user, status=ended, attempts=1, error_code="FILE_NOT_FOUND")

    response = api_client.get(f"{START}/{job.job_id}")

    assert response.status_code == 409
    assert response.json() == {
        "success": False,
        "error": {
            "code": "JOB_NOT_READY",
            "message": f"Download will not be ready: the job is {ended}",
            "status": ended,
        },
    }
    assert response.json() == api_client.get(f"/v1/download/{job.job_id}").json()
    assert_deprecated(response, settings)


def test_the_answer_for_a_running_job_is_the_202(api_client, user, settings):
    job = make_job(user, status=Status.PROCESSING, attempts=1)

    response = api_client.get(f"{START}/{job.job_id}")

    assert response.status_code == 202
    assert response["Location"] == f"/v1/download/status/{job.job_id}"


def test_another_users_job_is_not_found(api_client, other_user):
    job = make_job(other_user, status=Status.COMPLETED, attempts=1)

    assert api_client.get(f"{START}/{job.job_id}").status_code == 404


@pytest.mark.parametrize(
    ("body", "status_code", "code"),
    [
        ({}, 400, "VALIDATION_ERROR"),
        ({"file_id": 0}, 400, "VALIDATION_ERROR"),
        ({"file_id": "x"}, 400, "VALIDATION_ERROR"),
    ],
)
def test_bad_input_is_refused_as_initiate_refuses_it_and_creates_nothing(
    api_client, settings, dispatched, body, status_code, code
):
    response = api_client.post(START, body, format="json")

    assert response.status_code == status_code
    assert response.json()["error"]["code"] == code
    assert not DownloadJob.objects.exists()
    assert dispatched == []
    assert_deprecated(response, settings)


def test_no_credentials_is_401_with_the_deprecation_headers(settings):
    response = APIClient().post(START, {"file_id": 1}, format="json")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "UNAUTHENTICATED"
    assert_deprecated(response, settings)


@pytest.mark.parametrize("retire", ["disabled", "past-sunset"])
def test_a_retired_endpoint_is_410_with_its_successor_and_creates_nothing(
    api_client, settings, dispatched, retire
):
    if retire == "disabled":
        settings.LEGACY_ENABLED = False
    else:
        settings.LEGACY_SUNSET_AT = timezone.now() - timedelta(seconds=1)

    response = api_client.post(START, {"file_id": 4242}, format="json")

    assert response.status_code == 410
    assert response.json() == {
        "success": False,
        "error": {
            "code": "ENDPOINT_RETIRED",
            "message": "POST /download/start was retired: use POST /v1/download/initiate",
            "successor": "/v1/download/initiate",
            "documentation": settings.LEGACY_MIGRATION_URL,
        },
    }
    assert '</v1/download/initiate>; rel="successor-version"' in response["Link"]
    assert not DownloadJob.objects.exists()
    assert dispatched == []


def test_an_idempotent_retry_gets_the_same_job(api_client, dispatched):
    first = api_client.post(START, {"file_id": 4242}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    again = api_client.post(START, {"file_id": 4242}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")

    assert first.json()["data"]["job_id"] == again.json()["data"]["job_id"]
    assert DownloadJob.objects.count() == 1


def test_a_replay_is_counted_against_the_initiate_rate(api_client, settings, dispatched):
    """Each replay of the old endpoint runs a whole wait again: it takes from the rate."""
    settings.JOB_INITIATE_RATE = "2/minute"
    first = api_client.post(START, {"file_id": 4242}, format="json", HTTP_IDEMPOTENCY_KEY="k-2")
    again = api_client.post(START, {"file_id": 4242}, format="json", HTTP_IDEMPOTENCY_KEY="k-2")

    third = api_client.post(START, {"file_id": 4242}, format="json", HTTP_IDEMPOTENCY_KEY="k-2")

    assert (first.status_code, again.status_code) == (202, 202)
    assert third.status_code == 429
    assert third.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert third["RateLimit-Remaining"] == "0"
    assert DownloadJob.objects.count() == 1


def test_initiates_own_replays_still_take_nothing_from_the_rate(api_client, settings, dispatched):
    settings.JOB_INITIATE_RATE = "1/minute"
    for _ in range(3):
        response = api_client.post(
            "/v1/download/initiate", {"file_id": 1}, format="json", HTTP_IDEMPOTENCY_KEY="k-3"
        )
        assert response.status_code == 200


# --- the gradual move: LEGACY_ASYNC_PERCENT -------------------------------------------------


@pytest.mark.parametrize("percent", [0, 10, 50, 100])
def test_the_share_moved_at_once_is_the_setting_over_a_thousand_users(settings, percent):
    settings.LEGACY_ASYNC_PERCENT = percent

    moved = sum(policy.moved_at_once(user_id) for user_id in range(1, 1001))
    spread = sum(policy.moved_at_once(user_id) for user_id in range(1, 1_000_000, 997))  # ids with gaps

    assert abs(moved - 10 * percent) <= 10  # within 1 % of the setting
    assert abs(spread / 1004 - percent / 100) <= 0.02


def test_a_user_stays_on_the_same_side_and_a_higher_percentage_only_adds_users(settings):
    settings.LEGACY_ASYNC_PERCENT = 10
    at_10 = {user_id for user_id in range(1, 1001) if policy.moved_at_once(user_id)}
    assert at_10 == {user_id for user_id in range(1, 1001) if policy.moved_at_once(user_id)}
    settings.LEGACY_ASYNC_PERCENT = 50
    at_50 = {user_id for user_id in range(1, 1001) if policy.moved_at_once(user_id)}

    assert at_10 < at_50


def test_a_moved_user_gets_the_202_at_once_even_with_the_wait_in_front(
    api_client, user, settings, dispatched
):
    settings.LEGACY_ASYNC_PERCENT = 100
    before = legacy_count(policy.MOVED)

    response = api_client.post(START, {"file_id": 4242}, format="json", HTTP_X_DOWNLOADS_LEGACY_WAIT="1")

    assert response.status_code == 202
    assert "X-Downloads-Legacy-Wait" not in response
    assert legacy_count(policy.MOVED) == before + 1


# --- who still calls it --------------------------------------------------------------------


def test_every_answer_is_counted_per_user_and_user_agent(api_client, user, other_user, settings, dispatched):
    before = {outcome: legacy_count(outcome) for outcome in policy.OUTCOMES}
    for _ in range(2):
        api_client.post(START, {"file_id": 4242}, format="json", HTTP_USER_AGENT="old-client/1.0")
    api_client.post(START, {}, format="json", HTTP_USER_AGENT="old-client/1.0")
    api_client.post(START, {"file_id": 4242}, format="json", HTTP_USER_AGENT="curl/8")
    settings.LEGACY_ENABLED = False
    api_client.post(START, {"file_id": 4242}, format="json", HTTP_USER_AGENT="curl/8")

    callers = {
        caller.user_agent: (caller.calls, caller.accepted, caller.refused, caller.gone)
        for caller in LegacyCaller.objects.filter(user=user)
    }
    assert callers == {"old-client/1.0": (3, 2, 1, 0), "curl/8": (2, 1, 0, 1)}
    first = LegacyCaller.objects.get(user=user, user_agent="old-client/1.0")
    assert first.first_seen <= first.last_seen
    deltas = {outcome: legacy_count(outcome) - before[outcome] for outcome in policy.OUTCOMES}
    assert deltas == {**dict.fromkeys(policy.OUTCOMES, 0.0), "accepted": 3.0, "refused": 1.0, "gone": 1.0}


def test_the_admin_lists_the_legacy_callers(admin_client, user, dispatched):
    client = APIClient()
    client.force_authenticate(user)
    client.post(START, {"file_id": 4242}, format="json", HTTP_USER_AGENT="old-client/1.0")

    page = admin_client.get("/admin/legacy/legacycaller/")

    assert page.status_code == 200
    html = page.content.decode()
    assert "Legacy callers" in html
    assert "alice" in html
    assert "old-client/1.0" in html
    assert "202 waited 1" in html


def test_a_user_agent_longer_than_its_column_is_cut_not_refused(api_client, dispatched):
    response = api_client.post(START, {"file_id": 4242}, format="json", HTTP_USER_AGENT="x" * 1000)

    assert response.status_code == 202
    assert LegacyCaller.objects.get().user_agent == "x" * 255


def test_a_users_agents_past_the_bound_are_counted_in_one_row(api_client, user, settings, dispatched):
    settings.LEGACY_CALLER_AGENTS_PER_USER = 3
    settings.JOB_INITIATE_RATE = "100/minute"
    settings.JOB_MAX_ACTIVE_PER_USER = 100
    for n in range(30):
        response = api_client.post(START, {"file_id": 4242}, format="json", HTTP_USER_AGENT=f"agent/{n}")
        assert response.status_code == 202
    api_client.post(START, {"file_id": 4242}, format="json", HTTP_USER_AGENT="agent/1")

    rows = {caller.user_agent: caller.calls for caller in LegacyCaller.objects.filter(user=user)}
    assert rows == {"agent/0": 1, "agent/1": 2, "agent/2": 1, policy.OTHER_AGENTS: 27}


def test_the_answer_after_the_wait_is_counted_only_when_the_wait_asks_for_it(api_client, user):
    """GET /download/start/<job_id> is the ASGI wait's second half. Any other GET of it (a
    page of another site sending a signed-in browser there, say) is answered but not
    counted: a client cannot send the wait's marker."""
    job = make_job(user, file_id=4545, status=Status.PROCESSING)
    before = legacy_count(policy.ACCEPTED)

    cross_site = api_client.get(f"{START}/{job.job_id}", HTTP_SEC_FETCH_SITE="cross-site")
    direct = api_client.get(f"{START}/{job.job_id}")

    assert (cross_site.status_code, direct.status_code) == (202, 202)
    assert legacy_count(policy.ACCEPTED) == before
    assert not LegacyCaller.objects.exists()

    waited = api_client.get(f"{START}/{job.job_id}", HTTP_X_DOWNLOADS_LEGACY_WAIT="1")

    assert waited.status_code == 202
    assert legacy_count(policy.ACCEPTED) == before + 1
    assert LegacyCaller.objects.get(user=user).accepted == 1


def test_counting_never_fails_the_answer(api_client, monkeypatch, dispatched):
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("database gone")

    monkeypatch.setattr(LegacyCaller.objects, "filter", broken)

    assert api_client.post(START, {"file_id": 4242}, format="json").status_code == 202
