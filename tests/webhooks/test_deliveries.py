"""Deliveries, attempt by attempt, against a real receiver that verifies each with the
`standardwebhooks` package: what is recorded with a job's end, what is sent, how each
answer is taken, the schedule, the claim, the reaper and the address check at send time.
The broker is the one fake (`sent`); each test runs the attempts itself."""

import json
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from prometheus_client import REGISTRY

from jobs import services as job_services
from jobs.models import DownloadJob, Status
from tests import factories
from webhooks import services
from webhooks.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from webhooks.services import webhook_delivery_attempt as attempt


@pytest.fixture
def endpoint(user: Any, hook_settings: Any, receiver: Any) -> WebhookEndpoint:
    made, secret = services.webhook_endpoint_create(
        owner=user, url=receiver.url, events=["job.completed", "job.cancelled", "job.failed", "job.expired"]
    )
    receiver.control(secrets=[secret])
    return made


def cancelled_job(user: Any, **fields: Any) -> DownloadJob:
    job = factories.make_job(user, **fields)
    job_services.download_job_cancel(job=job)
    return job


def only_delivery() -> WebhookDelivery:
    (delivery,) = WebhookDelivery.objects.all()
    return delivery


def outcomes(outcome: str) -> float:
    return REGISTRY.get_sample_value("download_webhook_deliveries_total", {"outcome": outcome}) or 0.0


def test_a_jobs_end_records_a_delivery_and_sends_it_once_committed(
    user, endpoint, receiver, sent, dispatched, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        job = cancelled_job(user)
    delivery = only_delivery()
    assert sent == [(delivery.pk, 0)]
    assert (delivery.event, delivery.job_id, delivery.status) == ("job.cancelled", job.job_id, "pending")

    before = outcomes("delivered")
    assert attempt(delivery_pk=delivery.pk) == "delivered"

    (received,) = receiver.received()
    assert received["verified_by"] == [0]
    assert received["headers"]["webhook-id"] == delivery.message_id
    assert received["headers"]["content-type"] == "application/json"
    body = json.loads(received["body"])
    assert body["type"] == "job.cancelled"
    assert body["data"] == {
        "job_id": job.job_id,
        "file_id": 70000,
        "status": "cancelled",
        "file_name": None,
        "file_size": None,
        "sha256": None,
        "expires_at": None,
        "error_code": None,
        "error_message": None,
    }
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 200)
    assert delivery.delivered_at is not None
    assert outcomes("delivered") == before + 1
    assert attempt(delivery_pk=delivery.pk) is None  # nothing left to send


def test_500_500_200_sends_the_same_webhook_id_three_times(
    user, endpoint, receiver, sent, dispatched, settings
):
    settings.WEBHOOK_RETRY_SCHEDULE_S = [0, 0, 0, 0]
    receiver.control(script=[500, 500, 200])
    cancelled_job(user)
    delivery = only_delivery()
    assert [attempt(delivery_pk=delivery.pk) for _ in range(3)] == ["retried", "retried", "delivered"]
    received = receiver.received()
    assert [r["headers"]["webhook-id"] for r in received] == [delivery.message_id] * 3
    assert all(r["verified_by"] == [0] for r in received)
    assert [r["answer"] for r in received] == [500, 500, 200]
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("delivered", 3)


def test_a_retry_waits_its_turn_in_the_schedule(user, endpoint, receiver, sent, dispatched):
    receiver.control(script=[503])
    cancelled_job(user)
    delivery = only_delivery()
    sent.clear()
    assert attempt(delivery_pk=delivery.pk) == "retried"
    delivery.refresh_from_db()
    wait_s = (delivery.next_attempt_at - timezone.now()).total_seconds()
    assert 4 < wait_s <= 5  # the schedule's second step, 5 s (no jitter here)
    assert sent == [(delivery.pk, 5.0)]  # sent with its countdown
    assert (delivery.last_status_code, delivery.last_error) == (503, "HTTP 503")
    assert attempt(delivery_pk=delivery.pk) is None  # not due yet
    assert len(receiver.received()) == 1


def test_the_schedule_is_standard_webhooks_with_jitter(settings):
    settings.WEBHOOK_RETRY_SCHEDULE_S = [0, 5, 300, 1800, 7200, 18000, 36000, 36000]
    settings.WEBHOOK_RETRY_JITTER = 0.1
    assert [services.retry_delay_s(n, rand=lambda: 0.5) for n in range(1, 9)] == [
        5,
        300,
        1800,
        7200,
        18000,
        36000,
        36000,
        None,
    ]
    assert services.retry_delay_s(1, rand=lambda: 0.0) == pytest.approx(4.5)
    assert services.retry_delay_s(1, rand=lambda: 1.0) == pytest.approx(5.5)


def test_a_retry_hours_away_is_left_to_the_reaper(user, endpoint, receiver, sent, dispatched, settings):
    settings.WEBHOOK_RETRY_SCHEDULE_S = [0, 3600]
    receiver.control(script=[500])
    cancelled_job(user)
    delivery = only_delivery()
    sent.clear()
    assert attempt(delivery_pk=delivery.pk) == "retried"
    assert sent == []


def test_the_schedule_spent_fails_the_delivery(user, endpoint, receiver, sent, dispatched, settings):
    settings.WEBHOOK_RETRY_SCHEDULE_S = [0, 0]
    receiver.control(script=[500, 429])
    cancelled_job(user)
    delivery = only_delivery()
    assert [attempt(delivery_pk=delivery.pk) for _ in range(2)] == ["retried", "failed"]
    delivery.refresh_from_db()
    assert (delivery.status, delivery.last_status_code, delivery.next_attempt_at) == ("failed", 429, None)


def test_a_receiver_that_times_out_is_retried(user, endpoint, receiver, sent, dispatched, settings):
    settings.WEBHOOK_TIMEOUT_S = 0.3
    settings.WEBHOOK_RETRY_SCHEDULE_S = [0, 0]
    receiver.control(script=["hang", 200], hang_s=1.5)
    cancelled_job(user)
    delivery = only_delivery()
    assert attempt(delivery_pk=delivery.pk) == "retried"
    delivery.refresh_from_db()
    assert delivery.last_error == "timeout: ReadTimeout"
    assert attempt(delivery_pk=delivery.pk) == "delivered"


def test_another_4xx_fails_the_delivery_at_once(user, endpoint, receiver, sent, dispatched):
    receiver.control(script=[400])
    cancelled_job(user)
    delivery = only_delivery()
    assert attempt(delivery_pk=delivery.pk) == "failed"
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("failed", 1, 400)
    assert json.loads(delivery.last_response_body) == {"received": True}


def test_a_redirect_is_not_followed(user, endpoint, receiver, sent, dispatched):
    receiver.control(script=[302])
    cancelled_job(user)
    assert attempt(delivery_pk=only_delivery().pk) == "failed"
    assert [r["path"] for r in receiver.received()] == ["/hook"]  # never /elsewhere


def test_410_disables_the_endpoint_and_no_more_is_recorded(user, endpoint, receiver, sent, dispatched):
    receiver.control(script=[410])
    cancelled_job(user)
    assert attempt(delivery_pk=only_delivery().pk) == "gone"
    endpoint.refresh_from_db()
    assert endpoint.is_disabled
    assert endpoint.disabled_reason == "The receiver answered 410 Gone"
    cancelled_job(user)
    assert WebhookDelivery.objects.count() == 1


def test_a_url_that_fails_the_check_at_send_time_gets_no_request(
    user, endpoint, receiver, sent, dispatched, settings
):
    cancelled_job(user)
    settings.WEBHOOK_ALLOWED_HOSTS = []  # the operator took the internal receiver off the list
    assert attempt(delivery_pk=only_delivery().pk) == "refused"
    assert receiver.received() == []
    delivery = only_delivery()
    assert (delivery.status, delivery.last_error) == (
        "failed",
        "127.0.0.1 resolves to an address that is not public",
    )


def test_a_name_that_resolves_to_a_private_address_at_send_time_is_refused(
    user, endpoint, receiver, sent, dispatched
):
    cancelled_job(user)
    port = receiver.host_port.split(":")[1]
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(url=f"http://localhost:{port}/hook")
    assert attempt(delivery_pk=only_delivery().pk) == "refused"
    assert receiver.received() == []


def test_one_attempt_is_claimed_by_one_sender_only(user, endpoint, receiver, sent, dispatched):
    cancelled_job(user)
    delivery = only_delivery()
    now = timezone.now()
    assert services._claim(delivery.pk, now=now) is not None
    assert services._claim(delivery.pk, now=now) is None  # a second sender at once
    assert attempt(delivery_pk=delivery.pk) is None
    assert receiver.received() == []


def test_the_reaper_sends_what_is_due_and_unclaimed(user, endpoint, sent, dispatched, settings):
    settings.WEBHOOK_REAP_EVERY_S = 30
    cancelled_job(user)
    cancelled_job(user)
    cancelled_job(user)
    lost, claimed, recent = WebhookDelivery.objects.order_by("pk")
    now = timezone.now()
    WebhookDelivery.objects.filter(pk=lost.pk).update(next_attempt_at=now - timedelta(minutes=5))
    WebhookDelivery.objects.filter(pk=claimed.pk).update(
        next_attempt_at=now - timedelta(minutes=5), claimed_until=now + timedelta(minutes=1)
    )
    sent.clear()
    assert services.webhook_deliveries_reap(now=now) == 1
    assert sent == [(lost.pk, 0)]
    # A claim that expired (its worker died mid-send) is taken back.
    assert services.webhook_deliveries_reap(now=now + timedelta(minutes=2)) == 3
    assert recent.status == DeliveryStatus.PENDING


def test_during_a_rotation_both_secrets_sign(user, endpoint, receiver, sent, dispatched, settings):
    old = endpoint.secret
    new = services.webhook_endpoint_rotate(endpoint=endpoint)
    receiver.control(secrets=[old, new])
    cancelled_job(user)
    assert attempt(delivery_pk=only_delivery().pk) == "delivered"
    (received,) = receiver.received()
    assert received["verified_by"] == [0, 1]
    assert len(received["headers"]["webhook-signature"].split(" ")) == 2

    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(previous_secret_until=timezone.now())
    cancelled_job(user)
    latest = WebhookDelivery.objects.order_by("-pk").first()
    assert latest is not None
    assert attempt(delivery_pk=latest.pk) == "delivered"
    assert receiver.received()[-1]["verified_by"] == [1]  # the overlap is over: the new one only


def test_only_subscribed_endpoints_and_the_jobs_own_get_it(user, hook_settings, receiver, sent, dispatched):
    completed_only, _ = services.webhook_endpoint_create(
        owner=user, url=receiver.url, events=["job.completed"]
    )
    cancelled_only, _ = services.webhook_endpoint_create(
        owner=user, url=receiver.url, events=["job.cancelled"]
    )
    other, _ = services.webhook_endpoint_create(owner=user, url=receiver.url, events=["job.cancelled"])
    cancelled_job(user)
    assert set(WebhookDelivery.objects.values_list("endpoint", flat=True)) == {cancelled_only.pk, other.pk}
    WebhookDelivery.objects.all().delete()
    cancelled_job(user, webhook_id=other.public_id)
    assert list(WebhookDelivery.objects.values_list("endpoint", flat=True)) == [other.pk]
    assert completed_only.deliveries.count() == 0


def test_a_user_without_endpoints_costs_one_query(user, dispatched, django_assert_num_queries):
    job = factories.make_job(user, status=Status.CANCELLED)
    with django_assert_num_queries(1):
        services.webhook_deliveries_record(job=job, event="job.cancelled")


def test_redeliver_sends_a_finished_delivery_again_with_its_id(
    api_client, user, endpoint, receiver, sent, dispatched
):
    cancelled_job(user)
    delivery = only_delivery()
    base = f"/v1/webhooks/{endpoint.public_id}/deliveries"
    pending = api_client.post(f"{base}/{delivery.message_id}/redeliver")
    assert (pending.status_code, pending.json()["error"]["code"]) == (409, "DELIVERY_PENDING")
    assert attempt(delivery_pk=delivery.pk) == "delivered"

    listed = api_client.get(base).json()["data"]
    assert [(d["id"], d["status"], d["attempts"], d["last_status_code"]) for d in listed] == [
        (delivery.message_id, "delivered", 1, 200)
    ]
    response = api_client.post(f"{base}/{delivery.message_id}/redeliver")
    assert response.status_code == 202
    assert response.json()["data"]["status"] == "pending"
    assert attempt(delivery_pk=delivery.pk) == "delivered"
    assert [r["headers"]["webhook-id"] for r in receiver.received()] == [delivery.message_id] * 2
    missing = api_client.post(f"{base}/msg_nope/redeliver")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "DELIVERY_NOT_FOUND")


def test_the_scrape_shows_the_deliveries_due(user, endpoint, sent, dispatched):
    from jobs.ops import scrape

    cancelled_job(user)
    cancelled_job(user)
    WebhookDelivery.objects.filter(pk=only_delivery_pks()[0]).update(
        next_attempt_at=timezone.now() + timedelta(hours=1)
    )
    body = scrape.exposition()[0].decode()
    assert "download_webhook_deliveries_due 1.0" in body.splitlines()


def only_delivery_pks() -> list[int]:
    return list(WebhookDelivery.objects.order_by("pk").values_list("pk", flat=True))
