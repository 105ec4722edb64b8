"""The webhooks API: endpoints made, listed, changed, rotated and removed by their owner
only; URLs refused before any are stored; the initiate body's `webhook_id` checked."""

import re
from typing import Any

import pytest
from standardwebhooks import Webhook

from jobs.models import DownloadJob
from webhooks.models import WebhookEndpoint

HOOKS = "/v1/webhooks"
ALL_EVENTS = ["job.cancelled", "job.completed", "job.expired", "job.failed"]


def create(client: Any, url: str, **body: Any) -> Any:
    return client.post(HOOKS, {"url": url, **body}, format="json")


def error_code(response: Any) -> str:
    return str(response.json()["error"]["code"])


def test_create_answers_the_endpoint_and_its_secret_once(api_client, hook_settings, receiver):
    response = create(api_client, receiver.url, events=["job.completed"], description="exports")

    assert response.status_code == 201
    data = response.json()["data"]
    assert re.fullmatch(r"ep_[0-9a-f]{24}", data["id"])
    assert (data["url"], data["events"], data["description"], data["disabled"]) == (
        receiver.url,
        ["job.completed"],
        "exports",
        False,
    )
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", data["secret"])
    Webhook(data["secret"])  # the reference library takes it as it is
    listed = api_client.get(HOOKS).json()["data"]
    assert [endpoint["id"] for endpoint in listed] == [data["id"]]
    assert "secret" not in listed[0]
    assert "secret" not in api_client.get(f"{HOOKS}/{data['id']}").json()["data"]


def test_events_default_to_all_four_and_unknown_ones_are_refused(api_client, hook_settings, receiver):
    assert create(api_client, receiver.url).json()["data"]["events"] == ALL_EVENTS
    response = create(api_client, receiver.url, events=["job.started"])
    assert response.status_code == 400
    assert error_code(response) == "VALIDATION_ERROR"
    assert "events" in response.json()["error"]["fields"]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://example.com/hook", "The URL must be https"),
        ("https://127.0.0.1/hook", "127.0.0.1 resolves to an address that is not public"),
        ("https://10.1.2.3/hook", "10.1.2.3 resolves to an address that is not public"),
        ("https://192.168.0.10/hook", "192.168.0.10 resolves to an address that is not public"),
        ("https://169.254.169.254/latest", "169.254.169.254 resolves to an address that is not public"),
        ("https://[::1]/hook", "::1 resolves to an address that is not public"),
        # A name, resolved by the system's resolver, to a loopback address.
        ("https://localhost/hook", "localhost resolves to an address that is not public"),
        ("https://user:pw@example.com/hook", "The URL must name a host, without credentials"),
    ],
)
def test_a_url_that_may_not_be_called_is_refused_and_nothing_is_stored(api_client, url, reason):
    response = create(api_client, url)
    assert response.status_code == 400
    assert response.json()["error"] == {"code": "WEBHOOK_URL_REFUSED", "message": reason}
    assert WebhookEndpoint.objects.count() == 0


def test_http_is_refused_unless_allowed(api_client, settings, receiver):
    settings.WEBHOOK_ALLOWED_HOSTS = [receiver.host_port]
    assert error_code(create(api_client, receiver.url)) == "WEBHOOK_URL_REFUSED"
    settings.WEBHOOK_ALLOW_HTTP = True
    assert create(api_client, receiver.url).status_code == 201


def test_an_allowed_host_is_allowed_on_its_port_only(api_client, settings, receiver):
    settings.WEBHOOK_ALLOW_HTTP = True
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1:1"]
    assert error_code(create(api_client, receiver.url)) == "WEBHOOK_URL_REFUSED"
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]  # the scheme's port (80) only
    assert error_code(create(api_client, receiver.url)) == "WEBHOOK_URL_REFUSED"


def test_past_the_limit_a_user_gets_409(api_client, other_client, hook_settings, receiver):
    hook_settings.WEBHOOK_MAX_PER_USER = 2
    assert create(api_client, receiver.url).status_code == 201
    assert create(api_client, receiver.url).status_code == 201
    response = create(api_client, receiver.url)
    assert response.status_code == 409
    assert response.json()["error"] == {
        "code": "WEBHOOK_LIMIT_EXCEEDED",
        "message": "At most 2 webhook endpoints per user",
        "limit": 2,
    }
    assert create(other_client, receiver.url).status_code == 201  # per user


def test_another_users_endpoint_is_not_found(api_client, other_client, hook_settings, receiver):
    webhook_id = create(api_client, receiver.url).json()["data"]["id"]
    for method, path in [
        ("get", f"{HOOKS}/{webhook_id}"),
        ("patch", f"{HOOKS}/{webhook_id}"),
        ("delete", f"{HOOKS}/{webhook_id}"),
        ("post", f"{HOOKS}/{webhook_id}/rotate"),
        ("get", f"{HOOKS}/{webhook_id}/deliveries"),
    ]:
        response = getattr(other_client, method)(path, {}, format="json")
        assert response.status_code == 404, (method, path)
        assert error_code(response) == "WEBHOOK_NOT_FOUND"
    assert WebhookEndpoint.objects.filter(public_id=webhook_id).exists()


def test_patch_changes_what_it_names_and_checks_a_new_url(api_client, hook_settings, receiver):
    webhook_id = create(api_client, receiver.url).json()["data"]["id"]
    response = api_client.patch(
        f"{HOOKS}/{webhook_id}", {"events": ["job.failed"], "description": "ops"}, format="json"
    )
    assert response.status_code == 200
    data = response.json()["data"]
    assert (data["events"], data["description"], data["url"]) == (["job.failed"], "ops", receiver.url)
    refused = api_client.patch(f"{HOOKS}/{webhook_id}", {"url": "https://10.0.0.1/"}, format="json")
    assert error_code(refused) == "WEBHOOK_URL_REFUSED"
    assert WebhookEndpoint.objects.get(public_id=webhook_id).url == receiver.url


def test_delete_removes_the_endpoint(api_client, hook_settings, receiver):
    webhook_id = create(api_client, receiver.url).json()["data"]["id"]
    assert api_client.delete(f"{HOOKS}/{webhook_id}").json() == {"success": True, "data": {"id": webhook_id}}
    assert api_client.get(f"{HOOKS}/{webhook_id}").status_code == 404


def test_rotate_answers_a_new_secret_and_keeps_the_old_for_the_overlap(api_client, hook_settings, receiver):
    hook_settings.WEBHOOK_ROTATION_OVERLAP_S = 3600
    created = create(api_client, receiver.url).json()["data"]
    rotated = api_client.post(f"{HOOKS}/{created['id']}/rotate").json()["data"]
    assert rotated["id"] == created["id"]
    assert rotated["secret"].startswith("whsec_")
    assert rotated["secret"] != created["secret"]
    endpoint = WebhookEndpoint.objects.get(public_id=created["id"])
    assert (endpoint.secret, endpoint.previous_secret) == (rotated["secret"], created["secret"])
    assert rotated["previous_secret_expires_at"].endswith("Z")


def test_initiate_takes_a_webhook_id_of_the_caller_only(
    api_client, other_client, hook_settings, receiver, dispatched
):
    mine = create(api_client, receiver.url).json()["data"]["id"]
    theirs = create(other_client, receiver.url).json()["data"]["id"]

    for webhook_id in (theirs, "ep_000000000000000000000000"):
        response = api_client.post(
            "/v1/download/initiate", {"file_id": 70000, "webhook_id": webhook_id}, format="json"
        )
        assert response.status_code == 400
        assert response.json()["error"] == {
            "code": "WEBHOOK_NOT_FOUND",
            "message": "webhook_id is not one of your webhook endpoints",
        }
    assert DownloadJob.objects.count() == 0

    response = api_client.post("/v1/download/initiate", {"file_id": 70000, "webhook_id": mine}, format="json")
    assert response.status_code == 200
    assert DownloadJob.objects.get(job_id=response.json()["data"]["job_id"]).webhook_id == mine
