"""The REST API of docs/api.md through DRF's test client, in process: exact status codes and
JSON bodies. The broker send is the one fake (`dispatched`): the real worker path is
covered end to end by test_e2e."""

import json
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.storage import Storage
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from jobs import hotstate
from jobs.hotstate import HotProgress
from jobs.models import DownloadJob, Status
from jobs.transfer.origins.http import name_from_disposition  # RFC 6266: filename* first
from tests.factories import api_key_for, make_job
from tests.support.files import served_bytes

INITIATE = "/v1/download/initiate"
LIST = "/v1/downloads"
JOB_ID = re.compile(r"^job_[0-9a-f]{24,}$")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def status_url(job_id: str) -> str:
    return f"/v1/download/status/{job_id}"


def job_url(job_id: str) -> str:
    return f"/v1/download/{job_id}"


def z(value: datetime) -> str:
    """A timestamp as docs/api.md writes it: UTC, milliseconds, `Z`."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def pop_websocket_url(data: dict[str, Any], job_id: str, *, base: str = "ws://testserver") -> str:
    """Takes out the socket URL that initiate and an active job's status carry (its ticket,
    jobs/tickets.py, is new in every answer) after checking where it points."""
    url: str = data.pop("websocket_url")
    assert url.startswith(f"{base}/v1/download/subscribe/{job_id}?ticket="), url
    return url


def error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"success": False, "error": {"code": code, "message": message, **extra}}


# --- envelope and authentication -----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("post", INITIATE),
        ("get", LIST),
        ("get", status_url("job_" + "0" * 32)),
        ("get", job_url("job_" + "0" * 32)),
        ("delete", job_url("job_" + "0" * 32)),
    ],
)
def test_no_credentials_is_401_unauthenticated(db, method, url):
    response = getattr(APIClient(), method)(url, {"file_id": 1}, format="json")

    assert response.status_code == 401
    assert response.json() == error("UNAUTHENTICATED", "Authentication credentials were not provided.")
    assert response["WWW-Authenticate"] == 'Bearer realm="api", Token realm="api"'
    assert DownloadJob.objects.count() == 0


def test_bad_token_is_401_unauthenticated(db):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")

    response = client.get(LIST)

    assert response.status_code == 401
    assert response.json() == error("UNAUTHENTICATED", "Invalid token.")


def test_session_authentication_works(user, dispatched):
    client = APIClient()
    assert client.login(username="alice", password="alice-password")

    response = client.post(INITIATE, {"file_id": 70000}, format="json")

    assert response.status_code == 200
    job = DownloadJob.objects.get()
    assert job.owner == user
    assert client.get(LIST).json()["data"]["results"][0]["job_id"] == job.job_id


def test_session_post_without_csrf_token_is_refused(user):
    client = APIClient(enforce_csrf_checks=True)
    assert client.login(username="alice", password="alice-password")

    response = client.post(INITIATE, {"file_id": 70000}, format="json")

    assert response.status_code == 403
    assert response.json() == error("PERMISSION_DENIED", "CSRF Failed: CSRF cookie not set.")
    assert DownloadJob.objects.count() == 0


def test_unknown_v1_path_answers_the_json_envelope(api_client):
    response = api_client.get("/v1/nothing-here")

    assert response.status_code == 404
    assert response.json() == error("NOT_FOUND", "Not found")


def test_wrong_method_answers_the_json_envelope(api_client):
    response = api_client.get(INITIATE)

    assert response.status_code == 405
    assert response.json() == error("METHOD_NOT_ALLOWED", 'Method "GET" not allowed.')


def test_the_subscribe_url_over_plain_http_answers_426_in_the_envelope(api_client):
    response = api_client.get("/v1/download/subscribe/job_0123456789abcdef01234567")

    assert response.status_code == 426
    assert response["Upgrade"] == "websocket"
    assert response.json() == error("UPGRADE_REQUIRED", "Connect to this URL with a WebSocket")


# --- POST /v1/download/initiate ------------------------------------------------------------


def test_initiate_creates_a_queued_job_and_dispatches_it_on_commit(
    api_client, user, dispatched, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post(
            INITIATE,
            {"file_id": 70000, "priority": "high", "metadata": {"source": "test", "n": [1, 2]}},
            format="json",
        )

    assert response.status_code == 200
    job = DownloadJob.objects.get()
    assert JOB_ID.match(job.job_id)
    body = response.json()
    pop_websocket_url(body["data"], job.job_id)
    assert body == {
        "success": True,
        "data": {"job_id": job.job_id, "status": "queued", "estimated_time": 60, "polling_interval": 2000},
    }
    assert (job.owner, job.file_id, job.priority, job.status) == (user, 70000, "high", "queued")
    assert job.metadata == {"source": "test", "n": [1, 2]}
    assert (job.attempts, job.max_attempts, job.idempotency_key) == (0, 3, "")
    assert dispatched == [{"args": (job.pk,), "queue": "downloads.high", "countdown": 0}]


def test_initiate_defaults_priority_normal_and_metadata_empty(api_client, dispatched):
    response = api_client.post(INITIATE, {"file_id": 1}, format="json")

    assert response.status_code == 200
    job = DownloadJob.objects.get()
    assert (job.file_id, job.priority, job.metadata) == (1, "normal", {})


def test_initiate_accepts_the_largest_file_id(api_client, dispatched):
    response = api_client.post(INITIATE, {"file_id": 2**63 - 1}, format="json")

    assert response.status_code == 200
    assert DownloadJob.objects.get().file_id == 2**63 - 1


def test_initiate_job_ids_are_distinct(api_client, dispatched):
    ids = {
        api_client.post(INITIATE, {"file_id": 1}, format="json").json()["data"]["job_id"] for _ in range(3)
    }

    assert len(ids) == 3
    assert all(JOB_ID.match(job_id) for job_id in ids)


def test_initiate_websocket_url_uses_the_request_host(api_client, settings, dispatched):
    settings.ALLOWED_HOSTS = ["downloads.example.com"]

    response = api_client.post(
        INITIATE, {"file_id": 1}, format="json", HTTP_HOST="downloads.example.com:8443"
    )

    job_id = response.json()["data"]["job_id"]
    pop_websocket_url(response.json()["data"], job_id, base="ws://downloads.example.com:8443")


def test_initiate_websocket_url_is_wss_over_tls(api_client, dispatched):
    response = api_client.post(INITIATE, {"file_id": 1}, format="json", secure=True)

    job_id = response.json()["data"]["job_id"]
    pop_websocket_url(response.json()["data"], job_id, base="wss://testserver")


def test_initiate_trusts_x_forwarded_proto_only_when_configured(api_client, settings, dispatched):
    proxied = {"HTTP_HOST": "localhost", "HTTP_X_FORWARDED_PROTO": "https"}
    untrusted = api_client.post(INITIATE, {"file_id": 1}, format="json", **proxied)
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    trusted = api_client.post(INITIATE, {"file_id": 1}, format="json", **proxied)

    assert untrusted.json()["data"]["websocket_url"].startswith("ws://localhost/")
    assert trusted.json()["data"]["websocket_url"].startswith("wss://localhost/")


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"file_id": ["This field is required."]}),
        ({"priority": "high"}, {"file_id": ["This field is required."]}),
        ({"file_id": "123"}, {"file_id": ["A JSON integer is required."]}),
        ({"file_id": 12.5}, {"file_id": ["A JSON integer is required."]}),
        ({"file_id": 12.0}, {"file_id": ["A JSON integer is required."]}),
        ({"file_id": True}, {"file_id": ["A JSON integer is required."]}),
        ({"file_id": None}, {"file_id": ["This field may not be null."]}),
        ({"file_id": [1]}, {"file_id": ["A JSON integer is required."]}),
        ({"file_id": 0}, {"file_id": ["Ensure this value is greater than or equal to 1."]}),
        ({"file_id": -1}, {"file_id": ["Ensure this value is greater than or equal to 1."]}),
        (
            {"file_id": 2**63},
            {"file_id": ["Ensure this value is less than or equal to 9223372036854775807."]},
        ),
        (
            {"file_id": 1, "priority": "urgent"},
            {"priority": ['"urgent" is not a valid choice: one of low, normal, high.']},
        ),
        (
            {"file_id": 1, "priority": "HIGH"},
            {"priority": ['"HIGH" is not a valid choice: one of low, normal, high.']},
        ),
        (
            {"file_id": 1, "metadata": ["a"]},
            {"metadata": ['Expected a dictionary of items but got type "list".']},
        ),
        (
            {"file_id": 1, "metadata": "text"},
            {"metadata": ['Expected a dictionary of items but got type "str".']},
        ),
        (
            {"file_id": "x", "priority": "urgent"},
            {
                "file_id": ["A JSON integer is required."],
                "priority": ['"urgent" is not a valid choice: one of low, normal, high.'],
            },
        ),
    ],
)
def test_initiate_validation_error_creates_nothing(
    api_client, body, fields, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        response = api_client.post(INITIATE, body, format="json")

    assert response.status_code == 400
    assert response.json() == error("VALIDATION_ERROR", "Invalid request", fields=fields)
    assert DownloadJob.objects.count() == 0
    assert callbacks == []


def test_initiate_metadata_limit_is_4096_bytes_serialized(api_client, dispatched):
    at_limit = {"k": "x" * 4088}  # {"k":"..."} is 8 bytes + the value
    over_limit = {"k": "x" * 4089}
    multibyte = {"k": "é" * 2045}  # 2053 characters, 4098 bytes in UTF-8

    accepted = api_client.post(INITIATE, {"file_id": 1, "metadata": at_limit}, format="json")
    refused = api_client.post(INITIATE, {"file_id": 1, "metadata": over_limit}, format="json")
    refused_multibyte = api_client.post(INITIATE, {"file_id": 1, "metadata": multibyte}, format="json")

    assert accepted.status_code == 200
    assert DownloadJob.objects.get().metadata == at_limit
    assert refused.status_code == 400
    assert refused.json() == error(
        "VALIDATION_ERROR",
        "Invalid request",
        fields={"metadata": ["Metadata is 4097 bytes serialized; at most 4096 are allowed."]},
    )
    assert refused_multibyte.json()["error"]["fields"] == {
        "metadata": ["Metadata is 4098 bytes serialized; at most 4096 are allowed."]
    }
    assert DownloadJob.objects.count() == 1


@pytest.mark.parametrize("raw", ['{"file_id": 1', "file_id=1", "{'file_id': 1}", '{"file_id": NaN}'])
def test_initiate_malformed_json_is_400(api_client, raw):
    response = api_client.generic("POST", INITIATE, raw, content_type="application/json")

    assert response.status_code == 400
    assert response.json() == error("VALIDATION_ERROR", "Malformed JSON body")
    assert DownloadJob.objects.count() == 0


def test_initiate_empty_body_is_400(api_client):
    response = api_client.generic("POST", INITIATE, "", content_type="application/json")

    assert response.status_code == 400
    assert response.json() == error(
        "VALIDATION_ERROR", "Invalid request", fields={"file_id": ["This field is required."]}
    )
    assert DownloadJob.objects.count() == 0


def test_initiate_json_array_body_is_400(api_client):
    response = api_client.generic(
        "POST", INITIATE, json.dumps([{"file_id": 1}]), content_type="application/json"
    )

    assert response.status_code == 400
    assert response.json() == error(
        "VALIDATION_ERROR",
        "Invalid request",
        fields={"non_field_errors": ["Invalid data. Expected a dictionary, but got list."]},
    )
    assert DownloadJob.objects.count() == 0


def test_initiate_form_body_is_415(api_client):
    response = api_client.post(INITIATE, {"file_id": 1})  # multipart, not JSON

    assert response.status_code == 415
    assert response.json() == error("UNSUPPORTED_MEDIA_TYPE", "Send the body as application/json")
    assert DownloadJob.objects.count() == 0


@pytest.mark.parametrize("claimed", ["other", 999999, ""])
def test_initiate_ignores_user_id_in_the_body(api_client, user, other_user, dispatched, claimed):
    if claimed == "other":
        claimed = str(other_user.pk)

    response = api_client.post(INITIATE, {"file_id": 1, "user_id": claimed}, format="json")

    assert response.status_code == 200
    assert DownloadJob.objects.get().owner == user
    assert other_user.download_jobs.count() == 0


# --- idempotency ---------------------------------------------------------------------------


def test_initiate_same_idempotency_key_returns_the_same_job(
    api_client, dispatched, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        first = api_client.post(INITIATE, {"file_id": 1}, format="json", HTTP_IDEMPOTENCY_KEY="key-1")
        second = api_client.post(INITIATE, {"file_id": 1}, format="json", HTTP_IDEMPOTENCY_KEY="key-1")

    assert first.status_code == second.status_code == 200
    assert first.json()["data"]["job_id"] == second.json()["data"]["job_id"]
    job = DownloadJob.objects.get()
    assert job.idempotency_key == "key-1"
    assert len(dispatched) == 1


def test_initiate_same_idempotency_key_of_another_user_is_another_job(api_client, other_client, dispatched):
    mine = api_client.post(INITIATE, {"file_id": 1}, format="json", HTTP_IDEMPOTENCY_KEY="shared")
    theirs = other_client.post(INITIATE, {"file_id": 1}, format="json", HTTP_IDEMPOTENCY_KEY="shared")

    assert mine.json()["data"]["job_id"] != theirs.json()["data"]["job_id"]
    assert DownloadJob.objects.count() == 2


def test_initiate_idempotency_key_older_than_24_hours_makes_a_new_job(api_client, user, dispatched):
    old = make_job(user, idempotency_key="key-1")
    DownloadJob.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=25))

    response = api_client.post(INITIATE, {"file_id": 1}, format="json", HTTP_IDEMPOTENCY_KEY="key-1")

    assert response.json()["data"]["job_id"] != old.job_id
    old.refresh_from_db()
    assert old.idempotency_key == ""
    assert DownloadJob.objects.get(idempotency_key="key-1").job_id == response.json()["data"]["job_id"]


def test_initiate_idempotent_replay_is_answered_even_at_the_active_limit(api_client, user, dispatched):
    first = api_client.post(INITIATE, {"file_id": 1}, format="json", HTTP_IDEMPOTENCY_KEY="key-1")
    for _ in range(4):
        make_job(user)

    replay = api_client.post(INITIATE, {"file_id": 1}, format="json", HTTP_IDEMPOTENCY_KEY="key-1")

    assert replay.status_code == 200
    assert replay.json()["data"]["job_id"] == first.json()["data"]["job_id"]
    assert DownloadJob.objects.count() == 5


@pytest.mark.parametrize("key", ["k" * 256, "has space", "tab\there", "ünïcode", ""])
def test_initiate_bad_idempotency_key_is_400(api_client, key):
    response = api_client.post(INITIATE, {"file_id": 1}, format="json", HTTP_IDEMPOTENCY_KEY=key)

    assert response.status_code == 400
    assert response.json() == error(
        "VALIDATION_ERROR",
        "Invalid request",
        fields={"Idempotency-Key": ["At most 255 printable ASCII characters without spaces."]},
    )
    assert DownloadJob.objects.count() == 0


def test_initiate_idempotency_key_of_255_characters_is_accepted(api_client, dispatched):
    response = api_client.post(INITIATE, {"file_id": 1}, format="json", HTTP_IDEMPOTENCY_KEY="k" * 255)

    assert response.status_code == 200
    assert DownloadJob.objects.get().idempotency_key == "k" * 255


def token_client(user: User) -> APIClient:
    """A client of its own (the test client keeps state), with the user's token."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_key_for(user)}")
    return client


def concurrently(count: int, request: Any) -> list[Any]:
    """Runs `request()` from `count` threads at once, each with its own connection."""
    barrier = threading.Barrier(count)
    responses: list[Any] = [None] * count

    def one(index: int) -> None:
        try:
            barrier.wait()
            responses[index] = request()
        finally:
            connection.close()

    threads = [threading.Thread(target=one, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return responses


@pytest.mark.django_db(transaction=True)
def test_initiate_concurrent_requests_with_one_idempotency_key_make_one_job(user, settings, dispatched):
    settings.JOB_INITIATE_RATE = settings.JOB_INITIATE_RATE_PER_IP = "100/minute"
    responses = concurrently(
        20,
        lambda: token_client(user).post(INITIATE, {"file_id": 1}, format="json", HTTP_IDEMPOTENCY_KEY="same"),
    )

    assert [response.status_code for response in responses] == [200] * 20
    assert len({response.json()["data"]["job_id"] for response in responses}) == 1
    assert DownloadJob.objects.count() == 1
    assert len(dispatched) == 1


# --- limits --------------------------------------------------------------------------------


def test_initiate_sixth_active_job_is_429(api_client, user, dispatched):
    for _ in range(5):
        assert api_client.post(INITIATE, {"file_id": 1}, format="json").status_code == 200

    response = api_client.post(INITIATE, {"file_id": 1}, format="json")

    assert response.status_code == 429
    assert response.json() == error(
        "RATE_LIMIT_EXCEEDED", "Maximum 5 concurrent downloads per user", retry_after=30
    )
    assert response["Retry-After"] == "30"
    assert DownloadJob.objects.count() == 5


@pytest.mark.django_db(transaction=True)
def test_initiate_concurrent_requests_cannot_pass_the_active_limit_together(user, settings, dispatched):
    settings.JOB_INITIATE_RATE = settings.JOB_INITIATE_RATE_PER_IP = "100/minute"
    responses = concurrently(20, lambda: token_client(user).post(INITIATE, {"file_id": 1}, format="json"))

    assert sorted(response.status_code for response in responses) == [200] * 5 + [429] * 15
    assert DownloadJob.objects.count() == 5
    assert len(dispatched) == 5


@pytest.mark.django_db(transaction=True)
def test_initiate_twenty_concurrent_requests_at_the_default_limits_leave_five_active(user, dispatched):
    responses = concurrently(20, lambda: token_client(user).post(INITIATE, {"file_id": 1}, format="json"))

    codes = [response.json()["error"]["message"] for response in responses if response.status_code == 429]
    assert sorted(response.status_code for response in responses) == [200] * 5 + [429] * 15
    # Ten pass the rate limit of 10/minute; of those, five find the active cap full.
    assert codes.count("Too many download requests") == 10
    assert codes.count("Maximum 5 concurrent downloads per user") == 5
    assert DownloadJob.objects.filter(status__in=["queued", "processing"]).count() == 5


def test_initiate_active_limit_counts_only_the_users_active_jobs(api_client, user, other_user, dispatched):
    make_job(user, status=Status.PROCESSING)
    for _ in range(3):
        make_job(user)
    for status in (Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.EXPIRED):
        make_job(user, status=status)
    for _ in range(5):
        make_job(other_user)

    fifth = api_client.post(INITIATE, {"file_id": 1}, format="json")
    sixth = api_client.post(INITIATE, {"file_id": 1}, format="json")

    assert fifth.status_code == 200
    assert sixth.status_code == 429


def test_initiate_active_limit_is_a_setting(api_client, settings, dispatched):
    settings.JOB_MAX_ACTIVE_PER_USER = 1
    settings.JOB_ACTIVE_LIMIT_RETRY_AFTER_S = 7
    api_client.post(INITIATE, {"file_id": 1}, format="json")

    response = api_client.post(INITIATE, {"file_id": 1}, format="json")

    assert response.status_code == 429
    assert response.json() == error(
        "RATE_LIMIT_EXCEEDED", "Maximum 1 concurrent downloads per user", retry_after=7
    )
    assert response["Retry-After"] == "7"


def test_initiate_rate_per_user_is_429_with_retry_after(api_client, other_client, settings, dispatched):
    settings.JOB_INITIATE_RATE = "2/minute"
    for _ in range(2):
        assert api_client.post(INITIATE, {"file_id": 1}, format="json").status_code == 200

    response = api_client.post(INITIATE, {"file_id": 1}, format="json")

    assert response.status_code == 429
    body = response.json()
    retry_after = body["error"]["retry_after"]
    assert body == error("RATE_LIMIT_EXCEEDED", "Too many download requests", retry_after=retry_after)
    assert 55 <= retry_after <= 60
    assert response["Retry-After"] == str(retry_after)
    assert response["RateLimit-Remaining"] == "0"
    assert DownloadJob.objects.count() == 2
    # The limit is per user: another user from the same address still has room.
    assert other_client.post(INITIATE, {"file_id": 1}, format="json").status_code == 200


def test_initiate_answers_carry_the_ratelimit_headers(api_client, settings, dispatched):
    settings.JOB_INITIATE_RATE = "3/minute"
    settings.JOB_INITIATE_RATE_PER_IP = "100/hour"

    responses = [api_client.post(INITIATE, {"file_id": 1}, format="json") for _ in range(2)]
    invalid = api_client.post(INITIATE, {"file_id": "1"}, format="json")

    assert [r["RateLimit-Remaining"] for r in responses] == ["2", "1"]
    assert {r["RateLimit-Limit"] for r in responses} == {"3"}
    assert 0 < int(responses[1]["RateLimit-Reset"]) <= 60
    assert responses[0]["RateLimit-Policy"] == '3;w=60;comment="user", 100;w=3600;comment="ip"'
    # A request refused for bad input still counts, and still says so.
    assert invalid.status_code == 400
    assert invalid["RateLimit-Remaining"] == "0"


def test_initiate_rate_per_ip_limits_every_user_of_the_address(
    api_client, other_client, settings, dispatched
):
    settings.JOB_INITIATE_RATE_PER_IP = "2/minute"
    assert api_client.post(INITIATE, {"file_id": 1}, format="json").status_code == 200
    assert other_client.post(INITIATE, {"file_id": 1}, format="json").status_code == 200

    refused = other_client.post(INITIATE, {"file_id": 1}, format="json")
    elsewhere = other_client.post(INITIATE, {"file_id": 1}, format="json", REMOTE_ADDR="192.0.2.7")

    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert elsewhere.status_code == 200


def test_initiate_refused_by_one_limit_is_not_counted_by_the_other(api_client, settings, dispatched):
    settings.JOB_INITIATE_RATE = "1/minute"
    settings.JOB_INITIATE_RATE_PER_IP = "2/minute"
    api_client.post(INITIATE, {"file_id": 1}, format="json")
    for _ in range(3):
        assert api_client.post(INITIATE, {"file_id": 1}, format="json").status_code == 429

    # The address spent one of its two: another user from it still gets in.
    other = User.objects.create_user("third")
    assert token_client(other).post(INITIATE, {"file_id": 1}, format="json").status_code == 200


@pytest.mark.parametrize(
    ("header_setting", "headers", "counted_as"),
    [
        # No header configured: a client's X-Forwarded-For is ignored.
        ("", {"HTTP_X_FORWARDED_FOR": "203.0.113.9"}, "127.0.0.1"),
        # Configured: the entry our proxy appended, not the ones the client sent before it.
        ("X-Forwarded-For", {"HTTP_X_FORWARDED_FOR": "6.6.6.6, 203.0.113.9"}, "203.0.113.9"),
        ("X-Real-IP", {"HTTP_X_REAL_IP": "203.0.113.9"}, "203.0.113.9"),
        # Configured but missing or not an address: the peer.
        ("X-Real-IP", {}, "127.0.0.1"),
        ("X-Real-IP", {"HTTP_X_REAL_IP": "not-an-ip"}, "127.0.0.1"),
        # IPv6 is counted per /64.
        ("X-Real-IP", {"HTTP_X_REAL_IP": "2001:db8::1:2:3:4"}, "2001:db8::/64"),
    ],
)
def test_client_ip_comes_from_the_trusted_header_only(settings, rf, header_setting, headers, counted_as):
    from jobs.client_address import client_ip

    settings.CLIENT_IP_HEADER = header_setting

    assert client_ip(rf.post(INITIATE, **headers)) == counted_as


def test_client_ip_skips_as_many_proxies_as_configured(settings, rf):
    from jobs.client_address import client_ip

    settings.CLIENT_IP_HEADER = "X-Forwarded-For"
    settings.CLIENT_IP_PROXY_COUNT = 2
    request = rf.post(INITIATE, HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.9, 10.0.0.2")

    assert client_ip(request) == "203.0.113.9"


def test_initiate_rate_per_ip_behind_a_proxy_counts_each_client(api_client, settings, dispatched):
    settings.CLIENT_IP_HEADER = "X-Real-IP"
    settings.JOB_INITIATE_RATE_PER_IP = "1/minute"

    first = api_client.post(INITIATE, {"file_id": 1}, format="json", HTTP_X_REAL_IP="198.51.100.1")
    second = api_client.post(INITIATE, {"file_id": 1}, format="json", HTTP_X_REAL_IP="198.51.100.2")
    again = api_client.post(INITIATE, {"file_id": 1}, format="json", HTTP_X_REAL_IP="198.51.100.1")

    assert [first.status_code, second.status_code, again.status_code] == [200, 200, 429]


def test_initiate_rate_limits_fail_open_without_redis(api_client, monkeypatch, dispatched):
    from jobs.api import ratelimits

    def unreachable(*args: Any) -> bool:
        raise ConnectionError("redis down")

    monkeypatch.setattr(ratelimits._limiter(), "test", unreachable)

    response = api_client.post(INITIATE, {"file_id": 1}, format="json")

    assert response.status_code == 200
    assert "RateLimit-Remaining" not in response


def test_rate_limit_does_not_limit_reads(api_client, settings, dispatched):
    settings.JOB_INITIATE_RATE = "1/minute"
    api_client.post(INITIATE, {"file_id": 1}, format="json")

    assert [api_client.get(LIST).status_code for _ in range(3)] == [200, 200, 200]


# --- GET /v1/download/status/<job_id> ------------------------------------------------------


def test_status_of_a_queued_job(api_client, user):
    job = make_job(user, priority="low")

    response = api_client.get(status_url(job.job_id))

    assert response.status_code == 200
    body = response.json()
    pop_websocket_url(body["data"], job.job_id)  # active: a socket to open
    assert body == {
        "success": True,
        "data": {
            "job_id": job.job_id,
            "file_id": 70000,
            "priority": "low",
            "status": "queued",
            "progress": 0,
            "created_at": z(job.created_at),
            "updated_at": z(job.updated_at),
            # Next in line; no job completed lately: the default estimate.
            "queue_position": 1,
            "estimated_time": 60,
        },
    }
    assert TIMESTAMP.match(response.json()["data"]["created_at"])


def processing_job(owner: User) -> DownloadJob:
    return make_job(
        owner,
        status=Status.PROCESSING,
        attempts=2,
        started_at=timezone.now() - timedelta(seconds=10),
        progress=10,
        bytes_done=10_000,
        bytes_total=100_000,
    )


def test_status_of_a_processing_job_merges_the_hot_progress_of_its_attempt(api_client, user):
    job = processing_job(user)
    hotstate.progress_write(job_id=job.job_id, progress=HotProgress(2, 25_000, 100_000, 25))

    before = timezone.now()
    data = api_client.get(status_url(job.job_id)).json()["data"]
    after = timezone.now()

    estimated = datetime.fromisoformat(data.pop("estimated_completion"))
    pop_websocket_url(data, job.job_id)
    assert data == {
        "job_id": job.job_id,
        "file_id": 70000,
        "priority": "normal",
        "status": "processing",
        "progress": 25,
        "bytes_done": 25_000,
        "bytes_total": 100_000,
        "created_at": z(job.created_at),
        "updated_at": z(job.updated_at),
    }
    # 10 s for a quarter: 30 s to go.
    assert before + timedelta(seconds=29) <= estimated <= after + timedelta(seconds=31)


def test_status_ignores_hot_progress_of_another_attempt(api_client, user):
    job = processing_job(user)
    hotstate.progress_write(job_id=job.job_id, progress=HotProgress(1, 90_000, 100_000, 90))

    data = api_client.get(status_url(job.job_id)).json()["data"]

    assert (data["progress"], data["bytes_done"], data["bytes_total"]) == (10, 10_000, 100_000)


def test_status_ignores_hot_progress_behind_the_row(api_client, user):
    job = processing_job(user)
    hotstate.progress_write(job_id=job.job_id, progress=HotProgress(2, 5_000, 100_000, 5))

    data = api_client.get(status_url(job.job_id)).json()["data"]

    assert (data["progress"], data["bytes_done"]) == (10, 10_000)


def test_status_of_a_processing_job_without_progress_yet(api_client, user):
    job = make_job(user, status=Status.PROCESSING, attempts=1, started_at=timezone.now())

    data = api_client.get(status_url(job.job_id)).json()["data"]

    assert (data["progress"], data["bytes_done"], data["bytes_total"]) == (0, 0, None)
    assert data["estimated_completion"] is None


def test_status_of_a_completed_job(api_client, user):
    expires_at = timezone.now() + timedelta(hours=24)
    job = make_job(
        user,
        status=Status.COMPLETED,
        attempts=1,
        progress=100,
        bytes_done=1234,
        bytes_total=1234,
        file_size_bytes=1234,
        file_name="report.pdf",
        expires_at=expires_at,
    )

    response = api_client.get(status_url(job.job_id))

    assert response.json() == {
        "success": True,
        "data": {
            "job_id": job.job_id,
            "file_id": 70000,
            "priority": "normal",
            "status": "completed",
            "progress": 100,
            "download_url": f"/v1/download/{job.job_id}",
            "expires_at": z(expires_at),
            "file_name": "report.pdf",
            "file_size": 1234,
            "created_at": z(job.created_at),
            "updated_at": z(job.updated_at),
        },
    }


def test_status_of_a_failed_job_carries_its_error(api_client, user):
    job = make_job(
        user,
        status=Status.FAILED,
        attempts=1,
        error_code="FILE_NOT_FOUND",
        error_message="Origin answered HTTP 404",
        error_retryable=False,
    )

    data = api_client.get(status_url(job.job_id)).json()["data"]

    assert data == {
        "job_id": job.job_id,
        "file_id": 70000,
        "priority": "normal",
        "status": "failed",
        "progress": 0,
        "error": {"code": "FILE_NOT_FOUND", "message": "Origin answered HTTP 404", "retryable": False},
        "created_at": z(job.created_at),
        "updated_at": z(job.updated_at),
    }


def test_status_of_a_job_queued_after_a_failed_attempt(api_client, user):
    next_retry_at = timezone.now() + timedelta(seconds=10)
    job = make_job(
        user,
        attempts=1,
        next_retry_at=next_retry_at,
        error_code="TEMPORARY_UNAVAILABLE",
        error_message="Origin answered HTTP 500",
        error_retryable=True,
    )

    data = api_client.get(status_url(job.job_id)).json()["data"]

    pop_websocket_url(data, job.job_id)
    assert data == {
        "job_id": job.job_id,
        "file_id": 70000,
        "priority": "normal",
        "status": "queued",
        "progress": 0,
        "attempts": 1,
        "next_retry_at": z(next_retry_at),
        "error": {"code": "TEMPORARY_UNAVAILABLE", "message": "Origin answered HTTP 500", "retryable": True},
        "created_at": z(job.created_at),
        "updated_at": z(job.updated_at),
    }


@pytest.mark.parametrize("status", [Status.CANCELLED, Status.EXPIRED])
def test_status_of_a_cancelled_or_expired_job(api_client, user, status):
    job = make_job(user, status=status)

    data = api_client.get(status_url(job.job_id)).json()["data"]

    assert (data["status"], data["progress"]) == (status, 0)
    assert "error" not in data
    assert "download_url" not in data


# --- not found and ownership ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url"),
    [("get", status_url), ("get", job_url), ("delete", job_url)],
)
def test_unknown_and_foreign_jobs_are_404_job_not_found_alike(api_client, other_user, method, url):
    foreign = make_job(other_user)

    unknown = getattr(api_client, method)(url("job_" + "0" * 32))
    theirs = getattr(api_client, method)(url(foreign.job_id))

    assert unknown.status_code == theirs.status_code == 404
    assert unknown.json() == theirs.json() == error("JOB_NOT_FOUND", "Job not found")
    foreign.refresh_from_db()
    assert foreign.status == Status.QUEUED


def test_job_ids_with_strange_characters_are_404(api_client):
    response = api_client.get("/v1/download/status/job%2E%2E%2Fetc")

    assert response.status_code == 404
    assert response.json() == error("NOT_FOUND", "Not found")


# --- GET /v1/download/<job_id> -------------------------------------------------------------


@pytest.mark.parametrize("status", [Status.QUEUED, Status.PROCESSING])
def test_download_of_an_active_job_is_404_not_ready(api_client, user, status):
    job = make_job(user, status=status)

    response = api_client.get(job_url(job.job_id))

    assert response.status_code == 404
    assert response.json() == error("JOB_NOT_READY", f"Download not ready yet. Current status: {status}")


@pytest.mark.parametrize("status", [Status.FAILED, Status.CANCELLED])
def test_download_of_a_failed_or_cancelled_job_is_409(api_client, user, status):
    job = make_job(user, status=status)

    response = api_client.get(job_url(job.job_id))

    assert response.status_code == 409
    assert response.json() == error(
        "JOB_NOT_READY", f"Download will not be ready: the job is {status}", status=status
    )


def test_download_of_an_expired_job_is_410(api_client, user):
    job = make_job(user, status=Status.EXPIRED)

    response = api_client.get(job_url(job.job_id))

    assert response.status_code == 410
    assert response.json() == error(
        "DOWNLOAD_EXPIRED", "The file was deleted after its retention period; start a new download"
    )


def completed_job(owner: User, storage: Storage, *, file_name: str, content: bytes) -> DownloadJob:
    key = f"downloads/{owner.pk}/job-file-{file_name.encode().hex()[:16]}"
    storage.save(key, ContentFile(content))
    return make_job(
        owner,
        status=Status.COMPLETED,
        attempts=1,
        progress=100,
        storage_key=key,
        file_name=file_name,
        file_size_bytes=len(content),
        content_type="application/pdf",
        sha256="ab" * 32,
        completed_at=timezone.now(),
        expires_at=timezone.now() + timedelta(hours=24),
    )


def test_download_of_a_completed_job_is_a_fresh_signed_link(api_client, user, local_storage, monkeypatch):
    job = completed_job(user, local_storage, file_name="report.pdf", content=b"%PDF-1.7 hello")

    before = timezone.now()
    first = api_client.get(job_url(job.job_id))
    # A second later the link is minted again, with a later expiry.

    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 1)
    second = api_client.get(job_url(job.job_id))

    assert first.status_code == 200
    data = first.json()["data"]
    expires_at = datetime.fromisoformat(data.pop("expires_at"))
    download_url = data.pop("download_url")
    assert data == {
        "retained_until": z(job.expires_at),
        "file_name": "report.pdf",
        "file_size": 14,
        "content_type": "application/pdf",
        "sha256": "ab" * 32,
    }
    assert before + timedelta(seconds=899) <= expires_at <= timezone.now() + timedelta(seconds=901)
    assert download_url.startswith("http://testserver/files/")
    assert second.json()["data"]["download_url"] != download_url

    file_response = APIClient().get(urlsplit(download_url).path)  # the link needs no credentials
    assert file_response.status_code == 200
    assert served_bytes(file_response) == b"%PDF-1.7 hello"
    assert file_response["Content-Type"] == "application/pdf"
    assert file_response["Content-Disposition"] == 'attachment; filename="report.pdf"'


@pytest.mark.parametrize(
    ("file_name", "header", "saved_as"),
    [
        ('a "quoted" name.pdf', 'attachment; filename="a _quoted_ name.pdf"', "a _quoted_ name.pdf"),
        ("back\\slash.pdf", 'attachment; filename="slash.pdf"', "slash.pdf"),  # a path
        (
            "résumé.pdf",
            "attachment; filename=\"resume.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf",
            "résumé.pdf",
        ),
        (
            "evil\r\nSet-Cookie: x=1.pdf",
            'attachment; filename="evil_Set-Cookie_ x=1.pdf"',
            "evil_Set-Cookie_ x=1.pdf",
        ),
        (
            'x.pdf"; filename="y.exe',
            'attachment; filename="x.pdf__ filename=_y.exe"; '
            "filename*=UTF-8''x.pdf_%3B%20filename%3D_y.exe",
            "x.pdf_; filename=_y.exe",
        ),
    ],
)
def test_download_link_quotes_an_unsafe_file_name(
    api_client, user, local_storage, file_name, header, saved_as
):
    """More hostile names, and the S3 link, in test_security."""
    job = completed_job(user, local_storage, file_name=file_name, content=b"data")

    link = api_client.get(job_url(job.job_id)).json()["data"]
    file_response = APIClient().get(urlsplit(link["download_url"]).path)

    assert link["file_name"] == file_name
    assert file_response.status_code == 200
    assert file_response["Content-Disposition"] == header
    assert name_from_disposition(file_response["Content-Disposition"]) == saved_as


# --- DELETE /v1/download/<job_id> ----------------------------------------------------------


@pytest.mark.parametrize("status", [Status.QUEUED, Status.PROCESSING])
def test_cancel_an_active_job(api_client, user, status, django_capture_on_commit_callbacks):
    job = make_job(user, status=status, attempts=1, next_retry_at=timezone.now())

    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.delete(job_url(job.job_id))

    assert response.status_code == 200
    assert response.json() == {"success": True, "message": "Job cancelled successfully"}
    job.refresh_from_db()
    assert job.status == Status.CANCELLED
    assert job.cancelled_at is not None
    assert job.next_retry_at is None
    assert hotstate.cancel_flag_is_set(job.job_id)
    assert api_client.get(status_url(job.job_id)).json()["data"]["status"] == "cancelled"


def test_a_job_cancelled_while_processing_keeps_the_progress_it_stopped_at(
    api_client, user, django_capture_on_commit_callbacks
):
    job = processing_job(user)
    hotstate.progress_write(job_id=job.job_id, progress=HotProgress(2, 37_000, 100_000, 37))

    with django_capture_on_commit_callbacks(execute=True):
        assert api_client.delete(job_url(job.job_id)).status_code == 200
    # The attempt, stopping at its next chunk, drops its hot progress.
    hotstate.progress_clear(job.job_id)

    data = api_client.get(status_url(job.job_id)).json()["data"]
    assert (data["status"], data["progress"]) == ("cancelled", 37)
    listed = api_client.get(LIST).json()["data"]["results"]
    assert [(item["job_id"], item["progress"]) for item in listed] == [(job.job_id, 37)]
    job.refresh_from_db()
    assert (job.progress, job.bytes_done, job.bytes_total) == (37, 37_000, 100_000)


def test_a_cancel_keeps_no_progress_of_an_earlier_attempt(
    api_client, user, django_capture_on_commit_callbacks
):
    job = processing_job(user)  # attempt 2, 10 % on its row
    hotstate.progress_write(job_id=job.job_id, progress=HotProgress(1, 90_000, 100_000, 90))

    with django_capture_on_commit_callbacks(execute=True):
        assert api_client.delete(job_url(job.job_id)).status_code == 200

    assert api_client.get(status_url(job.job_id)).json()["data"]["progress"] == 10


def test_cancel_sets_the_flag_only_once_committed(api_client, user, django_capture_on_commit_callbacks):
    job = make_job(user)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        api_client.delete(job_url(job.job_id))

    assert not hotstate.cancel_flag_is_set(job.job_id)
    for callback in callbacks:
        callback()
    assert hotstate.cancel_flag_is_set(job.job_id)


@pytest.mark.parametrize("status", [Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.EXPIRED])
def test_cancel_a_finished_job_is_409(api_client, user, status):
    job = make_job(user, status=status)

    response = api_client.delete(job_url(job.job_id))

    assert response.status_code == 409
    assert response.json() == error("JOB_ALREADY_FINISHED", f"Job already finished: {status}", status=status)
    job.refresh_from_db()
    assert job.status == status
    assert not hotstate.cancel_flag_is_set(job.job_id)


# --- GET /v1/downloads ---------------------------------------------------------------------


def test_list_shows_only_own_jobs_newest_first(api_client, user, other_user):
    older = make_job(user, file_id=1)
    make_job(other_user, file_id=2)
    newer = make_job(user, file_id=3, status=Status.COMPLETED, expires_at=timezone.now())

    response = api_client.get(LIST)

    assert response.status_code == 200
    body = response.json()
    assert [item["job_id"] for item in body["data"]["results"]] == [newer.job_id, older.job_id]
    status = api_client.get(status_url(older.job_id)).json()["data"]
    pop_websocket_url(status, older.job_id)  # the status answer's alone
    # So is a queued job's place in line: a count per job that a list does not make.
    assert (status.pop("queue_position"), status.pop("estimated_time")) == (1, 60)
    assert body["data"]["results"][1] == status
    assert (body["data"]["next"], body["data"]["previous"]) == (None, None)


def test_list_of_a_user_without_jobs_is_empty(api_client):
    assert api_client.get(LIST).json() == {
        "success": True,
        "data": {"results": [], "next": None, "previous": None},
    }


def test_list_filters_active_and_by_status(api_client, user):
    jobs = {status: make_job(user, status=status) for status in Status.values}

    active = api_client.get(LIST, {"status": "active"}).json()["data"]["results"]
    failed = api_client.get(LIST, {"status": "failed"}).json()["data"]["results"]

    assert [item["job_id"] for item in active] == [jobs["processing"].job_id, jobs["queued"].job_id]
    assert [item["job_id"] for item in failed] == [jobs["failed"].job_id]


def test_list_items_merge_hot_progress(api_client, user):
    job = processing_job(user)
    hotstate.progress_write(job_id=job.job_id, progress=HotProgress(2, 50_000, 100_000, 50))

    item = api_client.get(LIST).json()["data"]["results"][0]

    assert (item["progress"], item["bytes_done"]) == (50, 50_000)


def test_list_unknown_status_filter_is_400(api_client):
    response = api_client.get(LIST, {"status": "bogus"})

    assert response.status_code == 400
    assert response.json() == error(
        "VALIDATION_ERROR",
        "Invalid request",
        fields={
            "status": [
                '"bogus" is not a valid choice: one of active, queued, processing, completed, failed, '
                "cancelled, expired."
            ]
        },
    )


def test_list_is_cursor_paginated(api_client, user):
    jobs = [make_job(user, file_id=n) for n in range(1, 6)]
    newest_first = [job.job_id for job in reversed(jobs)]

    seen, url, pages = [], f"{LIST}?page_size=2", []
    while url:
        data = api_client.get(url).json()["data"]
        pages.append(data)
        seen += [item["job_id"] for item in data["results"]]
        url = data["next"]

    assert seen == newest_first
    assert [len(page["results"]) for page in pages] == [2, 2, 1]
    assert pages[0]["previous"] is None
    assert pages[0]["next"].startswith("http://testserver/v1/downloads?cursor=")
    assert pages[2]["next"] is None
    back = api_client.get(pages[2]["previous"]).json()["data"]
    assert [item["job_id"] for item in back["results"]] == newest_first[2:4]


def test_list_page_size_is_capped_at_100(api_client, user):
    DownloadJob.objects.bulk_create([DownloadJob(owner=user, file_id=n) for n in range(1, 103)])

    data = api_client.get(LIST, {"page_size": 1000}).json()["data"]

    assert len(data["results"]) == 100
    assert data["next"] is not None


def test_every_timestamp_ends_with_z(api_client, user, local_storage):
    make_job(
        user, status=Status.PROCESSING, attempts=1, started_at=timezone.now(), bytes_done=1, bytes_total=4
    )
    make_job(user, attempts=1, next_retry_at=timezone.now(), error_code="TIMEOUT", error_retryable=True)
    done = completed_job(user, local_storage, file_name="a.pdf", content=b"a")

    items = api_client.get(LIST).json()["data"]["results"]
    link = api_client.get(job_url(done.job_id)).json()["data"]

    stamps = [
        item[name]
        for item in items
        for name in ("created_at", "updated_at", "expires_at", "next_retry_at", "estimated_completion")
        if name in item
    ] + [link["expires_at"], link["retained_until"]]
    assert len(stamps) == 11
    assert all(TIMESTAMP.match(stamp) for stamp in stamps), stamps


@pytest.mark.parametrize("rate", ["2/minute", "2/min", "2/m", "2 per minute"])
def test_initiate_rate_accepts_the_usual_spellings(api_client, settings, dispatched, rate):
    settings.JOB_INITIATE_RATE = rate

    codes = [api_client.post(INITIATE, {"file_id": 1}, format="json").status_code for _ in range(3)]

    assert codes == [200, 200, 429]


def test_idempotent_replays_are_answered_without_counting_against_the_rate(api_client, settings, dispatched):
    settings.JOB_INITIATE_RATE = "1/minute"
    first = api_client.post(INITIATE, {"file_id": 1}, format="json", HTTP_IDEMPOTENCY_KEY="retry-me")

    replays = [
        api_client.post(INITIATE, {"file_id": 1}, format="json", HTTP_IDEMPOTENCY_KEY="retry-me")
        for _ in range(3)
    ]
    another = api_client.post(INITIATE, {"file_id": 2}, format="json")

    assert [r.status_code for r in replays] == [200] * 3
    assert {r.json()["data"]["job_id"] for r in replays} == {first.json()["data"]["job_id"]}
    assert another.status_code == 429  # the one initiate the minute allows was the first
    assert DownloadJob.objects.count() == 1
