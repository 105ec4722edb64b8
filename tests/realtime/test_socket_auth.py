"""Who opens a job's socket, from which page, and for how long: the Origin compared by
scheme, host and port with the site's own; a ticket required of pages of other origins;
a user's open sockets closed when the user is deactivated or deleted (the deprecated
`?token=` is in tests/legacy/test_socket_login.py). Through the full ASGI application, on the configured
(Redis) channel layer."""

import json
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from downloads_project.asgi import application
from tests.factories import api_key_for, make_job
from tests.realtime.test_consumers import (
    TIMEOUT_S,
    close_code,
    initiate,
    processing_job,
    receive,
    run,
    socket,
    socket_path_of,
    subscribe_path,
)
from tests.support.origin_server import FileScript, OriginServer
from tests.support.stack import Stack

pytestmark = pytest.mark.django_db(transaction=True)

SITE = "localhost:8000"  # the handshake's Host


def session_cookie(user: User) -> tuple[bytes, bytes]:
    browser = Client()
    browser.force_login(user)
    return b"cookie", f"sessionid={browser.cookies['sessionid'].value}".encode()


def browser_headers(user: User, origin: str, *, host: str = SITE, **extra: str) -> list[tuple[bytes, bytes]]:
    """A browser's handshake: its page's Origin, the Host it connects to, its session cookie."""
    return [
        (b"host", host.encode()),
        (b"origin", origin.encode()),
        session_cookie(user),
        *((name.replace("_", "-").encode(), value.encode()) for name, value in extra.items()),
    ]


def handshake(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any] | int | None:
    """None when the handshake is refused (HTTP 403), else the first message or close code."""

    async def scenario() -> dict[str, Any] | int | None:
        communicator = WebsocketCommunicator(application, path, headers=headers)
        connected, _ = await communicator.connect(timeout=TIMEOUT_S)
        if not connected:
            return None
        try:
            output = await communicator.receive_output(timeout=TIMEOUT_S)
            if output["type"] == "websocket.close":
                code: int = output.get("code", 1000)
                return code
            message: dict[str, Any] = json.loads(output["text"])
            return message
        finally:
            await communicator.disconnect(timeout=TIMEOUT_S)

    result: dict[str, Any] | int | None = run(scenario)
    return result


def is_snapshot(result: dict[str, Any] | int | None) -> bool:
    return isinstance(result, dict) and result["type"] == "snapshot"


# --- the Origin: scheme, host and port of the site's own --------------------------------------


@pytest.mark.parametrize(
    ("origin", "extra", "opens"),
    [
        ("http://localhost:8000", {}, True),  # the handshake's own scheme and Host
        ("http://localhost:9999", {}, False),  # same host, another port
        ("https://localhost:8000", {}, False),  # same host and port, another scheme
        ("http://127.0.0.1:8000", {}, False),  # another allowed host than the Host
        ("null", {}, False),
    ],
)
def test_a_page_opens_the_socket_only_from_the_sites_own_origin(user, origin, extra, opens):
    job = make_job(user)
    result = handshake(subscribe_path(job.job_id), browser_headers(user, origin, **extra))
    assert is_snapshot(result) if opens else result is None


def test_behind_a_trusted_tls_proxy_the_sites_origin_is_https(user, settings):
    """TRUST_X_FORWARDED_PROTO: the proxy's `X-Forwarded-Proto: https` makes the scheme
    https, as it does for Django's CSRF check."""
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    job = make_job(user)
    path = subscribe_path(job.job_id)

    over_tls = handshake(path, browser_headers(user, "https://localhost:8000", x_forwarded_proto="https"))
    plain_page = handshake(path, browser_headers(user, "http://localhost:8000", x_forwarded_proto="https"))

    assert is_snapshot(over_tls)
    assert plain_page is None


def test_an_origin_of_csrf_trusted_origins_is_the_sites(user, settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://downloads.example.com", "https://*.example.org"]
    job = make_job(user)
    path = subscribe_path(job.job_id)

    assert is_snapshot(handshake(path, browser_headers(user, "https://downloads.example.com")))
    assert is_snapshot(handshake(path, browser_headers(user, "https://app.example.org")))
    assert handshake(path, browser_headers(user, "http://downloads.example.com")) is None


def test_a_host_outside_allowed_hosts_is_no_site_of_its_own(user):
    job = make_job(user)
    headers = browser_headers(user, "http://evil.example:8000", host="evil.example:8000")
    assert handshake(subscribe_path(job.job_id), headers) is None


# --- pages of CORS_ALLOWED_ORIGINS: the ticket, never the session ------------------------------

APP_ORIGIN = "http://127.0.0.2:5173"


def test_a_page_of_cors_allowed_origins_needs_the_ticket(user, api_client, dispatched, settings):
    settings.CORS_ALLOWED_ORIGINS = [APP_ORIGIN]
    created = initiate(api_client)

    with_session_only = handshake(subscribe_path(created["job_id"]), browser_headers(user, APP_ORIGIN))
    with_ticket = handshake(socket_path_of(created["websocket_url"]), browser_headers(user, APP_ORIGIN))

    assert with_session_only == 4401
    assert is_snapshot(with_ticket)


# --- the contract names no credential in a URL ------------------------------------------------


def test_the_schema_describes_no_token_in_the_query(settings, tmp_path):
    out = tmp_path / "schema.json"
    call_command("spectacular", "--format", "openapi-json", "--file", str(out))
    schema = json.loads(out.read_text())

    parameters = [
        parameter
        for path in schema["paths"].values()
        for operation in path.values()
        if isinstance(operation, dict)
        for parameter in operation.get("parameters", [])
    ]
    assert "token=" not in schema["info"]["description"]
    assert "?ticket=" in schema["info"]["description"]
    assert not [parameter for parameter in parameters if parameter["name"] == "token"]


# --- a deactivated or deleted user's open sockets close --------------------------------------


def deactivate(user: User) -> None:
    user.is_active = False
    user.save()


def bulk_deactivate(user: User) -> None:
    User.objects.filter(pk=user.pk).update(is_active=False)


@pytest.mark.parametrize("revoke", [deactivate, User.delete], ids=["deactivated", "deleted"])
def test_a_users_open_sockets_close_when_the_user_is_revoked(user, revoke):
    job = processing_job(user, progress=40)
    other_job = processing_job(user, progress=10)

    async def scenario() -> tuple[list[int], float]:
        async with (
            socket(subscribe_path(job.job_id), user=user, app=application) as first,
            socket(subscribe_path(other_job.job_id), user=user, app=application) as second,
        ):
            await receive(first)
            await receive(second)
            revoked_at = time.monotonic()
            await sync_to_async(revoke)(user)
            codes = [await close_code(first), await close_code(second)]
            return codes, time.monotonic() - revoked_at

    codes, elapsed_s = run(scenario)
    assert codes == [4401, 4401]
    assert elapsed_s < 3  # within a second or so; the heartbeat (15 s) plays no part


def test_a_socket_finds_its_user_deactivated_without_a_signal(user, settings):
    """A bulk update() sends no signal: the socket's own check of the user closes it."""
    settings.WEBSOCKET_HEARTBEAT_S = 0.05
    settings.WEBSOCKET_RESYNC_S = 0.2
    job = processing_job(user, progress=40)

    async def scenario() -> int:
        async with socket(subscribe_path(job.job_id), user=user, app=application) as ws:
            await receive(ws)
            await sync_to_async(bulk_deactivate)(user)
            # Heartbeats until the check, 4 beats in: 100 of them is the check never closing.
            for _beat in range(100):
                output = await ws.receive_output(timeout=TIMEOUT_S)
                if output["type"] == "websocket.close":
                    code: int = output.get("code", 1000)
                    return code
            return 0

    assert run(scenario) == 4401


def test_saving_an_active_user_leaves_the_sockets_open(user):
    job = processing_job(user, progress=40)

    async def scenario() -> bool:
        async with socket(subscribe_path(job.job_id), user=user, app=application) as ws:
            await receive(ws)
            user.first_name = "Alice"
            await sync_to_async(user.save)()
            return bool(await ws.receive_nothing(timeout=0.5))

    assert run(scenario) is True


def receive_until_closed(ws: Any) -> ConnectionClosed:
    """The close of a websockets client socket, after any messages before it."""
    for _message in range(1000):
        try:
            ws.recv(timeout=10)
        except ConnectionClosed as closed:
            return closed
    raise AssertionError("the socket was not closed")


@pytest.mark.e2e
def test_deactivating_a_user_closes_the_socket_on_a_real_web_process(
    local_stack: Stack, origin: OriginServer, django_user_model: Any
) -> None:
    """As the admin does it: a save in another process (here, the test's) closes the
    socket that a real uvicorn holds, through the Redis channel layer."""
    user = django_user_model.objects.create_user(f"revoked-{time.monotonic_ns()}")
    token = api_key_for(user)
    file_id = 73101
    origin.add(file_id, FileScript(size=8 * 1024 * 1024, rate_bps=1024 * 1024))  # ~8 s: still active

    with local_stack.client(token) as api:
        created = api.post("/v1/download/initiate", json={"file_id": file_id}).json()["data"]
    with connect(created["websocket_url"], open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "snapshot"
        revoked_at = time.monotonic()
        deactivate(user)
        closed = receive_until_closed(ws)
        elapsed_s = time.monotonic() - revoked_at

    assert closed.rcvd is not None
    assert closed.rcvd.code == 4401
    assert elapsed_s < 3  # within a second or so, not at a heartbeat (15 s) or resync (60 s)
