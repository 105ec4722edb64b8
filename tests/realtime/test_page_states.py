"""The downloads page as its users expect it, in a real browser against the page stack
(tests/realtime/conftest.py): a list that follows jobs started elsewhere, one job per
submit, a queued card's place in line, "Reconnecting…" while offline, failures worded by
their code, and cards that read the same before and after a reload.

Rows in states that a test cannot wait for (queued behind others, failed with a given code,
stopped part-way) are written to the table (tests/factories.py): no message is sent for
them, so the stack's worker leaves them as they are.

With UPDATE_SCREENSHOTS=1 the reload test also writes the README's screenshots
(docs/screenshots/page-desktop.png and page-phone.png).
"""

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from playwright.sync_api import Page, ViewportSize, expect

from jobs.models import DownloadJob, Status
from tests.factories import api_key_for, make_job
from tests.support.databases import embedded_only
from tests.support.origin_server import FileScript, OriginServer
from tests.support.page import (
    MiB,
    create_user,
    job_ids,
    open_signed_in,
    outside_playwright,
    request_file,
    row,
    screenshot,
    wait_for_row,
    wait_until_ready,
)
from tests.support.stack import Stack

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True), embedded_only]

DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 375, "height": 740}
SIZES = pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
LIST_POLL_WAIT_MS = 15_000
# A queued card behind one other job; the estimate from the rate of the test's completions.
PLACE = re.compile(
    r"2nd in line\. Ready in about (\d+ s|\d+ min( \d+ s)?)\."
)  # the page asks for the list every 10 s


def rows_of(user: User, **fields: Any) -> DownloadJob:
    with outside_playwright():
        return make_job(user, **fields)


def card_texts(page: Page) -> dict[str, str]:
    """Each card's visible text, by job id; a wait's estimate (from the completion rate,
    which moves with the clock) as `N`."""
    texts = page.eval_on_selector_all(
        "#downloads-list > li[data-job-id]",
        "rows => Object.fromEntries(rows.map(r => [r.dataset.jobId, r.innerText]))",
    )
    return {
        job_id: re.sub(r"Ready in about [^.]+\.", "Ready in about N.", text) for job_id, text in texts.items()
    }


# --- 1. the list follows jobs started elsewhere --------------------------------------------


def test_a_tab_opened_earlier_lists_jobs_started_elsewhere(
    page: Page, page_stack: Stack, origin: OriginServer
) -> None:
    file_id = 72701
    origin.add(file_id, FileScript(size=2 * MiB, rate_bps=2 * MiB))
    user = create_user()
    with outside_playwright():
        key = api_key_for(user)
    open_signed_in(page, user)
    expect(page.get_by_test_id("downloads-empty")).to_have_text(
        "You have no downloads yet. Request a file above."
    )

    with page_stack.client(key) as client:  # as the API or the command-line client would
        answer = client.post("/v1/download/initiate", json={"file_id": file_id})
    assert answer.status_code == 200, answer.text
    job_id = answer.json()["data"]["job_id"]

    wait_for_row(page, job_id, "true", timeout_ms=LIST_POLL_WAIT_MS)
    expect(page.get_by_test_id("downloads-empty")).to_be_hidden()
    wait_for_row(page, job_id, "row.dataset.status === 'completed'")  # and followed live from there
    expect(row(page, job_id).get_by_test_id("job-detail")).to_contain_text("MB")
    assert job_ids(page) == [job_id]


# --- 2. one job per submit -----------------------------------------------------------------


def test_a_double_click_then_enter_starts_one_job(page: Page, origin: OriginServer) -> None:
    file_id = 72702
    origin.add(file_id, FileScript(size=MiB, rate_bps=4 * MiB))
    user = create_user()
    open_signed_in(page, user)
    initiated: list[str] = []
    page.on("requestfinished", lambda r: initiated.append(r.url) if "/initiate" in r.url else None)
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if "/initiate" in r.url else None)

    page.locator("#file-id").fill(str(file_id))
    page.locator("#download-submit").dblclick()
    page.locator("#file-id").press("Enter")

    page.wait_for_function("() => document.querySelectorAll('#downloads-list > li').length >= 1")
    expect(page.locator("#download-submit")).not_to_have_attribute("aria-busy", "true")
    page.wait_for_function("() => !document.querySelector('#download-submit[aria-busy]')")
    assert len(initiated) == len(sent), (sent, initiated)  # every request answered
    with outside_playwright():
        assert DownloadJob.objects.filter(owner=user).count() == 1
    assert len(job_ids(page)) == 1


# --- 3. a queued card's place in line ------------------------------------------------------


@SIZES
def test_a_queued_card_shows_its_place_in_line(page: Page, size: ViewportSize) -> None:
    page.set_viewport_size(size)
    user, other = create_user(), create_user()
    ahead = [rows_of(other, file_id=72710 + n) for n in range(2)]
    mine = rows_of(user, file_id=72713)
    open_signed_in(page, user)

    detail = row(page, mine.job_id).get_by_test_id("job-detail")
    expect(detail).to_have_text("3rd in line. Ready in about 1 min.")
    expect(row(page, mine.job_id)).not_to_contain_text("worker")
    screenshot(page, f"queued-place-{size['width']}")

    with outside_playwright():  # the first in line leaves: the card moves up, no reload
        DownloadJob.objects.filter(pk=ahead[0].pk).update(status=Status.CANCELLED)
    expect(detail).to_have_text("2nd in line. Ready in about 1 min.", timeout=10_000)


# --- 4. offline ----------------------------------------------------------------------------


def test_offline_the_card_says_reconnecting_and_recovers(page: Page, origin: OriginServer) -> None:
    file_id = 72720
    origin.add(file_id, FileScript(size=12 * MiB, rate_bps=MiB))  # ~12 s
    open_signed_in(page, create_user())
    job_id = request_file(page, file_id)
    wait_for_row(page, job_id, "row.dataset.status === 'processing' && Number(row.dataset.progress) > 0")
    wait_for_row(page, job_id, "row.dataset.transport === 'websocket'")
    job_row = row(page, job_id)

    page.context.set_offline(True)
    expect(job_row.get_by_test_id("job-state")).to_have_text("Reconnecting…")
    expect(job_row).to_have_attribute("data-connection", "lost")
    expect(job_row.get_by_test_id("job-detail")).not_to_contain_text("left")  # no countdown
    screenshot(page, "offline-reconnecting")

    page.context.set_offline(False)
    expect(job_row.get_by_test_id("job-state")).to_have_text("Processing")
    expect(job_row).to_have_attribute("data-connection", "live")
    wait_for_row(page, job_id, "row.dataset.status === 'completed'", timeout_ms=30_000)


# --- 5. a failure worded by its code -------------------------------------------------------


def test_a_failure_says_what_to_do_and_offers_retry_only_when_it_may_work(page: Page) -> None:
    user = create_user()
    not_found = rows_of(
        user,
        file_id=72730,
        status=Status.FAILED,
        error_code="FILE_NOT_FOUND",
        error_message="HTTP 404",
        error_retryable=False,
        attempts=1,
    )
    unavailable = rows_of(
        user,
        file_id=72731,
        status=Status.FAILED,
        error_code="TEMPORARY_UNAVAILABLE",
        error_message="Origin answered HTTP 503",
        error_retryable=True,
        attempts=3,
    )
    open_signed_in(page, user)

    card = row(page, not_found.job_id)
    expect(card.get_by_test_id("job-error")).to_have_text("No file with this ID. Check the file ID.")
    expect(card.get_by_test_id("job-retry")).to_be_hidden()
    expect(card.get_by_test_id("job-detail")).to_have_text("Error code FILE_NOT_FOUND.")
    card = row(page, unavailable.job_id)
    expect(card.get_by_test_id("job-error")).to_have_text(
        "The file's source is unavailable at the moment. Try again."
    )
    expect(card.get_by_test_id("job-retry")).to_be_visible()
    expect(page.locator("#downloads-list")).not_to_contain_text("origin")


# --- 6. the "too many downloads" message goes once one ends --------------------------------


def test_the_active_limit_message_goes_once_a_download_ends(page: Page) -> None:
    user = create_user()
    active = [rows_of(user, file_id=72740 + n) for n in range(5)]
    open_signed_in(page, user)

    page.locator("#file-id").fill("72749")
    page.locator("#download-submit").click()
    message = page.get_by_test_id("page-message")
    expect(message).to_have_attribute("data-kind", "error")
    expect(message).to_contain_text("5")

    row(page, active[0].job_id).get_by_test_id("job-cancel").click()
    # The job's end and the cancel's answer each replace the message, in either order.
    expect(message).to_have_attribute("data-kind", "info")
    expect(message).to_have_text(
        re.compile(r"A download has ended: you can request another file\.|Download of file 72740 cancelled\.")
    )


# --- 7. the new card in view on a phone -----------------------------------------------------


def test_on_a_phone_the_new_card_is_scrolled_into_view(page: Page, origin: OriginServer) -> None:
    page.set_viewport_size(PHONE)
    file_id = 72750
    origin.add(file_id, FileScript(size=MiB, rate_bps=4 * MiB))
    user = create_user()
    for n in range(3):
        rows_of(user, file_id=72751 + n, status=Status.CANCELLED)
    open_signed_in(page, user)

    job_id = request_file(page, file_id)
    page.wait_for_function(
        """(id) => {
            const box = document.querySelector(`li[data-job-id="${id}"]`).getBoundingClientRect();
            return box.top >= 0 && box.bottom <= window.innerHeight;
        }""",
        arg=job_id,
    )
    screenshot(page, "phone-new-card")


# --- 8. every card the same before and after a reload --------------------------------------


@SIZES
def test_every_card_reads_the_same_after_a_reload(
    page: Page, origin: OriginServer, size: ViewportSize
) -> None:
    page.set_viewport_size(size)
    stored_id, slow_id = 72760, 72761
    origin.add(stored_id, FileScript(size=MiB + 7, rate_bps=4 * MiB, file_name="survey results.csv"))
    origin.add(slow_id, FileScript(size=20 * MiB, rate_bps=2 * MiB))  # ~10 s: cancelled before
    user, other = create_user(), create_user()
    now = timezone.now()
    rows_of(
        user,
        file_id=72762,
        status=Status.COMPLETED,
        file_name="last year.zip",
        file_size_bytes=3 * MiB,
        progress=100,
        completed_at=now,
        expires_at=now + timedelta(days=1),
    )
    with outside_playwright():
        DownloadJob.objects.filter(owner=user).update(created_at=now - timedelta(days=2))
    rows_of(
        user,
        file_id=72763,
        status=Status.FAILED,
        error_code="FILE_NOT_FOUND",
        error_message="HTTP 404",
        error_retryable=False,
        attempts=1,
    )
    rows_of(other, file_id=72764)  # ahead of the queued one
    rows_of(user, file_id=72765)  # queued, 2nd in line
    rows_of(
        user,
        file_id=72766,
        status=Status.PROCESSING,
        attempts=1,
        progress=40,
        bytes_done=4 * MiB,
        bytes_total=10 * MiB,
    )
    open_signed_in(page, user)

    completed = request_file(page, stored_id)
    wait_for_row(page, completed, "row.dataset.status === 'completed'")
    # The stored file, at once. (Another priority: the same file and priority again this soon
    # would be taken for a double submit, and answered with the same job.)
    page.locator("#priority").select_option("high")
    reused = request_file(page, stored_id)
    wait_for_row(page, reused, "row.dataset.status === 'completed'")
    reused_card = row(page, reused)
    expect(reused_card.get_by_test_id("job-detail")).to_contain_text("survey results.csv")
    expect(reused_card.get_by_test_id("job-detail")).to_contain_text("available until")
    expect(reused_card.get_by_test_id("job-progress")).to_have_js_property("value", 100)
    cancelled = request_file(page, slow_id)
    wait_for_row(page, cancelled, "row.dataset.status === 'processing' && Number(row.dataset.progress) >= 5")
    row(page, cancelled).get_by_test_id("job-cancel").click()
    wait_for_row(page, cancelled, "row.dataset.status === 'cancelled'")
    stopped_at = row(page, cancelled).get_attribute("data-progress")
    expect(row(page, cancelled).get_by_test_id("job-detail")).to_have_text(f"Stopped at {stopped_at}%.")
    page.wait_for_function(
        "() => document.querySelectorAll('#downloads-list [data-connection=\"lost\"]').length === 0"
    )
    expect(page.locator('li[data-status="queued"] [data-testid=job-detail]')).to_have_text(PLACE)
    page.evaluate("() => window.scrollTo(0, 0)")
    before = card_texts(page)
    assert len(before) == 7, before
    assert re.search(r"\d{4}", before[job_ids(page)[-1]]), before  # two days ago: with its date
    screenshot(page, f"cards-before-reload-{size['width']}")
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        name = "page-desktop" if size is DESKTOP else "page-phone"
        page.screenshot(path=str(DOCS_SCREENSHOTS / f"{name}.png"), full_page=False)

    page.reload()
    wait_until_ready(page)
    expect(page.locator('li[data-status="queued"] [data-testid=job-detail]')).to_have_text(PLACE)
    after = card_texts(page)
    screenshot(page, f"cards-after-reload-{size['width']}")
    assert after == before
