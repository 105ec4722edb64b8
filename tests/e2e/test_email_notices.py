"""E-mail notices end to end: a real stack (uvicorn and a Celery worker) whose EMAIL_URL
points at a real SMTP server in this process (aiosmtpd), driven through the HTTP API."""

from collections.abc import Iterator
from random import randrange
from typing import Any
from uuid import uuid4

import httpx
import pytest
import redis
from celery import Celery
from django.conf import settings

from notices.models import EmailNotice
from tests.factories import api_key_for
from tests.support.flows import eventually, initiate, wait_until_finished
from tests.support.origin_server import FileScript, OriginServer
from tests.support.smtp_server import SmtpServer
from tests.support.stack import ARTIFACTS, Stack, stack_env

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# Shared with test_origin_limits and test_request_budget: module-scoped stacks never overlap.
EMAIL_BROKER_DB = 4
SITE_URL = "https://downloads.example.test"


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def email_stack(django_db_setup: None, origin_server: OriginServer, smtp: SmtpServer) -> Iterator[Stack]:
    redis.Redis.from_url(f"{settings.REDIS_URL}/{EMAIL_BROKER_DB}").flushdb()
    env = stack_env(
        origin_server,
        {"EMAIL_URL": smtp.url, "SITE_URL": SITE_URL, "EMAIL_NOTICE_RETRY_BACKOFF_S": "0.3,0.3,0.3"},
        broker_db=EMAIL_BROKER_DB,
    )
    stack = Stack("email", env).start()
    yield stack
    stack.stop()


@pytest.fixture
def person(django_user_model: Any, smtp: SmtpServer) -> tuple[str, httpx.Client]:
    """A user with an e-mail address of their own (committed: the stack sees it), and an API client."""
    smtp.reset()
    name = f"mail-{uuid4().hex[:12]}"
    user = django_user_model.objects.create_user(name, email=f"{name}@example.test")
    return user.email, httpx.Client(
        base_url="", headers={"Authorization": f"Token {api_key_for(user)}"}, timeout=10
    )


def api_of(stack: Stack, client: httpx.Client) -> httpx.Client:
    client.base_url = httpx.URL(stack.base_url)
    return client


def small_file(origin: OriginServer) -> int:
    file_id = randrange(10**6, 10**9)
    origin.add(file_id, FileScript(size=64 * 1024, file_name=f"report-{file_id}.pdf"))
    return file_id


def test_a_completed_job_sends_one_email_with_its_page_link(
    email_stack: Stack, origin_server: OriginServer, smtp: SmtpServer, person: tuple[str, httpx.Client]
) -> None:
    address, client = person
    api = api_of(email_stack, client)
    file_id = small_file(origin_server)
    job_id = initiate(api, file_id, notify=["email"])
    assert wait_until_finished(api, job_id)["status"] == "completed"

    eventually(lambda: len(smtp.to(address)) == 1, timeout_s=15, what="the e-mail arrives")
    [received] = smtp.to(address)
    assert received.envelope_to == [address]
    assert received.message["To"] == address
    assert received.message["Subject"] == f"Your download is ready: report-{file_id}.pdf"
    assert str(received.message["Message-ID"]).strip().startswith("<email-notice-")
    assert f"{SITE_URL}/#{job_id}\n" in received.text
    assert "/files/" not in received.text


def test_a_refused_send_is_retried_and_the_email_arrives_once(
    email_stack: Stack, origin_server: OriginServer, smtp: SmtpServer, person: tuple[str, httpx.Client]
) -> None:
    address, client = person
    api = api_of(email_stack, client)
    smtp.refuse_next("451 4.3.0 Try again later", "421 4.7.0 Too busy")
    job_id = initiate(api, small_file(origin_server), notify=["email"])
    wait_until_finished(api, job_id)

    eventually(lambda: len(smtp.to(address)) == 1, timeout_s=20, what="the e-mail arrives after two refusals")
    assert smtp.refused == 2
    # The server has the message a moment before the worker records it sent.
    eventually(
        lambda: EmailNotice.objects.filter(job__job_id=job_id, sent_at__isnull=False).exists(),
        timeout_s=10,
        what="the notice is recorded as sent",
    )
    notice = EmailNotice.objects.get(job__job_id=job_id)
    assert notice.attempts == 3

    # More sends of the same notice (a duplicated message, a late retry) send nothing.
    sender = Celery(broker=email_stack.env["CELERY_BROKER_URL"])
    task_ids = [
        sender.send_task("notices.email_notice_send", args=(notice.pk,), queue="downloads.high").id
        for _ in range(3)
    ]
    worker_log = ARTIFACTS / "logs" / "email-worker.log"
    eventually(
        lambda: all(f"{task_id}] succeeded" in worker_log.read_text() for task_id in task_ids),
        timeout_s=15,
        what="the worker ran the three duplicate sends",
    )
    assert all(
        f"{task_id}] succeeded" in line and "'not_claimed'" in line
        for task_id in task_ids
        for line in worker_log.read_text().splitlines()
        if f"{task_id}] succeeded" in line
    )
    assert len(smtp.to(address)) == 1
    assert EmailNotice.objects.get(pk=notice.pk).attempts == 3


def test_a_failed_job_email_says_it_failed(
    email_stack: Stack, origin_server: OriginServer, smtp: SmtpServer, person: tuple[str, httpx.Client]
) -> None:
    address, client = person
    api = api_of(email_stack, client)
    file_id = randrange(10**6, 10**9)  # no such file at the origin
    job_id = initiate(api, file_id, notify=["email"])
    assert wait_until_finished(api, job_id)["status"] == "failed"

    eventually(lambda: len(smtp.to(address)) == 1, timeout_s=15, what="the e-mail arrives")
    [received] = smtp.to(address)
    assert received.message["Subject"] == f"Your download failed: file {file_id}"
    assert "failed:" in received.text
    assert "(FILE_NOT_FOUND)" in received.text
    assert f"{SITE_URL}/#{job_id}\n" in received.text


def test_a_job_that_asked_for_nothing_sends_nothing(
    email_stack: Stack, origin_server: OriginServer, smtp: SmtpServer, person: tuple[str, httpx.Client]
) -> None:
    address, client = person
    api = api_of(email_stack, client)
    job_id = initiate(api, small_file(origin_server))
    wait_until_finished(api, job_id)
    assert not EmailNotice.objects.filter(job__job_id=job_id).exists()
    assert smtp.to(address) == []
