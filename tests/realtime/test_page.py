"""The downloads page in a real browser: headless Chromium (Debian's `chromium`) driven by
Playwright, against a real ASGI server (uvicorn) and a real Celery worker that fetch from
the real HTTP test origin, which serves files slowly enough to watch them progress.

One browser per session, a fresh context per test. Every wait is on a condition with a
deadline. Each page records the states its job rows go through (a MutationObserver
installed before the page's own script runs), so tests assert on everything the page
showed, not only on where it ended. Screenshots go to test-artifacts/screenshots/.

Sync Playwright keeps its event loop marked as running in this thread between its calls,
and Django refuses database access (SynchronousOnlyOperation) while a loop runs: the
marker is set only while a test drives the browser (see `BrowserSession`), and test code
that touches the database does it inside `outside_playwright()`.
"""

import hashlib
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Page, WebSocketRoute, expect

from tests.support.origin_server import FileScript, OriginServer
from tests.support.page import (
    MiB,
    api_status,
    assert_monotonic,
    create_user,
    eventually,
    history,
    job_ids,
    open_signed_in,
    request_file,
    row,
    screenshot,
    sign_in,
    stored_files,
    wait_for_row,
    wait_until_ready,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# --- 1. sign in, two downloads, save one ---------------------------------------------------


def test_two_downloads_progress_live_and_the_saved_file_is_the_origins(
    page: Page, origin: OriginServer
) -> None:
    first_id, second_id = 72101, 72102
    # ~2 s each at 2.5 MiB/s: progress is visible for a while.
    first = origin.add(
        first_id, FileScript(size=5 * MiB + 321, rate_bps=5 * MiB // 2, file_name="annual report.pdf")
    )
    origin.add(second_id, FileScript(size=4 * MiB, rate_bps=2 * MiB, file_name="appendix.pdf"))
    password = "correct horse battery staple"
    user = create_user(password)

    sign_in(page, user.username, password)
    expect(page.get_by_test_id("downloads-empty")).to_be_visible()
    expect(page.get_by_test_id("downloads-empty")).to_have_text(
        "You have no downloads yet. Request a file above."
    )

    first_job = request_file(page, first_id)
    second_job = request_file(page, second_id)
    assert job_ids(page) == [second_job, first_job]
    expect(page.get_by_test_id("downloads-empty")).to_be_hidden()

    for job_id in (first_job, second_job):
        wait_for_row(page, job_id, "row.dataset.status === 'processing' && Number(row.dataset.progress) > 0")
    screenshot(page, "processing")

    for job_id in (first_job, second_job):
        wait_for_row(page, job_id, "row.dataset.status === 'completed'")
        job_row = row(page, job_id)
        expect(job_row).to_have_attribute("data-progress", "100")
        expect(job_row.get_by_test_id("job-progress")).to_have_js_property("value", 100)
        expect(job_row.get_by_test_id("job-state")).to_have_text("Completed, ready to download")
        expect(job_row.get_by_test_id("job-download")).to_be_visible()
        expect(job_row.get_by_test_id("job-cancel")).to_be_hidden()

        seen = history(page, job_id)
        assert_monotonic(seen)
        assert [entry["status"] for entry in seen][-1] == "completed", seen
        assert any(entry["status"] == "processing" and 0 < entry["progress"] < 100 for entry in seen), seen
        # Live over the WebSocket the whole way: the page never had to poll.
        transports = {entry["transport"] for entry in seen}
        assert "websocket" in transports, seen
        assert "polling" not in transports, seen
        assert seen[-1]["transport"] == "none", seen  # nothing left open once finished
    expect(row(page, first_job).get_by_test_id("job-detail")).to_contain_text("annual report.pdf")
    screenshot(page, "completed")

    with page.expect_download() as download_info:
        row(page, first_job).get_by_test_id("job-download").click()
    download = download_info.value
    assert download.suggested_filename == "annual report.pdf"
    content = Path(download.path()).read_bytes()
    assert len(content) == first.size
    assert hashlib.sha256(content).hexdigest() == first.sha256(first_id)
    expect(page.get_by_test_id("page-message")).to_contain_text("Saving annual report.pdf")
    assert origin.requests[first_id] == origin.requests[second_id] == 1


# --- 2. cancel mid-way ---------------------------------------------------------------------


def test_cancel_mid_download_stops_it_and_stores_nothing(page: Page, origin: OriginServer) -> None:
    file_id = 72201
    script = origin.add(file_id, FileScript(size=10 * MiB, rate_bps=2 * MiB))  # ~5 s if not stopped
    open_signed_in(page, create_user())

    job_id = request_file(page, file_id)
    wait_for_row(page, job_id, "row.dataset.status === 'processing' && Number(row.dataset.progress) > 0")
    # The partial file being written is where the check below would find a leftover.
    eventually(page, lambda: stored_files(job_id) != [], timeout_s=5, what="the partial file exists")

    row(page, job_id).get_by_test_id("job-cancel").click()
    wait_for_row(page, job_id, "row.dataset.status === 'cancelled'")
    job_row = row(page, job_id)
    expect(job_row.get_by_test_id("job-state")).to_have_text("Cancelled")
    expect(job_row.get_by_test_id("job-cancel")).to_be_hidden()
    expect(job_row.get_by_test_id("job-download")).to_be_hidden()
    expect(job_row.get_by_test_id("job-again")).to_be_visible()
    expect(page.get_by_test_id("page-message")).to_have_text(f"Download of file {file_id} cancelled.")
    stopped_at = int(job_row.get_attribute("data-progress") or 0)
    assert 0 < stopped_at < 100
    expect(job_row.get_by_test_id("job-detail")).to_have_text(f"Stopped at {stopped_at}%.")
    screenshot(page, "cancelled")

    # The worker stops: the origin stops sending and the partial file goes away.
    def origin_quiet() -> bool:
        before = origin.bytes_sent[file_id]
        page.wait_for_timeout(400)
        return origin.bytes_sent[file_id] == before

    eventually(page, origin_quiet, timeout_s=5, what="the origin stopped sending")
    assert origin.bytes_sent[file_id] < script.size
    eventually(page, lambda: stored_files(job_id) == [], timeout_s=5, what="nothing of the job stored")
    assert api_status(page, job_id)["status"] == "cancelled"
    seen = history(page, job_id)
    assert_monotonic(seen)
    assert seen[-1]["status"] == "cancelled", seen
    assert seen[-1]["transport"] == "none", seen  # the page stopped watching it


# --- 3. no WebSocket: polling ------------------------------------------------------------


def test_without_websocket_the_page_polls_to_completion(page: Page, origin: OriginServer) -> None:
    file_id = 72301
    origin.add(file_id, FileScript(size=5 * MiB, rate_bps=2 * MiB))  # ~2.5 s
    blocked: list[str] = []

    def refuse(ws: WebSocketRoute) -> None:
        """Never reaches the server: the page sees the socket close without opening."""
        blocked.append(ws.url)
        ws.close(code=1011, reason="blocked by the test")

    page.route_web_socket("**/v1/download/subscribe/**", refuse)
    open_signed_in(page, create_user())

    job_id = request_file(page, file_id)
    page.wait_for_function("(id) => window.downloadsPage.transport(id) === 'polling'", arg=job_id, polling=50)
    expect(row(page, job_id)).to_have_attribute("data-transport", "polling")
    wait_for_row(
        page,
        job_id,
        "row.dataset.status === 'processing' && Number(row.dataset.progress) > 0"
        " && row.dataset.transport === 'polling'",
    )
    screenshot(page, "polling")

    wait_for_row(page, job_id, "row.dataset.status === 'completed'")
    expect(row(page, job_id).get_by_test_id("job-download")).to_be_visible()
    seen = history(page, job_id)
    assert_monotonic(seen)
    transports = {entry["transport"] for entry in seen}
    assert "polling" in transports, seen
    assert "websocket" not in transports, seen
    # Polling showed the progress on the way, not only the end.
    assert any(entry["status"] == "processing" and 0 < entry["progress"] < 100 for entry in seen), seen
    assert seen[-1]["transport"] == "none", seen
    assert blocked, "the page never tried a WebSocket"
    assert all(urlsplit(url).path == f"/v1/download/subscribe/{job_id}" for url in blocked), blocked


# --- 3b. a socket refused for its ticket ---------------------------------------------------


def test_a_socket_refused_for_its_ticket_goes_on_with_a_fresh_one(page: Page, origin: OriginServer) -> None:
    """The ticket of initiate's websocket_url opens a socket for a few minutes: a page that
    reconnects later is refused 4401. Made here by the test (the first socket is refused as
    the server refuses an expired ticket): the page asks the status, whose answer carries a
    fresh websocket_url, and goes on live with it; its session has not ended."""
    file_id = 72351
    origin.add(file_id, FileScript(size=5 * MiB, rate_bps=2 * MiB))  # ~2.5 s
    urls: list[str] = []

    def refuse_the_first(ws: WebSocketRoute) -> None:
        urls.append(ws.url)
        if len(urls) == 1:
            ws.close(code=4401, reason="ticket expired (made by the test)")
        else:
            ws.connect_to_server()

    page.route_web_socket("**/v1/download/subscribe/**", refuse_the_first)
    open_signed_in(page, create_user())

    job_id = request_file(page, file_id)
    wait_for_row(page, job_id, "row.dataset.transport === 'websocket'")
    wait_for_row(page, job_id, "row.dataset.status === 'completed'")

    expect(page.get_by_test_id("page-message")).not_to_contain_text("session has ended")
    assert len(urls) >= 2, urls
    # Both from the API, with tickets: initiate's, then the status answer's.
    assert all(urlsplit(url).path == f"/v1/download/subscribe/{job_id}" for url in urls), urls
    assert all(parse_qs(urlsplit(url).query).keys() == {"ticket"} for url in urls[:2]), urls
    assert "websocket" in {entry["transport"] for entry in history(page, job_id)}


# --- 4. reload mid-download ----------------------------------------------------------------


def test_reload_mid_download_lists_the_job_and_resumes_live_updates(page: Page, origin: OriginServer) -> None:
    file_id = 72401
    origin.add(file_id, FileScript(size=10 * MiB, rate_bps=5 * MiB // 2))  # ~4 s
    open_signed_in(page, create_user())

    job_id = request_file(page, file_id)
    wait_for_row(
        page,
        job_id,
        "row.dataset.status === 'processing' && Number(row.dataset.progress) > 0"
        " && row.dataset.transport === 'websocket'",
    )

    page.reload()
    wait_until_ready(page)
    assert job_ids(page) == [job_id]
    expect(row(page, job_id).get_by_test_id("job-file-id")).to_have_text(str(file_id))
    # Live again over a new socket while the download is still going.
    wait_for_row(page, job_id, "row.dataset.status === 'processing' && row.dataset.transport === 'websocket'")
    assert page.evaluate("(id) => window.downloadsPage.transport(id)", job_id) == "websocket"

    wait_for_row(page, job_id, "row.dataset.status === 'completed'")
    seen = history(page, job_id)  # this page load only
    assert_monotonic(seen)
    # Listed where it was, not from scratch.
    assert seen[0]["status"] == "processing", seen
    assert seen[0]["progress"] > 0, seen
    live = [
        entry["progress"]
        for entry in seen
        if entry["status"] == "processing" and entry["transport"] == "websocket"
    ]
    assert len(set(live)) >= 2, seen  # progress kept coming over the new socket
    assert "polling" not in {entry["transport"] for entry in seen}, seen
    expect(row(page, job_id).get_by_test_id("job-download")).to_be_visible()


# --- 5. a failed job, and Retry -----------------------------------------------------------


def test_failed_job_shows_its_error_and_retry_starts_a_new_job(page: Page, origin: OriginServer) -> None:
    """A file the origin does not have fails at once with a next step and no Retry; one that
    failed for a passing fault (here 503 on every attempt, three of them) offers Retry, which
    starts a new job that gets the file."""
    missing_id, flaky_id = 72501, 72502
    origin.add(missing_id, FileScript(size=MiB, rate_bps=2 * MiB, faults=["404"]))
    origin.add(flaky_id, FileScript(size=MiB, rate_bps=2 * MiB, faults=["503", "503", "503"]))
    open_signed_in(page, create_user())

    missing_job = request_file(page, missing_id)
    wait_for_row(page, missing_job, "row.dataset.status === 'failed'")
    assert api_status(page, missing_job)["error"]["code"] == "FILE_NOT_FOUND"
    missing_row = row(page, missing_job)
    expect(missing_row.get_by_test_id("job-state")).to_contain_text("Failed")
    expect(missing_row.get_by_test_id("job-error")).to_have_text("No file with this ID. Check the file ID.")
    expect(missing_row.get_by_test_id("job-detail")).to_have_text("Error code FILE_NOT_FOUND.")
    expect(missing_row.get_by_test_id("job-retry")).to_be_hidden()
    expect(missing_row.get_by_test_id("job-cancel")).to_be_hidden()
    expect(missing_row.get_by_test_id("job-download")).to_be_hidden()
    assert history(page, missing_job)[-1]["transport"] == "none"

    failed_job = request_file(page, flaky_id)
    wait_for_row(page, failed_job, "row.dataset.status === 'failed'")
    status = api_status(page, failed_job)
    assert (status["error"]["code"], status["error"]["retryable"]) == ("TEMPORARY_UNAVAILABLE", True), status
    failed_row = row(page, failed_job)
    expect(failed_row.get_by_test_id("job-retry")).to_be_visible()
    screenshot(page, "failed")

    failed_row.get_by_test_id("job-retry").click()
    page.wait_for_function(
        "() => document.querySelectorAll('#downloads-list > li[data-job-id]').length === 3", polling=50
    )
    retry_job = job_ids(page)[0]
    assert retry_job not in (failed_job, missing_job)
    expect(row(page, retry_job).get_by_test_id("job-file-id")).to_have_text(str(flaky_id))
    wait_for_row(page, retry_job, "row.dataset.status === 'completed'")
    assert_monotonic(history(page, retry_job))
    expect(failed_row).to_have_attribute("data-status", "failed")  # the old job stays as it was
    assert origin.requests[flaky_id] == 4


# --- 6. a phone-sized screen ---------------------------------------------------------------


def test_page_is_usable_at_375_px(page: Page, origin: OriginServer) -> None:
    width = 375
    page.set_viewport_size({"width": width, "height": 740})
    long_name = "quarterly-financial-statements-2025-consolidated-final-approved-version.pdf"
    fast_id, slow_id = 72601, 72602
    origin.add(fast_id, FileScript(size=MiB, rate_bps=4 * MiB, file_name=long_name))
    origin.add(slow_id, FileScript(size=6 * MiB, rate_bps=2 * MiB))  # ~3 s
    open_signed_in(page, create_user())

    def assert_fits() -> None:
        scroll_width = page.evaluate("() => document.scrollingElement.scrollWidth")
        assert scroll_width <= width, f"horizontal scroll: {scroll_width} px wide"
        for selector in ["#file-id", "#priority", "#download-submit", "li[data-job-id] button:visible"]:
            for box in [element.bounding_box() for element in page.locator(selector).all()]:
                assert box is not None, selector
                assert box["x"] >= 0, (selector, box)
                assert box["x"] + box["width"] <= width, (selector, box)

    assert_fits()
    fast_job = request_file(page, fast_id)
    wait_for_row(page, fast_job, "row.dataset.status === 'completed'")
    slow_job = request_file(page, slow_id)
    wait_for_row(page, slow_job, "row.dataset.status === 'processing' && Number(row.dataset.progress) > 0")
    expect(row(page, fast_job).get_by_test_id("job-detail")).to_contain_text(long_name)
    assert_fits()
    screenshot(page, "mobile-375")

    # The progress is a progressbar with a name and values, for assistive technology.
    bar = page.get_by_role("progressbar", name=f"Progress of file {slow_id}")
    expect(bar).to_have_count(1)
    expect(bar).to_have_attribute("max", "100")
    value, shown = bar.evaluate("el => [el.value, Number(el.closest('li').dataset.progress)]")
    assert 0 < value <= 100
    assert value == shown
    expect(page.get_by_role("progressbar", name=f"Progress of file {fast_id}")).to_have_js_property(
        "value", 100
    )

    wait_for_row(page, slow_job, "row.dataset.status === 'completed'")
    assert_fits()
