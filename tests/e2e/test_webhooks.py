"""Webhooks end to end: a real stack (uvicorn, a Celery worker, celery beat) calls back a
real receiver process that verifies every delivery with the `standardwebhooks` package.

The receiver listens on 127.0.0.1, which the stack allows as an operator would allow an
internal receiver (WEBHOOK_ALLOWED_HOSTS=127.0.0.1:<port>, WEBHOOK_ALLOW_HTTP); retries
follow a short schedule (WEBHOOK_RETRY_SCHEDULE_S) and beat sends the reaper every second.
"""

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from uuid import uuid4

import httpx
import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone

from jobs.models import DownloadJob
from tests.factories import api_key_for
from tests.support.flows import eventually, initiate, wait_until_finished
from tests.support.origin_server import FileScript, OriginServer
from tests.support.stack import Stack, stack_env
from tests.support.webhook_receiver import ReceiverProcess
from webhooks.models import DeliveryStatus, WebhookDelivery

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# Shared with test_request_budget and test_origin_limits, whose stacks live within their
# own modules: each flushes it before and after.
WEBHOOKS_BROKER_DB = 4
KiB = 1024


@pytest.fixture(scope="module")
def receiver() -> Iterator[ReceiverProcess]:
    process = ReceiverProcess().start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def hooks_stack(
    django_db_setup: None,
    origin_server: OriginServer,
    receiver: ReceiverProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    broker = redis.Redis.from_url(f"{settings.REDIS_URL}/{WEBHOOKS_BROKER_DB}")
    broker.flushdb()
    env = stack_env(
        origin_server,
        {
            "WEBHOOK_ALLOW_HTTP": "true",
            "WEBHOOK_ALLOWED_HOSTS": receiver.host_port,
            "WEBHOOK_RETRY_SCHEDULE_S": "0,0.5,0.5,0.5",
            "WEBHOOK_RETRY_JITTER": "0",
            "WEBHOOK_TIMEOUT_S": "1",
            "WEBHOOK_CLAIM_S": "3",
            "WEBHOOK_REAP_EVERY_S": "1",
            "JOB_EXPIRE_EVERY_S": "1",
        },
        broker_db=WEBHOOKS_BROKER_DB,
    )
    stack = Stack("webhooks", env).start()
    try:
        stack.start_beat(tmp_path_factory.mktemp("webhooks-beat"))
        yield stack
    finally:
        stack.stop_beat()
        stack.stop()
        broker.flushdb()


@pytest.fixture
def api(hooks_stack: Stack) -> Iterator[httpx.Client]:
    user = User.objects.create_user(f"hooks-{uuid4().hex[:12]}")
    with hooks_stack.client(api_key_for(user)) as client:
        yield client


def endpoint_add(api: httpx.Client, receiver: ReceiverProcess, **body: Any) -> dict[str, Any]:
    response = api.post("/v1/webhooks", json={"url": receiver.url, **body})
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def receipts(receiver: ReceiverProcess, job_id: str) -> list[dict[str, Any]]:
    return [r for r in receiver.received() if json.loads(r["body"])["data"]["job_id"] == job_id]


def delivered(job_id: str) -> bool:
    rows = WebhookDelivery.objects.filter(job_id=job_id)
    return rows.exists() and not rows.exclude(status=DeliveryStatus.DELIVERED).exists()


def test_one_verified_delivery_per_event(
    api: httpx.Client, receiver: ReceiverProcess, origin: OriginServer
) -> None:
    secret = endpoint_add(api, receiver)["secret"]
    receiver.control(secrets=[secret])
    origin.add(76001, FileScript(size=64 * KiB))
    origin.add(76003, FileScript(size=4 * 1024 * KiB, rate_bps=256 * KiB))  # ~16 s: cancelled first

    completed = initiate(api, 76001)
    failed = initiate(api, 76002)  # no such file at the origin: FILE_NOT_FOUND, not retried
    cancelled = initiate(api, 76003)
    assert wait_until_finished(api, completed)["status"] == "completed"
    assert wait_until_finished(api, failed)["status"] == "failed"
    assert api.delete(f"/v1/download/{cancelled}").status_code == 200
    # Past its retention: beat's expiry (every second here) expires it.
    DownloadJob.objects.filter(job_id=completed).update(expires_at=timezone.now() - timedelta(seconds=1))
    eventually(lambda: len(receipts(receiver, completed)) == 2, timeout_s=20, what="completed, then expired")
    eventually(
        lambda: delivered(failed) and delivered(cancelled), timeout_s=20, what="failed and cancelled sent"
    )

    seen = {
        job_id: [(json.loads(r["body"])["type"], r["verified_by"]) for r in receipts(receiver, job_id)]
        for job_id in (completed, failed, cancelled)
    }
    assert seen == {
        completed: [("job.completed", [0]), ("job.expired", [0])],
        failed: [("job.failed", [0])],
        cancelled: [("job.cancelled", [0])],
    }
    body = json.loads(receipts(receiver, completed)[0]["body"])
    assert body["data"]["file_size"] == 64 * KiB
    assert body["data"]["sha256"] == origin.files[76001].sha256(76001)
    assert "url" not in json.dumps(body)  # never a link: the receiver collects with its token
    failure = json.loads(receipts(receiver, failed)[0]["body"])["data"]
    assert failure["error_code"] == "FILE_NOT_FOUND"


def test_500_500_200_delivers_the_same_webhook_id_three_times(
    api: httpx.Client, receiver: ReceiverProcess, origin: OriginServer
) -> None:
    secret = endpoint_add(api, receiver, events=["job.completed"])["secret"]
    receiver.control(secrets=[secret], script=[500, 500, 200])
    origin.add(76011, FileScript(size=64 * KiB))
    job_id = initiate(api, 76011)

    eventually(lambda: delivered(job_id), timeout_s=30, what="delivered after two 500s")

    got = receipts(receiver, job_id)
    assert [r["answer"] for r in got] == [500, 500, 200]
    assert len({r["headers"]["webhook-id"] for r in got}) == 1
    assert all(r["verified_by"] == [0] for r in got)
    assert WebhookDelivery.objects.get(job_id=job_id).attempts == 3


def test_a_receiver_that_times_out_is_retried(
    api: httpx.Client, receiver: ReceiverProcess, origin: OriginServer
) -> None:
    secret = endpoint_add(api, receiver, events=["job.completed"])["secret"]
    receiver.control(secrets=[secret], script=["hang", 200], hang_s=3)
    origin.add(76021, FileScript(size=64 * KiB))
    job_id = initiate(api, 76021)

    eventually(lambda: delivered(job_id), timeout_s=30, what="delivered after a timeout")

    got = receipts(receiver, job_id)
    assert [r["answer"] for r in got] == ["hang", 200]
    assert got[0]["headers"]["webhook-id"] == got[1]["headers"]["webhook-id"]


def test_a_delivery_whose_message_is_lost_with_the_worker_is_sent_by_the_reaper_once(
    api: httpx.Client, hooks_stack: Stack, receiver: ReceiverProcess, origin: OriginServer
) -> None:
    """The worker is killed (-9) and the broker loses every message between the job's end
    (committed with its delivery) and the send: only beat's reaper can send it."""
    secret = endpoint_add(api, receiver, events=["job.cancelled"])["secret"]
    receiver.control(secrets=[secret])
    origin.add(76031, FileScript(size=4 * 1024 * KiB, rate_bps=128 * KiB))
    job_id = initiate(api, 76031)
    hooks_stack.kill_worker()
    # Cancelled by the web process: the delivery commits with it, its message goes to a
    # broker that no worker reads, and then the broker loses it.
    assert api.delete(f"/v1/download/{job_id}").status_code == 200
    assert WebhookDelivery.objects.filter(job_id=job_id, status=DeliveryStatus.PENDING).count() == 1
    redis.Redis.from_url(hooks_stack.env["CELERY_BROKER_URL"]).flushdb()
    hooks_stack.start_worker()

    eventually(lambda: delivered(job_id), timeout_s=30, what="the reaper's send")

    got = receipts(receiver, job_id)
    assert [(json.loads(r["body"])["type"], r["verified_by"]) for r in got] == [("job.cancelled", [0])]
    assert WebhookDelivery.objects.get(job_id=job_id).attempts == 1


def test_after_a_rotation_both_signatures_verify(
    api: httpx.Client, receiver: ReceiverProcess, origin: OriginServer
) -> None:
    created = endpoint_add(api, receiver, events=["job.completed"])
    rotated = api.post(f"/v1/webhooks/{created['id']}/rotate")
    assert rotated.status_code == 200, rotated.text
    receiver.control(secrets=[created["secret"], rotated.json()["data"]["secret"]])
    origin.add(76041, FileScript(size=64 * KiB))
    job_id = initiate(api, 76041)

    eventually(lambda: delivered(job_id), timeout_s=30, what="delivered")

    (got,) = receipts(receiver, job_id)
    assert got["verified_by"] == [0, 1]  # a receiver holding either secret accepts it
