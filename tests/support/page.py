"""Driving the downloads page in the `browser` tests (tests/realtime/test_page*.py): what
each page records of its job rows, and the steps a test takes on it. The stack and the page
fixtures are in tests/realtime/conftest.py."""

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import uuid4

from django.conf import settings
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.contrib.auth.models import User
from django.test import Client
from playwright.sync_api import Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.support.browser import BrowserSession
from tests.support.stack import ARTIFACTS

MiB = 1024 * 1024
SCREENSHOTS = ARTIFACTS / "screenshots"
PAGE_BROKER_DB = 8
POLLING_INTERVAL_MS = 500  # the page's polling, when it has no socket
WAIT_MS = 20_000
STATUS_RANK = {"queued": 0, "processing": 1, "completed": 2, "failed": 2, "cancelled": 2}

# Installed before the page's script: records each distinct state of every job row.
RECORDER_JS = """
(() => {
  const history = {};
  const snap = (row) => {
    const id = row.dataset.jobId;
    const entry = {
      status: row.dataset.status,
      progress: Number(row.dataset.progress),
      transport: row.dataset.transport,
    };
    const list = (history[id] = history[id] || []);
    const last = list[list.length - 1];
    if (!last || last.status !== entry.status || last.progress !== entry.progress
        || last.transport !== entry.transport) {
      list.push(entry);
    }
  };
  const isRow = (node) => node.nodeType === 1 && node.matches("li[data-job-id]");
  new MutationObserver((records) => {
    const rows = new Set();
    for (const record of records) {
      if (record.type === "attributes") {
        if (isRow(record.target)) rows.add(record.target);
      } else {
        for (const node of record.addedNodes) if (isRow(node)) rows.add(node);
      }
    }
    for (const row of rows) snap(row);
  }).observe(document, {
    subtree: true,
    childList: true,
    attributes: true,
    attributeFilter: ["data-status", "data-progress", "data-transport"],
  });
  window.__jobHistory = (id) => history[id] || [];
})();
"""


# --- the browser and the running-loop marker ------------------------------------------------


@contextmanager
def outside_playwright() -> Iterator[None]:
    """Runs Django code (the ORM) in a test that drives the browser."""
    loop = asyncio._get_running_loop()
    asyncio._set_running_loop(None)
    try:
        yield
    finally:
        asyncio._set_running_loop(loop)


@contextmanager
def page_open(browser_session: BrowserSession, base_url: str, **context_options: Any) -> Iterator[Page]:
    """A page in a fresh browser context at `base_url`. Fails the test on any uncaught error
    in the page's script."""
    errors: list[str] = []
    browser_session.enter()
    try:
        context = browser_session.browser.new_context(base_url=base_url, **context_options)
        try:
            context.set_default_timeout(WAIT_MS)
            context.add_init_script(RECORDER_JS)
            page = context.new_page()
            page.on("pageerror", lambda error: errors.append(str(error)))
            yield page
        finally:
            context.close()
    finally:
        browser_session.leave()
    assert errors == [], f"uncaught errors in the page: {errors}"


# --- helpers ---------------------------------------------------------------------------------


def create_user(password: str | None = None) -> User:
    """A user of this test's. The stack's processes check passwords with Django's default
    hashers (the tests' settings use a fast MD5 one): a password is stored as PBKDF2 with
    few iterations, which they accept (and upgrade on the first sign-in)."""
    with outside_playwright():
        user = User.objects.create_user(f"page-{uuid4().hex[:10]}")
        if password is not None:
            hasher = PBKDF2PasswordHasher()
            user.password = hasher.encode(password, hasher.salt(), iterations=1000)
            user.save(update_fields=["password"])
    return user


def sign_in(page: Page, username: str, password: str) -> None:
    """Through the sign-in form, as a person would: / sends them there first."""
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/$"))
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_test_id("login-submit").click()
    page.wait_for_url(re.compile(r"/$"))
    wait_until_ready(page)
    expect(page.locator(".site-user")).to_have_text(f"Signed in as {username}")


def open_signed_in(page: Page, user: User) -> None:
    """Opens the page with a session made here (the form is test 1's subject)."""
    with outside_playwright():
        client = Client()
        client.force_login(user)
        session = client.cookies[settings.SESSION_COOKIE_NAME].value
    page.context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": session, "domain": "127.0.0.1", "path": "/"}]
    )
    page.goto("/")
    wait_until_ready(page)
    expect(page.locator(".site-user")).to_have_text(f"Signed in as {user.username}")


def wait_until_ready(page: Page) -> None:
    expect(page.locator('#downloads-page[data-ready="true"]')).to_be_attached(timeout=WAIT_MS)


def job_ids(page: Page) -> list[str]:
    """The job rows on the page, newest first."""
    return page.eval_on_selector_all(
        "#downloads-list > li[data-job-id]", "rows => rows.map(r => r.dataset.jobId)"
    )


def request_file(page: Page, file_id: int) -> str:
    """Fills in the form and submits it; returns the job id of the row that appears on top."""
    before = job_ids(page)
    page.locator("#file-id").fill(str(file_id))
    page.locator("#download-submit").click()
    page.wait_for_function(
        "(n) => document.querySelectorAll('#downloads-list > li[data-job-id]').length > n",
        arg=len(before),
        polling=50,
    )
    job_id = job_ids(page)[0]
    assert job_id not in before
    assert re.fullmatch(r"job_[0-9a-f]{24,}", job_id), job_id
    expect(row(page, job_id).get_by_test_id("job-file-id")).to_have_text(str(file_id))
    return job_id


def row(page: Page, job_id: str) -> Any:
    return page.locator(f'li[data-job-id="{job_id}"]')


def history(page: Page, job_id: str) -> list[dict[str, Any]]:
    """Every distinct (status, progress, transport) the job's row showed on this page load."""
    return page.evaluate("(id) => window.__jobHistory(id)", job_id)


def wait_for_row(page: Page, job_id: str, condition: str, *, timeout_ms: int = WAIT_MS) -> None:
    """Waits until `condition` (a JS expression of `row`, the job's <li>) holds."""
    try:
        page.wait_for_function(
            f"""(id) => {{
                const row = document.querySelector(`li[data-job-id="${{id}}"]`);
                return !!row && ({condition});
            }}""",
            arg=job_id,
            polling=50,
            timeout=timeout_ms,
        )
    except PlaywrightTimeoutError:
        raise AssertionError(
            f"row {job_id} never met {condition!r}; it showed {history(page, job_id)}"
        ) from None


def api_status(page: Page, job_id: str) -> dict[str, Any]:
    """GET /v1/download/status/<id> from the page, with its session."""
    body = page.evaluate(
        """async (id) => {
            const headers = {Accept: "application/json"};
            const response = await fetch(`/v1/download/status/${id}`, {headers});
            return response.json();
        }""",
        job_id,
    )
    assert body["success"] is True, body
    return body["data"]


def stored_files(job_id: str) -> list[Path]:
    """The job's files in local storage: finished, or still being written (`.part`)."""
    return sorted((settings.VAR_DIR / "media" / "downloads").glob(f"*/{job_id}*"))


def eventually(page: Page, check: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    """Polls a Python-side condition; the tiny pauses go through the page, so Playwright
    keeps handling events meanwhile."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        page.wait_for_timeout(25)


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def assert_monotonic(seen: list[dict[str, Any]]) -> None:
    """Progress never goes back on screen, nor does the status go back to an earlier one."""
    progress = [entry["progress"] for entry in seen]
    assert progress == sorted(progress), seen
    ranks = [STATUS_RANK[entry["status"]] for entry in seen]
    assert ranks == sorted(ranks), seen
