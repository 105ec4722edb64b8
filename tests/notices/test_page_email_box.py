"""The downloads page's "E-mail me when it's ready" box in a real browser (Chromium through
Playwright), against a real stack whose mail goes to a real SMTP server in this process:
the box is the user's remembered default, and the request it sends gets its e-mail."""

from collections.abc import Iterator
from random import randrange
from typing import Any
from uuid import uuid4

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from notices.models import EmailNotice, NotificationPreference
from tests.support.browser import BrowserSession
from tests.support.databases import embedded_only
from tests.support.flows import eventually
from tests.support.origin_server import FileScript, OriginServer
from tests.support.page import open_signed_in, outside_playwright, page_open, request_file
from tests.support.smtp_server import SmtpServer
from tests.support.stack import Stack, stack_env

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True), embedded_only]

# Shared with the other module-scoped stacks on 4 (tests/e2e/test_email_notices.py): never at once.
BOX_BROKER_DB = 4
SITE_URL = "https://downloads.example.test"


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def box_stack(django_db_setup: None, origin_server: OriginServer, smtp: SmtpServer) -> Iterator[Stack]:
    redis.Redis.from_url(f"{settings.REDIS_URL}/{BOX_BROKER_DB}").flushdb()
    env = stack_env(origin_server, {"EMAIL_URL": smtp.url, "SITE_URL": SITE_URL}, broker_db=BOX_BROKER_DB)
    stack = Stack("email-box", env).start()
    yield stack
    stack.stop()


@pytest.fixture
def page(browser_session: BrowserSession, box_stack: Stack) -> Iterator[Page]:
    with page_open(browser_session, box_stack.base_url) as page:
        yield page


def a_user(django_user_model: Any, *, email: str) -> User:
    with outside_playwright():
        return django_user_model.objects.create_user(f"box-{uuid4().hex[:12]}", email=email)


def small_file(origin: OriginServer) -> int:
    file_id = randrange(10**6, 10**9)
    origin.add(file_id, FileScript(size=32 * 1024, file_name=f"sheet-{file_id}.pdf"))
    return file_id


def test_the_ticked_box_is_remembered_and_its_download_is_mailed(
    page: Page, django_user_model: Any, origin_server: OriginServer, smtp: SmtpServer
) -> None:
    smtp.reset()
    address = f"box-{uuid4().hex[:8]}@example.test"
    user = a_user(django_user_model, email=address)
    open_signed_in(page, user)
    box = page.get_by_label("E-mail me when it's ready")
    expect(box).to_be_visible()
    expect(box).not_to_be_checked()
    expect(page.get_by_test_id("notify-email-hint")).to_contain_text(f"One e-mail to {address}")

    box.check()
    with outside_playwright():
        eventually(
            lambda: NotificationPreference.objects.filter(user=user, email_when_finished=True).exists(),
            timeout_s=10,
            what="the choice is saved",
        )
    page.reload()
    expect(page.get_by_label("E-mail me when it's ready")).to_be_checked()

    with page.expect_request("**/v1/download/initiate") as sent:
        job_id = request_file(page, small_file(origin_server))
    assert (sent.value.post_data_json or {}).get("notify") == ["email"]
    expect(page.locator(f'li[data-job-id="{job_id}"]')).to_have_attribute("data-status", "completed")
    eventually(lambda: len(smtp.to(address)) == 1, timeout_s=15, what="the e-mail arrives")
    [received] = smtp.to(address)
    assert received.message["Subject"].startswith("Your download is ready: sheet-")
    assert f"{SITE_URL}/#{job_id}\n" in received.text

    # Unticked, the next request asks for nothing.
    page.get_by_label("E-mail me when it's ready").uncheck()
    with outside_playwright():
        eventually(
            lambda: NotificationPreference.objects.filter(user=user, email_when_finished=False).exists(),
            timeout_s=10,
            what="the choice is saved",
        )
    with page.expect_request("**/v1/download/initiate") as sent:
        other_job = request_file(page, small_file(origin_server))
    assert (sent.value.post_data_json or {}).get("notify") == []
    expect(page.locator(f'li[data-job-id="{other_job}"]')).to_have_attribute("data-status", "completed")
    with outside_playwright():
        assert not EmailNotice.objects.filter(job__job_id=other_job).exists()
        assert EmailNotice.objects.filter(job__job_id=job_id).count() == 1


def test_without_an_address_the_box_is_off_and_says_why(page: Page, django_user_model: Any) -> None:
    user = a_user(django_user_model, email="")
    open_signed_in(page, user)
    box = page.get_by_label("E-mail me when it's ready")
    expect(box).to_be_visible()
    expect(box).to_be_disabled()
    expect(page.get_by_test_id("notify-email-hint")).to_have_text(
        "Your account has no e-mail address to send it to."
    )
