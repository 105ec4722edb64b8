"""`Authorization` as docs/api.md describes it: an API key under `Bearer` (RFC 6750) or
`Token`, either case; any other scheme, or a malformed header, a 401 that says what to send,
with the challenges of both schemes."""

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from jobs.models import DownloadJob
from tests.factories import api_key_for

LIST = "/v1/downloads"
INITIATE = "/v1/download/initiate"
CHALLENGE = 'Bearer realm="api", Token realm="api"'
INVALID_KEY_CHALLENGE = 'Bearer realm="api", error="invalid_token", Token realm="api"'


def with_header(value: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=value)
    return client


@pytest.mark.parametrize("scheme", ["Bearer", "Token", "bearer", "TOKEN"])
def test_either_scheme_carries_the_key(user: User, dispatched: list[object], scheme: str) -> None:
    client = with_header(f"{scheme} {api_key_for(user)}")

    created = client.post(INITIATE, {"file_id": 70000}, format="json")
    status = client.get(f"/v1/download/status/{created.json()['data']['job_id']}")

    assert created.status_code == 200, created.json()
    assert DownloadJob.objects.get().owner == user
    assert status.status_code == 200
    # The status of an active job mints the socket's fresh ticket under either scheme too.
    assert "?ticket=" in status.json()["data"]["websocket_url"]


@pytest.mark.parametrize(
    ("header", "message", "challenge"),
    [
        pytest.param(
            "Basic YWxpY2U6c2VjcmV0",
            "Unsupported Authorization scheme 'Basic': send `Authorization: Bearer <key>` "
            "(or `Token <key>`).",
            CHALLENGE,
            id="basic",
        ),
        pytest.param(
            "dlk_0123456789abcdef",
            # Not echoed: it may be a key.
            "Unsupported Authorization scheme: send `Authorization: Bearer <key>` (or `Token <key>`).",
            CHALLENGE,
            id="key-without-scheme",
        ),
        pytest.param(
            "Bearer",
            "Invalid Authorization header: no API key after the scheme.",
            INVALID_KEY_CHALLENGE,
            id="no-key",
        ),
        pytest.param(
            "Bearer dlk_abc def",
            "Invalid Authorization header: the API key may not contain spaces.",
            INVALID_KEY_CHALLENGE,
            id="spaces",
        ),
        pytest.param("Bearer not-a-real-key", "Invalid token.", INVALID_KEY_CHALLENGE, id="unknown-key"),
    ],
)
def test_a_wrong_scheme_or_garbage_is_a_clear_401(
    db: None, header: str, message: str, challenge: str
) -> None:
    response = with_header(header).get(LIST)

    assert response.status_code == 401
    assert response.json() == {"success": False, "error": {"code": "UNAUTHENTICATED", "message": message}}
    assert response["WWW-Authenticate"] == challenge


def test_another_scheme_leaves_a_session_signed_in(user: User) -> None:
    """A proxy's own `Basic` in front of a signed-in browser: the session still counts."""
    client = with_header("Basic YWxpY2U6c2VjcmV0")
    assert client.login(username="alice", password="alice-password")

    response = client.get(LIST)

    assert response.status_code == 200
    assert response.json() == {"success": True, "data": {"results": [], "next": None, "previous": None}}
