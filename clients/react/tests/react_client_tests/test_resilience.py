"""The React client through what a real deployment does to it, in Chromium against a real
stack (see support.py): sockets closed by the server (idle 4408, a restart's 1012) and the
final closes (4401, 4403, 4404), a deploy (the web process restarted), an edge restart (a
TCP proxy in front going down and up), transient API faults (503 and 429 with
Retry-After, no answer at all) against a 4xx, a component unmounted mid-job, a reload, and
the `useDownloads` list following many jobs at once.

Faults the stack cannot be made to answer on cue (a close code, a 503 on the first
initiate) come from Playwright's routes, which stand between the page and the real server
and are named as such; everything else is real.
"""

import json
import os
import signal
import time
from collections.abc import Callable
from contextlib import ExitStack
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Route, WebSocketRoute, expect

from devtools.servers import wait_for_port
from stack import processes
from tests.support.databases import embedded_only
from tests.support.origin_server import FileScript, OriginServer
from tests.support.stack import Stack
from tests.support.tcp_proxy import tcp_proxy

from .support import PERCENT, READY_TEXT, App, MiB, assert_progress_shown, job_id_of

pytestmark = [pytest.mark.django_db(transaction=True), embedded_only]

SUBSCRIBE = "**/v1/download/subscribe/**"


def ticket_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["ticket"][0]


def wait_until(app: App, done: Callable[[], bool], *, timeout_s: float = 20) -> None:
    """Until `done()`, letting the page's events (Python callbacks) run meanwhile."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out"
        app.page.wait_for_timeout(50)


# --- 1. sockets closed, servers restarted -----------------------------------------------------


@pytest.mark.parametrize(
    ("close_code", "reopened"),
    [(4408, True), (1012, True), (4401, False), (4403, False), (4404, False)],
)
@pytest.mark.browser
def test_a_closed_socket_is_reopened_with_a_fresh_ticket_unless_the_close_is_final(
    app: App, origin: OriginServer, close_code: int, reopened: bool
) -> None:
    file_id = 73601
    origin.add(file_id, FileScript(size=8 * MiB, rate_bps=2 * MiB))  # ~4 s
    opened: list[tuple[float, str]] = []
    closed_at: list[float] = []

    def route(ws: WebSocketRoute) -> None:
        """Every socket goes through to the server; the first is closed with `close_code`
        (as the server would close it) after its first progress message."""
        opened.append((time.monotonic(), ws.url))
        first = len(opened) == 1
        server = ws.connect_to_server()

        def forward(message: str | bytes) -> None:
            ws.send(message)
            if first and not closed_at and json.loads(message)["type"] == "progress":
                closed_at.append(time.monotonic())
                server.close()
                ws.close(code=close_code, reason="closed by the test")

        server.on_message(forward)

    app.page.route_web_socket(SUBSCRIBE, route)
    app.start(file_id)
    expect(app.page.get_by_role("button", name=READY_TEXT)).to_be_visible(timeout=30_000)
    assert closed_at, opened
    assert_progress_shown(app)
    polls = app.fetches("/v1/download/status/")
    assert polls, "the status was not polled while the socket was closed"
    if reopened:
        assert len(opened) >= 2, opened
        # The first backoff: 0.5 to 1 s (1 s with jitter), measured here with some slack.
        assert 0.4 <= opened[1][0] - closed_at[0] <= 2.5, (closed_at, opened)
        # Its ticket came from a status answer fetched after the close (the polls above): two
        # tickets of one job and key signed within the same second are the same string, so
        # the strings themselves cannot tell a fresh ticket from the first.
    else:
        assert len(opened) == 1, opened
        assert len(polls) >= 2, polls  # polling alone carried the job to its end


def web_restart(stack: Stack) -> None:
    """A deploy whose grace period ran out: the web process is killed (uvicorn alone would
    wait for the open sockets to end) and a new one starts on the same port; the worker
    carries on."""
    assert stack.web is not None
    os.killpg(stack.web.pid, signal.SIGKILL)
    stack.web.wait()
    stack.web, _ = stack._spawn("web-restarted", processes.web_argv(port=stack.port))
    wait_for_port(stack.port, process=stack.web)


@pytest.mark.parametrize("outage", ["deploy", "edge"])
@pytest.mark.browser
def test_the_job_carries_on_through_a_deploy_and_an_edge_restart(
    app: App, origin: OriginServer, react_stack: Stack, outage: str
) -> None:
    file_id = 73701
    # ~16 s: long enough for the socket to be back before the end, the web process's
    # restart and the backoff (up to 8 s by the fourth try) included.
    origin.add(file_id, FileScript(size=32 * MiB, rate_bps=2 * MiB))
    failed: list[str] = []  # requests to the API that got no answer
    app.page.on("requestfailed", lambda request: failed.append(request.url))
    with ExitStack() as resources:
        if outage == "edge":
            proxy = resources.enter_context(tcp_proxy("127.0.0.1", react_stack.port))
            app.api = f"http://{proxy.address}"
        app.start(file_id)
        expect(app.page.get_by_text(PERCENT)).to_be_visible()
        sockets_before = len(app.sockets)
        if outage == "edge":
            proxy.down()
            wait_until(app, lambda: len(failed) >= 2)  # polls, sockets: nothing answers
            proxy.up()
        else:
            web_restart(react_stack)
        expect(app.page.get_by_role("button", name=READY_TEXT)).to_be_visible(timeout=40_000)
    assert failed, "nothing was tried while the API was down"
    assert len(app.sockets) > sockets_before, app.sockets
    job_id = job_id_of(app)
    assert {urlsplit(url).path for url in app.sockets} == {f"/v1/download/subscribe/{job_id}"}
    assert ticket_of(app.sockets[-1]) != ticket_of(app.sockets[0]), app.sockets
    assert_progress_shown(app)
    assert origin.requests[file_id] == 1  # the job went on meanwhile: no second attempt


# --- 2. transient API faults are retried, others are not --------------------------------------


@pytest.mark.parametrize(
    ("fault", "retried"),
    [("503", True), ("429", True), ("network", True), ("400", False)],
)
@pytest.mark.browser
def test_initiate_is_retried_after_a_transient_fault_and_only_then(
    app: App, origin: OriginServer, fault: str, retried: bool
) -> None:
    file_id = 73801
    origin.add(file_id, FileScript(size=64 * 1024))
    sent: list[tuple[float, str | None]] = []
    codes = {"503": "SERVICE_UNAVAILABLE", "429": "RATE_LIMIT_EXCEEDED", "400": "VALIDATION_ERROR"}

    def route(route: Route) -> None:
        """The first initiate answers `fault` (a route of the test's), the next ones are the
        server's."""
        request = route.request
        if request.method != "POST":
            route.continue_()
            return
        sent.append((time.monotonic(), request.headers.get("idempotency-key")))
        if len(sent) > 1:
            route.continue_()
            return
        if fault == "network":
            route.abort("connectionrefused")
            return
        headers = {
            "Access-Control-Allow-Origin": app.site.origin,
            "Access-Control-Expose-Headers": "Retry-After",
        }
        error = {"code": codes[fault], "message": f"{fault} of the test's"}
        if fault != "400":
            headers["Retry-After"] = "1"
            error["retry_after"] = 1  # type: ignore[assignment]
        route.fulfill(status=int(fault), headers=headers, json={"success": False, "error": error})

    app.page.route("**/v1/download/initiate", route)
    app.start(file_id)
    if not retried:
        expect(app.page.locator(".error-message")).to_have_text("400 of the test's")
        assert len(sent) == 1, sent
        with app.stack.client(app.token) as client:
            assert client.get("/v1/downloads").json()["data"]["results"] == []
        return
    expect(app.page.get_by_role("button", name=READY_TEXT)).to_be_visible()
    assert len(sent) == 2, sent
    assert sent[0][1], sent
    assert sent[0][1] == sent[1][1], sent  # one intended download: one key
    gap_s = sent[1][0] - sent[0][0]
    if fault == "network":
        assert 0.2 <= gap_s <= 1.5, gap_s  # the first backoff: 0.25 to 0.5 s
    else:
        assert 1.0 <= gap_s <= 2.5, gap_s  # Retry-After: 1 s, and up to a fifth more
    job_id_of(app)  # one job


# --- 3. unmounted: nothing left running -------------------------------------------------------


@pytest.mark.browser
def test_a_closed_button_leaves_no_socket_timer_or_request_behind(app: App, origin: OriginServer) -> None:
    file_id = 73901
    origin.add(file_id, FileScript(size=12 * MiB, rate_bps=2 * MiB))  # ~6 s
    sockets: list[str] = []

    def refuse(ws: WebSocketRoute) -> None:
        sockets.append(ws.url)
        ws.close(code=1011, reason="refused by the test")

    app.page.route_web_socket(SUBSCRIBE, refuse)
    requests: list[str] = []
    app.page.on("request", lambda request: requests.append(request.url))
    app.start(file_id)
    expect(app.page.get_by_text("Queued...")).to_be_visible()
    wait_until(app, lambda: bool(app.fetches("/v1/download/status/")))  # polling, reopening
    app.page.get_by_role("button", name="Close").click()
    expect(app.page.get_by_text("The button is closed.")).to_be_visible()
    requests_then, sockets_then = len(requests), len(sockets)
    # Nothing can be seen to stop happening but by waiting: longer than every timer the
    # button had (a poll every 0.5 s, a reopen within 2 s, a 5 s fallback to polling).
    app.page.wait_for_timeout(6000)
    assert requests[requests_then:] == []
    assert len(sockets) == sockets_then, sockets


# --- 4. a reload keeps the job ----------------------------------------------------------------


@pytest.mark.browser
def test_a_reload_shows_the_same_job_and_watches_it_again(app: App, origin: OriginServer) -> None:
    file_id = 74001
    origin.add(file_id, FileScript(size=12 * MiB, rate_bps=2 * MiB))  # ~6 s
    app.start(file_id)
    expect(app.page.get_by_text(PERCENT)).to_be_visible()
    job_id = job_id_of(app)
    sockets_before = len(app.sockets)
    app.page.reload()
    expect(app.page.get_by_role("button", name=READY_TEXT)).to_be_visible(timeout=30_000)
    assert "Download File" not in app.texts(), app.texts()  # never back to the start
    assert app.fetches("/v1/download/initiate") == []
    assert job_id_of(app) == job_id
    assert len(app.sockets) > sockets_before
    assert urlsplit(app.sockets[-1]).path == f"/v1/download/subscribe/{job_id}"
    assert origin.requests[file_id] == 1


# --- 5. the list: the user's jobs, many at once -----------------------------------------------


@pytest.mark.browser
def test_the_list_shows_the_users_jobs_and_follows_many_at_once(app: App, origin: OriginServer) -> None:
    earlier, *file_ids = 74100, 74101, 74102, 74103
    for file_id in (earlier, *file_ids):
        origin.add(file_id, FileScript(size=8 * MiB, rate_bps=2 * MiB))  # ~4 s each
    with app.stack.client(app.token) as client:
        answer = client.post("/v1/download/initiate", json={"file_id": earlier})
    started_elsewhere = answer.json()["data"]["job_id"]

    app.open_list()
    expect(app.page.locator(f'li[data-job-id="{started_elsewhere}"]')).to_be_visible()
    for file_id in file_ids:
        app.page.get_by_label("File ID").fill(str(file_id))
        app.page.get_by_role("button", name="Start download").click()
    rows = app.page.locator("li[data-job-id]")
    expect(rows).to_have_count(4)
    # The stack's worker runs two jobs at a time: two rows move at once.
    expect(app.page.locator('li[data-status="processing"]')).to_have_count(2, timeout=30_000)
    expect(app.page.locator('li[data-status="completed"]')).to_have_count(4, timeout=40_000)
    with app.stack.client(app.token) as client:
        job_ids = {job["job_id"] for job in client.get("/v1/downloads").json()["data"]["results"]}
    assert len(job_ids) == 4
    # Each job had a socket of its own; the one started elsewhere through its status' ticket.
    assert {urlsplit(url).path.rsplit("/", 1)[1] for url in app.sockets} == job_ids, app.sockets

    app.page.reload()
    expect(app.page.locator('li[data-status="completed"]')).to_have_count(4)
