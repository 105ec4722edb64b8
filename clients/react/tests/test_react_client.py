"""The seed's React client (clients/react: its `useDownload` hook and `DownloadButton`, seed
section 5) built with Vite and run in headless Chromium (Debian's `chromium`, driven by
Playwright) against a real ASGI server (uvicorn) and a real Celery worker that fetch from
the real HTTP test origin.

The built app is served by a static server of this module's at http://127.0.0.2:<port>,
another origin than the API's (http://127.0.0.1:<port>, whose ALLOWED_HOSTS do not name
127.0.0.2): its calls go through CORS and its socket through the WebSocket Origin check,
let in only because the stack's CORS_ALLOWED_ORIGINS lists that origin. A page of
127.0.0.3, not listed, is refused. The page gets the API's base URL and a DRF token in its
fragment (never sent to a server); its API calls carry `Authorization: Token`, its socket
only the `websocket_url` that the API gave.

The app is built once per session (`npm ci` when node_modules is missing or was installed
from another lock file, then `tsc --noEmit` and `vite build`); the browser tests are
skipped, saying why, where npm is missing. See tests/realtime/test_page.py for why the
running-loop marker is set only while a test drives the browser.
"""

import hashlib
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from difflib import unified_diff
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit
from uuid import uuid4

import httpx
import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User
from playwright.sync_api import Page, WebSocket, WebSocketRoute, expect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as websocket_connect
from websockets.typing import Origin

from devtools.servers import free_port
from tests.factories import api_key_for
from tests.support.browser import BrowserSession
from tests.support.origin_server import FileScript, OriginServer
from tests.support.stack import ROOT, Stack, stack_env

pytestmark = pytest.mark.django_db(transaction=True)

CLIENT_DIR = ROOT / "clients" / "react"
MiB = 1024 * 1024
REACT_BROKER_DB = 4  # 0, 5-15: the other test stacks (see test_database_pool)
POLLING_INTERVAL_MS = 500  # initiate's polling_interval, at which the seed polls after 5 s
LISTED_HOST, UNLISTED_HOST = "127.0.0.2", "127.0.0.3"  # loopback, not in ALLOWED_HOSTS
WAIT_MS = 20_000
READY_TEXT = "Download Ready! Click to Download"
PERCENT = re.compile(r"^(\d+)% Complete$")

# Installed before the app's script: every distinct text of the button's container, on the
# page's clock, to compare with the start of its fetches (resource timing, the same clock).
RECORDER_JS = """
(() => {
  const seen = [];
  const snap = () => {
    const box = document.querySelector(".download-container");
    const text = box ? box.textContent : "";
    if (!seen.length || seen[seen.length - 1].text !== text) seen.push({t: performance.now(), text});
  };
  new MutationObserver(snap).observe(document, {subtree: true, childList: true, characterData: true});
  window.__seen = () => seen;
  window.__fetches = () => performance.getEntriesByType("resource")
    .filter((entry) => entry.initiatorType === "fetch")
    .map((entry) => ({t: entry.startTime, url: entry.name}));
})();
"""

# Every socket the page opens leads to CLOSED_PORT, where nothing listens: refused.
REFUSED_WEBSOCKET_JS = """
(() => {
  const Native = window.WebSocket;
  window.__refusedSockets = [];
  window.WebSocket = class extends Native {
    constructor(url, protocols) {
      window.__refusedSockets.push(String(url));
      const refused = new URL(url);
      refused.port = "CLOSED_PORT";
      super(refused.toString(), protocols);
    }
  };
})();
"""

# `new WebSocket(...)` throws, as in a browser or behind a proxy that allows none.
NO_WEBSOCKET_JS = """
window.WebSocket = class {
  static OPEN = 1;
  constructor() { throw new Error("WebSocket refused by the test"); }
};
"""


# --- the app, built once, and its static servers ---------------------------------------------


def _run(argv: list[str], *, timeout_s: int) -> None:
    done = subprocess.run(argv, cwd=CLIENT_DIR, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


@pytest.fixture(scope="session")
def react_dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """clients/react built into a directory of this session's. `npm ci` runs when
    node_modules is missing or was installed from another package-lock.json."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("no `npm`/`node` on PATH: the React client's browser tests need Node.js 20+ to build it")
    lock = hashlib.sha256((CLIENT_DIR / "package-lock.json").read_bytes()).hexdigest()
    stamp = CLIENT_DIR / "node_modules" / ".installed-from-lock"
    if not stamp.is_file() or stamp.read_text() != lock:
        _run(["npm", "ci", "--no-audit", "--no-fund"], timeout_s=600)
        stamp.write_text(lock)
    out = tmp_path_factory.mktemp("react-dist")
    _run(["npx", "--no-install", "tsc", "--noEmit"], timeout_s=300)
    _run(["npx", "--no-install", "vite", "build", "--outDir", str(out), "--emptyOutDir"], timeout_s=300)
    assert (out / "index.html").is_file()
    return out


class _StaticServer(ThreadingHTTPServer):
    daemon_threads = True
    directory: Path | None = None  # 404 for everything until set


class _DistHandler(SimpleHTTPRequestHandler):
    server: _StaticServer

    def __init__(self, request: Any, client_address: Any, server: _StaticServer) -> None:
        directory = server.directory or Path("/nonexistent")
        super().__init__(request, client_address, server, directory=str(directory))

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class StaticSite:
    """A static server on a loopback address of its own: a browser origin of its own. It
    listens from the start (the stack is told its origin), and serves the app once built."""

    host: str
    server: _StaticServer = field(init=False)

    def __post_init__(self) -> None:
        self.server = _StaticServer((self.host, 0), _DistHandler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def listed_site() -> Iterator[StaticSite]:
    site = StaticSite(LISTED_HOST)
    yield site
    site.stop()


@pytest.fixture(scope="module")
def unlisted_site() -> Iterator[StaticSite]:
    site = StaticSite(UNLISTED_HOST)
    yield site
    site.stop()


# --- the server and worker -------------------------------------------------------------------


@pytest.fixture(scope="module")
def react_stack(
    django_db_setup: None, origin_server: OriginServer, listed_site: StaticSite
) -> Iterator[Stack]:
    """uvicorn + a Celery worker of this module's, whose CORS_ALLOWED_ORIGINS lists the
    listed site's origin."""
    redis.Redis.from_url(f"{settings.REDIS_URL}/{REACT_BROKER_DB}").flushdb()
    env = stack_env(
        origin_server,
        {"CORS_ALLOWED_ORIGINS": listed_site.origin, "JOB_POLLING_INTERVAL_MS": str(POLLING_INTERVAL_MS)},
        broker_db=REACT_BROKER_DB,
    )
    stack = Stack("react", env).start()
    yield stack
    stack.stop()


@pytest.fixture
def token() -> str:
    """A DRF token of a user of this test's (made before the browser is driven)."""
    user = User.objects.create_user(f"react-{uuid4().hex[:10]}")
    return api_key_for(user)


# --- the browser -----------------------------------------------------------------------------


@dataclass
class App:
    """The app in a page of its own, as a front-end would run it, and what it did."""

    page: Page
    site: StaticSite
    stack: Stack
    token: str
    sockets: list[str] = field(default_factory=list)  # URLs the page opened
    frames: list[dict[str, Any]] = field(default_factory=list)  # messages its sockets received

    def open(self, file_id: int) -> None:
        fragment = urlencode({"api": self.stack.base_url, "token": self.token, "file_id": file_id})
        self.page.goto(f"{self.site.origin}/#{fragment}")
        expect(self.page.get_by_role("heading")).to_have_text(f"Download file {file_id}")

    def start(self, file_id: int) -> None:
        self.open(file_id)
        self.page.get_by_role("button", name="Download File").click()

    def seen(self) -> list[dict[str, Any]]:
        """Every distinct text of the button's container: [{t, text}], t in ms."""
        return self.page.evaluate("window.__seen()")

    def texts(self) -> list[str]:
        return [entry["text"] for entry in self.seen()]

    def fetches(self, path_prefix: str) -> list[dict[str, Any]]:
        return [
            entry
            for entry in self.page.evaluate("window.__fetches()")
            if urlsplit(entry["url"]).path.startswith(path_prefix)
        ]

    def shown_percents(self) -> list[int]:
        return [int(match[1]) for text in self.texts() if (match := PERCENT.match(text))]


def _app(
    browser_session: BrowserSession, site: StaticSite, stack: Stack, token: str, dist: Path
) -> Iterator[App]:
    site.server.directory = dist
    errors: list[str] = []
    browser_session.enter()
    try:
        context = browser_session.browser.new_context(accept_downloads=True)
        try:
            context.set_default_timeout(WAIT_MS)
            context.add_init_script(RECORDER_JS)
            page = context.new_page()
            app = App(page, site, stack, token)
            page.on("pageerror", lambda error: errors.append(str(error)))

            def watch(ws: WebSocket) -> None:
                app.sockets.append(ws.url)
                ws.on("framereceived", lambda payload: app.frames.append(json.loads(payload)))

            page.on("websocket", watch)
            yield app
        finally:
            context.close()
    finally:
        browser_session.leave()
    assert errors == [], f"uncaught errors in the page: {errors}"


@pytest.fixture
def app(
    browser_session: BrowserSession,
    listed_site: StaticSite,
    react_stack: Stack,
    token: str,
    react_dist: Path,
    origin: OriginServer,
) -> Iterator[App]:
    """The app served from the listed origin, pointed at the stack with a user's token."""
    yield from _app(browser_session, listed_site, react_stack, token, react_dist)


def assert_progress_shown(app: App) -> None:
    """'% Complete' was shown on the way, strictly between 0 and 100, never going back."""
    percents = app.shown_percents()
    assert any(0 < percent < 100 for percent in percents), app.texts()
    assert percents == sorted(percents), app.texts()


def job_id_of(app: App) -> str:
    """The job the page started: from its initiate call's answer, as the server stored it."""
    with app.stack.client(app.token) as client:
        jobs = client.get("/v1/downloads").json()["data"]
    items = jobs["results"]
    assert len(items) == 1, items
    return str(items[0]["job_id"])


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
    # Not by polling: the seed polls only after 5 s without an open socket, by which time
    # this job had finished; no status call started before "Download Ready" was shown.
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

    # The same file again, on a new page load: initiate answers `completed` at once (reuse of
    # the stored file); the seed shows "Queued..." whatever the answer, and the socket's
    # snapshot corrects it.
    app.frames.clear()
    app.page.reload()
    app.page.get_by_role("button", name="Download File").click()
    expect(app.page.get_by_role("button", name=READY_TEXT)).to_be_visible()
    assert [frame["type"] for frame in app.frames] == ["snapshot"], app.frames
    assert app.frames[0]["status"] == "completed", app.frames
    assert origin.requests[file_id] == 1


# --- 2. no WebSocket: polling ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("refusal", "first_poll_after_ms", "poll_every_ms"),
    [
        # Closed before it opened (Playwright's route; it never reaches the server): no error
        # event, so the seed's 5 s check starts polling, every polling_interval.
        pytest.param("closed-unopened", 5000, POLLING_INTERVAL_MS, id="closed-unopened"),
        # A real refusal (its URL led to a port where nothing listens): onerror polls at once,
        # every 2 s (the seed's constant), and the 5 s check finds it already polling.
        pytest.param("connection-refused", 0, 2000, id="connection-refused"),
        # A browser where `new WebSocket` throws: the seed's catch, the same.
        pytest.param("constructor-throws", 0, 2000, id="constructor-throws"),
    ],
)
@pytest.mark.browser
def test_without_a_websocket_polling_still_completes(
    app: App, origin: OriginServer, refusal: str, first_poll_after_ms: int, poll_every_ms: int
) -> None:
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
        assert len(refused_urls) == 1, refused_urls
        assert urlsplit(refused_urls[0]).path == f"/v1/download/subscribe/{job_id_of(app)}", refused_urls
    # Which fallback of the seed polled, and how often.
    (initiated,) = app.fetches("/v1/download/initiate")
    polls = [poll["t"] for poll in app.fetches("/v1/download/status/")]
    assert len(polls) >= 2, polls
    assert polls[0] - initiated["t"] >= first_poll_after_ms, (initiated, polls)
    gaps = [later - earlier for earlier, later in pairwise(polls)]
    assert min(gaps) >= 0.9 * poll_every_ms, gaps
    assert min(gaps) < 2 * poll_every_ms, gaps


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
    for app in _app(browser_session, unlisted_site, react_stack, token, react_dist):
        app.start(73501)
        # The preflight has no CORS answer: the browser sends no POST and the seed's hook
        # shows fetch's error.
        expect(app.page.locator(".error-message")).to_have_text("Failed to fetch")
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


# --- 6. the client is the seed's, changed only where its README says ------------------------


def test_the_hook_and_button_differ_from_the_seeds_text_only_as_documented() -> None:
    """clients/react/seed/ holds the seed's text as written; src/ is what runs. Every line
    changed is listed in clients/react/README.md ("Deviations from the seed")."""
    changed: list[str] = []
    for seed_name, src_name in (
        ("useDownload.ts", "hooks/useDownload.ts"),
        ("DownloadButton.tsx", "components/DownloadButton.tsx"),
    ):
        seed = (CLIENT_DIR / "seed" / seed_name).read_text().splitlines()
        src = (CLIENT_DIR / "src" / src_name).read_text().splitlines()
        changed += [
            line
            for line in unified_diff(seed, src, lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---")) and line[1:].strip()
        ]
    assert changed == [
        '-import { io, Socket } from "socket.io-client";',
        '+import { apiFetch } from "../api";',
        '-  status: "idle" | "queued" | "processing" | "completed" | "failed";',
        '+  status: "idle" | "queued" | "processing" | "completed" | "failed" | "cancelled" | "expired";',
        '-      const response = await fetch("/v1/download/initiate", {',
        '+      const response = await apiFetch("/v1/download/initiate", {',
        "-        const response = await fetch(`/v1/download/status/${jobId}`);",
        "+        const response = await apiFetch(`/v1/download/status/${jobId}`);",
        '-          if (["completed", "failed"].includes(data.data.status)) {',
        '+          if (["completed", "failed", "cancelled", "expired"].includes(data.data.status)) {',
        "-      const response = await fetch(`/v1/download/${state.jobId}`);",
        "+      const response = await apiFetch(`/v1/download/${state.jobId}`);",
        "+      case 'cancelled':",
        "+      case 'expired':",
        "+        return (",
        '+          <div className="download-error">',
        '+            <span className="error-message">Download {state.status}</span>',
        '+            <button onClick={retry} className="btn-retry">',
        "+              Retry",
        "+            </button>",
        "+          </div>",
        "+        );",
    ]
