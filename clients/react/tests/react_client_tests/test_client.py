"""The React client (clients/react: `useDownload` and `DownloadButton`) built with Vite and
run in headless Chromium (Debian's `chromium`, driven by Playwright) against a real ASGI
server (uvicorn) and a real Celery worker that fetch from the real HTTP test origin: live
progress over the socket, polling without one, cancelled and failed jobs, and the CORS and
Origin checks that let the app's origin in and keep others out (see support.py).
"""

import hashlib
import re
from itertools import pairwise
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import WebSocketRoute, expect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as websocket_connect
from websockets.typing import Origin

from devtools.servers import free_port
from tests.support.browser import BrowserSession
from tests.support.origin_server import FileScript, OriginServer
from tests.support.stack import Stack

from .support import (
    LISTED_HOST,
    NO_WEBSOCKET_JS,
    PERCENT,
    POLLING_INTERVAL_MS,
    READY_TEXT,
    REFUSED_WEBSOCKET_JS,
    UNLISTED_HOST,
    App,
    MiB,
    StaticSite,
    app_in_browser,
    assert_progress_shown,
    job_id_of,
)

pytestmark = pytest.mark.django_db(transaction=True)


# --- 1. live over the WebSocket, then saved ---------------------------------------------------


@pytest.mark.browser
def test_the_button_shows_progress_live_over_the_websocket_and_saves_the_file(
    app: App, origin: OriginServer
) -> None:
    file_id = 73101
    # ~3 s at 1 MiB/s: progress is pushed many times on the way.
    script = origin.add(
        file_id, FileScript(size=3 * MiB + 321, rate_bps=MiB, file_name="quarterly report.pdf")
    )
    with app.page.expect_request(re.compile(r"/v1/download/initiate$")) as initiate:
        app.start(file_id)
    # The API of another origin, with the token the app was given.
    assert urlsplit(initiate.value.url).netloc == urlsplit(app.stack.base_url).netloc
    headers = initiate.value.all_headers()
    assert headers["authorization"] == f"Token {app.token}"
    assert headers["origin"] == app.site.origin

    expect(app.page.get_by_text(PERCENT)).to_be_visible()
    ready = app.page.get_by_role("button", name=READY_TEXT)
    expect(ready).to_be_visible()
    job_id = job_id_of(app)

    seen = app.seen()
    assert seen[-1]["text"] == READY_TEXT, seen
    assert_progress_shown(app)
    # One socket, the websocket_url of initiate as given: the job's, with its ticket.
    assert len(app.sockets) == 1, app.sockets
    url = urlsplit(app.sockets[0])
    assert (url.scheme, url.netloc, url.path) == (
        "ws",
        urlsplit(app.stack.base_url).netloc,
        f"/v1/download/subscribe/{job_id}",
    )
    assert parse_qs(url.query).keys() == {"ticket"}, url
    # Progress came over it: a snapshot first, progress on the way, completed last.
    types = [frame["type"] for frame in app.frames]
    assert types[0] == "snapshot", types
    assert types[-1] == "completed", types
    pushed = {frame["progress"] for frame in app.frames if frame["type"] == "progress"}
    assert any(0 < progress < 100 for progress in pushed), app.frames
    assert set(app.shown_percents()) <= {frame["progress"] for frame in app.frames}, (app.texts(), app.frames)
    # Not by polling: the client polls only while its socket is not open.
    ready_at = next(entry["t"] for entry in seen if entry["text"] == READY_TEXT)
    assert all(fetch["t"] > ready_at for fetch in app.fetches("/v1/download/status/")), app.fetches("/v1/")

    with app.page.expect_download() as download_info:
        ready.click()
    download = download_info.value
    assert download.suggested_filename == "quarterly report.pdf"
    content = Path(download.path()).read_bytes()
    assert len(content) == script.size
    assert hashlib.sha256(content).hexdigest() == script.sha256(file_id)
    assert origin.requests[file_id] == 1

    # A reload shows the same job (kept in localStorage), ready, without a new initiate and
    # without a socket: it has ended.
    app.frames.clear()
    app.page.reload()
    expect(app.page.get_by_role("button", name=READY_TEXT)).to_be_visible()
    assert app.frames == [], app.frames
    assert len(app.fetches("/v1/download/initiate")) == 0
    job_id_of(app)  # still one job

    # Forgotten, the same file again: initiate answers `completed` at once (reuse of the
    # stored file), which the button shows without opening a socket.
    app.page.evaluate("localStorage.clear()")
    app.page.reload()
    app.page.get_by_role("button", name="Download File").click()
    expect(app.page.get_by_role("button", name=READY_TEXT)).to_be_visible()
    assert app.frames == [], app.frames
    assert origin.requests[file_id] == 1


# --- 2. no WebSocket: polling ----------------------------------------------------------------


@pytest.mark.parametrize(
    "refusal",
    [
        # Closed before it opened (Playwright's route; it never reaches the server).
        "closed-unopened",
        # A real refusal: its URL led to a port where nothing listens.
        "connection-refused",
        # A browser where `new WebSocket` throws.
        "constructor-throws",
    ],
)
@pytest.mark.browser
def test_without_a_websocket_polling_still_completes(app: App, origin: OriginServer, refusal: str) -> None:
    """The status is polled every polling_interval from the moment the socket fails, while
    the socket is tried again with backoff, each time with a fresh ticket."""
    file_id = 73201
    # ~6 s at 1.5 MiB/s: still processing when the slowest fallback's first poll comes.
    origin.add(file_id, FileScript(size=9 * MiB + 9, rate_bps=3 * MiB // 2, file_name="polled.pdf"))
    refused: list[str] = []
    if refusal == "closed-unopened":

        def refuse(ws: WebSocketRoute) -> None:
            refused.append(ws.url)
            ws.close(code=1011, reason="refused by the test")

        app.page.route_web_socket("**/v1/download/subscribe/**", refuse)
    elif refusal == "connection-refused":
        app.page.add_init_script(REFUSED_WEBSOCKET_JS.replace("CLOSED_PORT", str(free_port())))
    else:
        app.page.add_init_script(NO_WEBSOCKET_JS)
    app.start(file_id)

    expect(app.page.get_by_role("button", name=READY_TEXT)).to_be_visible(timeout=30_000)
    assert app.texts()[-1] == READY_TEXT
    assert_progress_shown(app)
    assert app.frames == [], app.frames
    if refusal == "closed-unopened":
        refused_urls = refused
    else:
        refused_urls = app.page.evaluate("window.__refusedSockets || []")
    if refusal != "constructor-throws":
        job_id = job_id_of(app)
        assert refused_urls, refused_urls
        paths = {urlsplit(url).path for url in refused_urls}
        assert paths == {f"/v1/download/subscribe/{job_id}"}, refused_urls
        tickets = [parse_qs(urlsplit(url).query)["ticket"][0] for url in refused_urls]
        # Each attempt takes a fresh ticket from a status answer; tickets of one job signed
        # within the same second are the same string, so only attempts seconds apart (the
        # backoff's third and later) must show a new one.
        if len(tickets) > 2:
            assert len(set(tickets)) > 1, tickets
    (initiated,) = app.fetches("/v1/download/initiate")
    polls = [poll["t"] for poll in app.fetches("/v1/download/status/")]
    assert len(polls) >= 2, polls
    assert polls[0] - initiated["t"] < 2000, (initiated, polls)  # at once, not after 5 s
    gaps = [later - earlier for earlier, later in pairwise(polls)]
    assert min(gaps) >= 0.9 * POLLING_INTERVAL_MS, gaps
    assert min(gaps) < 2 * POLLING_INTERVAL_MS, gaps


# --- 3. cancelled and failed jobs ------------------------------------------------------------


@pytest.mark.browser
def test_a_job_cancelled_elsewhere_shows_cancelled_and_retry_starts_over(
    app: App, origin: OriginServer
) -> None:
    file_id = 73301
    origin.add(file_id, FileScript(size=12 * MiB, rate_bps=2 * MiB))  # ~6 s if not stopped
    app.start(file_id)
    expect(app.page.get_by_text(PERCENT)).to_be_visible()
    job_id = job_id_of(app)
    with app.stack.client(app.token) as client:
        answer = client.delete(f"/v1/download/{job_id}")
    assert answer.json() == {"success": True, "message": "Job cancelled successfully"}, answer.text

    expect(app.page.get_by_text("Download cancelled")).to_be_visible()
    assert app.frames[-1]["type"] == "cancelled", app.frames
    app.page.get_by_role("button", name="Retry").click()
    expect(app.page.get_by_role("button", name="Download File")).to_be_visible()


@pytest.mark.browser
def test_a_failed_job_shows_the_apis_message_and_retry(app: App, origin: OriginServer) -> None:
    file_id = 73401  # the origin has no such file: FILE_NOT_FOUND, not retried
    app.start(file_id)
    expect(app.page.get_by_role("button", name="Retry")).to_be_visible()
    job_id = job_id_of(app)
    with app.stack.client(app.token) as client:
        error = client.get(f"/v1/download/status/{job_id}").json()["data"]["error"]
    assert error["code"] == "FILE_NOT_FOUND", error
    expect(app.page.locator(".error-message")).to_have_text(error["message"])
    # The socket ends on the failure: its `error` event, or, when the job failed before the
    # socket opened, a snapshot that already says failed.
    last = app.frames[-1]
    assert last["type"] == "error" or (last["type"], last["status"]) == ("snapshot", "failed"), app.frames


# --- 4. a page of an origin not listed -------------------------------------------------------


@pytest.mark.browser
def test_a_page_of_an_origin_not_listed_gets_no_answer_and_starts_nothing(
    browser_session: BrowserSession,
    unlisted_site: StaticSite,
    react_stack: Stack,
    token: str,
    react_dist: Path,
    origin: OriginServer,
) -> None:
    for app in app_in_browser(browser_session, unlisted_site, react_stack, token, react_dist):
        app.start(73501)
        # The preflight has no CORS answer: the browser sends no POST; to the page it is a
        # network error, tried again with backoff, then shown.
        expect(app.page.locator(".error-message")).to_have_text(
            "Could not reach the download service (Failed to fetch)", timeout=40_000
        )
    with react_stack.client(token) as client:
        listed = client.get("/v1/downloads").json()["data"]
    assert listed["results"] == []
    assert origin.requests[73501] == 0


# --- 5. the server's side of CORS and of the socket's Origin check, without a browser --------


@pytest.mark.e2e
def test_cors_answers_only_listed_origins_and_only_on_the_api(
    react_stack: Stack, listed_site: StaticSite
) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
    }
    with httpx.Client(base_url=react_stack.base_url, timeout=10) as client:
        answer = client.options("/v1/download/initiate", headers={"Origin": listed_site.origin, **preflight})
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == listed_site.origin
        allowed = {name.strip() for name in answer.headers["access-control-allow-headers"].split(",")}
        assert {"authorization", "content-type", "idempotency-key"} <= allowed
        assert "access-control-allow-credentials" not in answer.headers  # no cookies cross-origin

        other = client.options(
            "/v1/download/initiate", headers={"Origin": f"http://{UNLISTED_HOST}:8000", **preflight}
        )
        assert "access-control-allow-origin" not in other.headers
        # Only /v1/: not the page, the admin, the files or the health checks.
        for path in ("/health", "/api/schema/", "/accounts/login/"):
            assert (
                "access-control-allow-origin"
                not in client.get(path, headers={"Origin": listed_site.origin}).headers
            )
        # An actual answer (here a 401) carries it too, with the headers a client may read.
        unauthenticated = client.post(
            "/v1/download/initiate", json={"file_id": 1}, headers={"Origin": listed_site.origin}
        )
        assert unauthenticated.status_code == 401
        assert unauthenticated.headers["access-control-allow-origin"] == listed_site.origin
        assert "retry-after" in unauthenticated.headers["access-control-expose-headers"].lower()


@pytest.mark.e2e
def test_the_socket_takes_pages_of_listed_origins_and_its_own_hosts_and_refuses_others(
    react_stack: Stack, listed_site: StaticSite
) -> None:
    url = react_stack.base_url.replace("http://", "ws://") + f"/v1/download/subscribe/job_{'0' * 32}"

    def close_code(origin: str) -> int | None:
        """The server's close code once the handshake passed (4401: no ticket)."""
        with websocket_connect(url, origin=Origin(origin), open_timeout=10) as ws:
            try:
                ws.recv(timeout=10)
            except ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None
        return None

    assert close_code(listed_site.origin) == 4401
    assert close_code(react_stack.base_url) == 4401  # a page of the service's own host
    for refused in (
        f"http://{UNLISTED_HOST}:{listed_site.server.server_address[1]}",
        f"https://{LISTED_HOST}:{listed_site.server.server_address[1]}",
    ):
        with pytest.raises(InvalidStatus) as refusal:
            close_code(refused)
        assert refusal.value.response.status_code == 403
