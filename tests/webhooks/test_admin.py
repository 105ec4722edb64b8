"""The webhooks admin through its pages, as a staff superuser: endpoints and deliveries
listed per user and filtered, no secret on any page, and the actions (disable,
redeliver), which call the services."""

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from jobs import services as job_services
from tests import factories
from webhooks import services
from webhooks.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint

ENDPOINTS = "admin:webhooks_webhookendpoint_changelist"
DELIVERIES = "admin:webhooks_webhookdelivery_changelist"


@pytest.fixture
def staff_client(db: None) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="root-password"))
    return client


@pytest.fixture
def endpoint(user: User, hook_settings: Any, receiver: Any) -> WebhookEndpoint:
    return services.webhook_endpoint_create(owner=user, url=receiver.url, events=["job.cancelled"])[0]


def listed(response: Any) -> list[Any]:
    assert response.status_code == 200
    return list(response.context["cl"].result_list)


def test_no_page_shows_a_secret(staff_client, endpoint):
    pages = [
        staff_client.get(reverse(ENDPOINTS)),
        staff_client.get(reverse("admin:webhooks_webhookendpoint_change", args=[endpoint.pk])),
    ]
    for page in pages:
        assert page.status_code == 200
        assert endpoint.secret.encode() not in page.content
        assert endpoint.url.encode() in page.content


def test_endpoints_filter_by_disabled_and_the_action_disables(
    staff_client, endpoint, user, hook_settings, receiver
):
    other = services.webhook_endpoint_create(owner=user, url=receiver.url, events=["job.failed"])[0]
    response = staff_client.post(
        reverse(ENDPOINTS), {"action": "disable", "_selected_action": [endpoint.pk]}, follow=True
    )
    assert [str(m) for m in response.context["messages"]] == ["Disabled 1 endpoint(s)."]
    assert listed(staff_client.get(reverse(ENDPOINTS), {"disabled": "yes"})) == [
        WebhookEndpoint.objects.get(pk=endpoint.pk)
    ]
    assert listed(staff_client.get(reverse(ENDPOINTS), {"disabled": "no"})) == [other]
    assert WebhookEndpoint.objects.get(pk=endpoint.pk).disabled_reason == "Disabled by an operator"


def test_failed_deliveries_are_filtered_and_redelivered(staff_client, endpoint, user, sent, dispatched):
    for _ in range(2):
        job_services.download_job_cancel(job=factories.make_job(user))
    failed, pending = WebhookDelivery.objects.order_by("pk")
    WebhookDelivery.objects.filter(pk=failed.pk).update(status=DeliveryStatus.FAILED, attempts=8)

    assert listed(staff_client.get(reverse(DELIVERIES), {"status__exact": "failed"})) == [failed]
    assert len(listed(staff_client.get(reverse(DELIVERIES), {"q": user.username}))) == 2

    sent.clear()
    response = staff_client.post(
        reverse(DELIVERIES), {"action": "redeliver", "_selected_action": [failed.pk, pending.pk]}, follow=True
    )
    assert [str(m) for m in response.context["messages"]] == ["Sent 1 delivery(ies) again."]
    failed.refresh_from_db()
    assert (failed.status, failed.attempts) == (DeliveryStatus.PENDING, 0)
