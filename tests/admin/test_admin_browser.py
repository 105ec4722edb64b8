"""The admin's pages in a real browser (headless Chromium via Playwright) against a real
ASGI server (uvicorn, no worker: nothing here runs a job): the job list fits 1280 px with
its progress, attempts, duration and created columns in view, and a job's page with its
attempts fits a screen or two. Screenshots go to test-artifacts/screenshots/, or, with
ADMIN_SCREENSHOTS_DIR=docs/screenshots (`make screenshots-admin`), to the README's."""

import os
import random
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from playwright.sync_api import Page, expect

from jobs.models import AttemptOutcome, DownloadJob, JobAttempt, Priority, Status
from jobs.ops.hourly_analytics import download_analytics_refresh
from tests.support.browser import BrowserSession
from tests.support.databases import embedded_only
from tests.support.origin_server import OriginServer
from tests.support.stack import ARTIFACTS, ROOT, Stack, stack_env

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True), embedded_only]

SCREENSHOTS = ROOT / os.environ["ADMIN_SCREENSHOTS_DIR"] if "ADMIN_SCREENSHOTS_DIR" in os.environ else None
WIDTH = 1280
LIST_COLUMNS = (
    "job_short",
    "status",
    "owner",
    "progress_display",
    "attempts_display",
    "duration_display",
    "created_display",
)
MiB = 1024 * 1024
DOCS_SCREENSHOT_MAX_BYTES = 300_000


@pytest.fixture(scope="module")
def admin_stack(django_db_setup: None, origin_server: OriginServer) -> Iterator[Stack]:
    """uvicorn alone: the admin reads the broker's queues (database 0, which no stack's
    worker of this module uses) and needs no worker."""
    stack = Stack("admin", stack_env(origin_server, {}, broker_db=0)).start(worker=False)
    yield stack
    stack.stop()


@pytest.fixture
def seeded(db: None) -> tuple[str, DownloadJob]:
    """The operator's session (a cookie's value) and the job with three attempts; made
    before the browser runs (Django refuses the ORM while Playwright's loop is marked)."""
    return operator_session(), seeded_jobs()


@pytest.fixture
def page(
    browser_session: BrowserSession, admin_stack: Stack, seeded: tuple[str, DownloadJob]
) -> Iterator[Page]:
    """A page at 1280 px, signed in as the operator."""
    browser_session.enter()
    try:
        context = browser_session.browser.new_context(
            base_url=admin_stack.base_url, viewport={"width": WIDTH, "height": 800}
        )
        try:
            context.set_default_timeout(20_000)
            context.add_cookies(
                [{"name": settings.SESSION_COOKIE_NAME, "value": seeded[0], "url": admin_stack.base_url}]
            )
            yield context.new_page()
        finally:
            context.close()
    finally:
        browser_session.leave()


def operator_session() -> str:
    client = Client()
    client.force_login(User.objects.create_superuser("operator", password="x"))
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def seeded_jobs() -> DownloadJob:
    """A day of jobs of three users, as an operator would find them; returns one that
    took three attempts, for its page."""
    rng = random.Random(7)
    now = timezone.now()
    users = [User.objects.create_user(name) for name in ("alice", "bob", "carol")]
    for i in range(40):
        created = now - timedelta(minutes=rng.randint(1, 20 * 60))
        status = rng.choice(
            [Status.COMPLETED] * 6 + [Status.FAILED, Status.CANCELLED, Status.QUEUED, Status.PROCESSING]
        )
        duration = rng.uniform(2, 40) if status == Status.COMPLETED else None
        size = rng.randint(1, 900) * MiB if status == Status.COMPLETED else None
        job = DownloadJob.objects.create(
            owner=users[i % 3 if i % 5 else 0],
            file_id=70000 + i,
            status=status,
            priority=rng.choice(list(Priority)),
            progress=100 if status == Status.COMPLETED else rng.randint(0, 95),
            attempts=1 if status != Status.QUEUED else 0,
            duration_seconds=duration,
            file_size_bytes=size,
            error_code="FILE_NOT_FOUND"
            if status == Status.FAILED and i % 2
            else ("ORIGIN_UNAVAILABLE" if status == Status.FAILED else ""),
            failed_at=created + timedelta(seconds=30) if status == Status.FAILED else None,
        )
        DownloadJob.objects.filter(pk=job.pk).update(created_at=created)
    started = now - timedelta(minutes=14)
    job = DownloadJob.objects.create(
        owner=users[0],
        file_id=71234,
        status=Status.COMPLETED,
        progress=100,
        attempts=3,
        max_attempts=3,
        bytes_done=420 * MiB,
        bytes_total=420 * MiB,
        file_size_bytes=420 * MiB,
        file_name="survey-2026.tar",
        content_type="application/x-tar",
        started_at=started + timedelta(minutes=3),
        completed_at=now - timedelta(minutes=9),
        duration_seconds=120.4,
        storage_key="downloads/1/job-3",
    )
    DownloadJob.objects.filter(pk=job.pk).update(created_at=started - timedelta(seconds=20))
    for number, (start_s, end_s, outcome, code, done) in enumerate(
        [
            (0, 41, AttemptOutcome.RETRIED, "NETWORK_ERROR", 96 * MiB),
            (46, 95, AttemptOutcome.RETRIED, "TEMPORARY_UNAVAILABLE", 180 * MiB),
            (180, 300, AttemptOutcome.COMPLETED, "", 420 * MiB),
        ],
        start=1,
    ):
        JobAttempt.objects.create(
            job=job,
            number=number,
            started_at=started + timedelta(seconds=start_s),
            ended_at=started + timedelta(seconds=end_s),
            outcome=outcome,
            error_code=code,
            bytes_done=done,
            worker=f"worker-{number % 2 + 1}:{4100 + number}",
        )
    download_analytics_refresh()  # PostgreSQL: the hourly figures are a view beat refreshes
    return job


def shoot(page: Page, name: str, *, full_page: bool = True) -> Path:
    folder = SCREENSHOTS or ARTIFACTS / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page, type="png")
    if SCREENSHOTS is not None:
        assert path.stat().st_size < DOCS_SCREENSHOT_MAX_BYTES, path  # the README's stay small
    return path


def test_the_job_list_fits_1280_px_with_its_columns_in_view(page: Page) -> None:
    page.goto("/admin/jobs/downloadjob/")
    expect(page.locator("#result_list")).to_be_visible()
    shoot(page, "admin-jobs", full_page=False)

    results = page.locator(".results").bounding_box()
    assert results is not None
    for column in LIST_COLUMNS:
        header = page.locator(f"#result_list th.column-{column}")
        expect(header).to_be_visible()
        box = header.bounding_box()
        assert box is not None, column
        assert box["x"] + box["width"] <= min(results["x"] + results["width"], WIDTH) + 1, column
    overflow = page.evaluate(
        "() => { const r = document.querySelector('.results'); return r.scrollWidth - r.clientWidth; }"
    )
    assert overflow <= 0
    expect(page.locator("#result_list td.field-progress_display .job-progress").first).to_be_visible()


def test_a_jobs_page_with_its_attempts_is_short_and_has_its_buttons(
    page: Page, seeded: tuple[str, DownloadJob]
) -> None:
    job = seeded[1]

    page.goto(f"/admin/jobs/downloadjob/{job.pk}/change/")

    expect(page.locator("#attempt_log-group")).to_be_visible()
    expect(page.locator("#attempt_log-group tbody tr.has_original")).to_have_count(3)
    expect(page.locator("#job-retry")).to_have_count(0)  # completed: nothing to retry or cancel
    expect(page.get_by_role("heading", name="Stored file")).to_be_visible()
    expect(page.get_by_text(job.storage_key)).to_be_hidden()  # folded
    height = page.evaluate("() => document.documentElement.scrollHeight")
    assert height < 1400, height
    shoot(page, "admin-job")


def test_the_operations_page_draws_its_charts(page: Page) -> None:
    page.goto("/admin/")
    page.get_by_role("link", name="Operations and analytics").click()

    expect(page.locator("#failures-by-code")).to_be_visible()
    expect(page.locator("#heavy-users tbody tr")).to_have_count(3)
    expect(page.locator("svg[role=img]")).to_have_count(4)
    shoot(page, "admin-analytics")
