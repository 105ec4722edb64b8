"""The deprecated `?token=` of a job's socket (legacy/socket_login.py), through the full
ASGI application: logged, switchable off, and where it stands among the other ways in:
a `?ticket=` wins over it, and it counts on a page of CORS_ALLOWED_ORIGINS, whose session
does not."""

import logging
from typing import Any

import pytest
from django.contrib.auth.models import User

from downloads_project.asgi import application
from tests.factories import api_key_for, make_job
from tests.realtime.test_consumers import (
    close_code,
    initiate,
    receive,
    run,
    socket,
    socket_path_of,
    subscribe_path,
)
from tests.realtime.test_socket_auth import APP_ORIGIN, browser_headers, handshake, is_snapshot

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_token_in_the_query_authenticates_an_api_client_without_origin(user):
    """API clients send no Origin header; the full application lets them in, by token."""
    job = make_job(user)
    key = api_key_for(user)

    async def scenario() -> dict[str, Any]:
        async with socket(subscribe_path(job.job_id, f"token={key}"), app=application) as ws:
            return await receive(ws)

    assert run(scenario)["job_id"] == job.job_id


@pytest.mark.parametrize("credentials", ["unknown token", "inactive user's token"])
def test_a_token_that_is_no_valid_credential_is_closed_4401(user, credentials):
    job = make_job(user)
    query = "token=" + "0" * 40
    if credentials == "inactive user's token":
        query = f"token={api_key_for(user)}"
        User.objects.filter(pk=user.pk).update(is_active=False)

    async def scenario() -> int:
        async with socket(subscribe_path(job.job_id, query), app=application) as ws:
            return await close_code(ws)

    assert run(scenario) == 4401


def test_a_token_in_the_query_is_logged_once_without_the_key(user, caplog):
    job = make_job(user)
    key = api_key_for(user)
    caplog.set_level(logging.WARNING, logger="legacy.socket_login")

    result = handshake(subscribe_path(job.job_id, f"token={key}"), [])

    warnings = [record.getMessage() for record in caplog.records if record.name == "legacy.socket_login"]
    assert is_snapshot(result)
    assert len(warnings) == 1
    assert "?token=" in warnings[0]
    assert "2027-06-30" in warnings[0]
    assert all(key not in record.getMessage() for record in caplog.records)


def test_a_token_in_the_query_is_refused_once_switched_off(user, settings):
    settings.WEBSOCKET_TOKEN_QUERY_ALLOWED = False
    job = make_job(user)
    key = api_key_for(user)

    assert handshake(subscribe_path(job.job_id, f"token={key}"), []) == 4401


def test_a_ticket_wins_over_a_token(user, api_client, dispatched):
    """A ticket for another job, with a good token beside it: the ticket is what counts,
    and it does not open this job's socket."""
    job = make_job(user)
    other = initiate(api_client)
    other_ticket = socket_path_of(other["websocket_url"]).partition("?")[2]
    key = api_key_for(user)

    assert handshake(subscribe_path(job.job_id, f"{other_ticket}&token={key}"), []) == 4401
    assert is_snapshot(handshake(subscribe_path(job.job_id, f"token={key}"), []))


def test_a_token_opens_the_socket_on_a_page_of_cors_allowed_origins(user, settings):
    """Such a page calls the API with a token: its socket may carry the token too (its
    session cookie alone counts for nothing, tests/realtime/test_socket_auth.py)."""
    settings.CORS_ALLOWED_ORIGINS = [APP_ORIGIN]
    job = make_job(user)
    key = api_key_for(user)

    with_token = handshake(subscribe_path(job.job_id, f"token={key}"), browser_headers(user, APP_ORIGIN))
    with_session_only = handshake(subscribe_path(job.job_id), browser_headers(user, APP_ORIGIN))

    assert is_snapshot(with_token)
    assert with_session_only == 4401
