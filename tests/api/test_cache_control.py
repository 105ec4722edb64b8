"""`Cache-Control: no-store` on every answer of the API, whoever made it: a view, DRF's
error handler, the rate limits, a dependency's 503 raised in a middleware, the CORS
preflight, Django's 404; on the old endpoint too. Pages and static assets keep their own."""

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import OperationalError
from django.test import Client

from tests.factories import api_key_for, make_job

INITIATE = "/v1/download/initiate"


def _no_store(response: Any) -> bool:
    return "no-store" in {part.strip() for part in response.get("Cache-Control", "").split(",")}


@pytest.fixture
def token_client(user: User) -> Client:
    key = api_key_for(user)
    return Client(HTTP_AUTHORIZATION=f"Token {key}", raise_request_exception=False)


def test_successful_answers_are_no_store(token_client, user, dispatched):
    job = make_job(user)
    answers = [
        token_client.post(INITIATE, {"file_id": 1}, content_type="application/json"),
        token_client.get(f"/v1/download/status/{job.job_id}"),
        token_client.get("/v1/downloads"),
        token_client.post("/download/start", {"file_id": 2}, content_type="application/json"),
    ]

    assert [a.status_code for a in answers] == [200, 200, 200, 202]
    assert all(_no_store(a) for a in answers), [a.get("Cache-Control") for a in answers]


def test_error_answers_are_no_store(token_client, db, settings, dispatched):
    settings.JOB_INITIATE_RATE = "1/minute"
    token_client.post(INITIATE, {"file_id": 1}, content_type="application/json")
    answers = [
        Client().get("/v1/downloads"),  # 401
        token_client.get("/v1/download/status/job_" + "0" * 32),  # 404 of the view
        token_client.get("/v1/nothing-here"),  # Django's 404 handler
        token_client.put("/v1/downloads"),  # 405
        token_client.post(INITIATE, {"file_id": 1}, content_type="application/json"),  # 429
    ]

    assert [a.status_code for a in answers] == [401, 404, 404, 405, 429]
    assert all(_no_store(a) for a in answers), [a.get("Cache-Control") for a in answers]


def test_a_503_raised_in_a_middleware_is_no_store(user, monkeypatch):
    """The session lookup fails before any view runs: Django's 500 handler answers 503."""
    browser = Client(raise_request_exception=False)
    browser.force_login(user)

    def database_down(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("connection failed: Connection refused")

    monkeypatch.setattr("django.contrib.sessions.backends.db.SessionStore.load", database_down)
    response = browser.get("/v1/downloads")

    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert _no_store(response)


def test_a_cors_preflight_is_no_store(db, settings):
    settings.CORS_ALLOWED_ORIGINS = ["https://app.example.com"]
    response = Client().options(
        INITIATE,
        HTTP_ORIGIN="https://app.example.com",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
    )

    assert response.status_code == 200
    assert _no_store(response)


def test_answers_outside_the_api_are_left_alone(db):
    schema = Client().get("/api/schema/")

    assert schema.status_code == 200
    assert "Cache-Control" not in schema
