"""What the React client's browser tests share: the app's build, its static servers, and
the app in a page of Chromium (driven by Playwright) with what it did.

The built app is served at http://127.0.0.2:<port>, another origin than the API's
(http://127.0.0.1:<port>, whose ALLOWED_HOSTS do not name 127.0.0.2): its calls go through
CORS and its socket through the WebSocket Origin check, let in only because the stack's
CORS_ALLOWED_ORIGINS lists that origin. The page gets the API's base URL and an API key in
its fragment (never sent to a server).
"""

import hashlib
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from playwright.sync_api import Page, WebSocket, expect

from tests.support.browser import BrowserSession
from tests.support.stack import ROOT, Stack

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


# --- the app and its static servers -----------------------------------------------------------


def run(argv: list[str], *, timeout_s: int) -> None:
    done = subprocess.run(argv, cwd=CLIENT_DIR, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def build_app(out: Path) -> Path:
    """clients/react built into `out`. `npm ci` runs when node_modules is missing or was
    installed from another package-lock.json."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("no `npm`/`node` on PATH: the React client's browser tests need Node.js 20+ to build it")
    npm_ci_if_needed()
    run(["npx", "--no-install", "tsc", "--noEmit"], timeout_s=300)
    run(["npx", "--no-install", "vite", "build", "--outDir", str(out), "--emptyOutDir"], timeout_s=300)
    assert (out / "index.html").is_file()
    return out


def npm_ci_if_needed() -> None:
    lock = hashlib.sha256((CLIENT_DIR / "package-lock.json").read_bytes()).hexdigest()
    stamp = CLIENT_DIR / "node_modules" / ".installed-from-lock"
    if not stamp.is_file() or stamp.read_text() != lock:
        run(["npm", "ci", "--no-audit", "--no-fund"], timeout_s=600)
        stamp.write_text(lock)


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
    api: str | None = None  # the API's base URL the page is given; the stack's by default

    def open(self, file_id: int) -> None:
        fragment = urlencode(
            {"api": self.api or self.stack.base_url, "token": self.token, "file_id": file_id}
        )
        self.page.goto(f"{self.site.origin}/#{fragment}")
        expect(self.page.get_by_role("heading")).to_have_text(f"Download file {file_id}")

    def open_list(self) -> None:
        fragment = urlencode({"api": self.api or self.stack.base_url, "token": self.token, "view": "list"})
        self.page.goto(f"{self.site.origin}/#{fragment}")
        expect(self.page.get_by_role("heading")).to_have_text("Your downloads")

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


def app_in_browser(
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
