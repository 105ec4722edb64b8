"""`verify_webhook` held to the `standardwebhooks` package's own signatures, and the
`downloads webhooks` commands against a real stack whose deliveries reach a real receiver
in this process, which checks each with `verify_webhook`."""

import base64
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from downloads_client import WebhookVerificationError, verify_webhook
from standardwebhooks import Webhook as ReferenceWebhook

from tests.support.origin_server import FileScript, OriginServer
from tests.support.stack import Stack, stack_env

from .stack_api import wait_for, wait_until_finished

SECRET = "whsec_" + base64.b64encode(b"k" * 24).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"o" * 32).decode()
BODY = '{"type":"job.completed","timestamp":"2026-12-08T00:00:00Z","data":{"job_id":"job_1"}}'
NOW = datetime(2026, 12, 8, tzinfo=UTC)


def signed(
    secret: str = SECRET, *, at: datetime = NOW, body: str = BODY, msg_id: str = "msg_1"
) -> dict[str, str]:
    """The headers the reference library makes for a delivery."""
    signature = ReferenceWebhook(secret).sign(msg_id, at, body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }


def test_a_delivery_signed_by_the_reference_library_verifies() -> None:
    headers = signed()
    assert verify_webhook(BODY.encode(), headers, SECRET, now=NOW.timestamp()) == json.loads(BODY)
    # Header names in any case, the body as str; the reference library agrees.
    upper = {name.upper(): value for name, value in headers.items()}
    assert verify_webhook(BODY, upper, SECRET, now=NOW.timestamp())["data"] == {"job_id": "job_1"}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda h, b: (h, b.replace("job_1", "job_2")), "no_matching_signature"),
        (lambda h, b: ({**h, "webhook-id": "msg_2"}, b), "no_matching_signature"),
        (
            lambda h, b: ({**h, "webhook-signature": "v2," + h["webhook-signature"][3:]}, b),
            "no_matching_signature",
        ),
        (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b), "missing_header"),
        (lambda h, b: ({**h, "webhook-timestamp": "soon"}, b), "bad_timestamp"),
    ],
)
def test_a_changed_delivery_is_refused(change: Any, reason: str) -> None:
    headers, body = change(signed(), BODY)
    with pytest.raises(WebhookVerificationError) as refused:
        verify_webhook(body, headers, SECRET, now=NOW.timestamp())
    assert refused.value.reason == reason


def test_the_timestamp_must_be_within_five_minutes() -> None:
    for offset_s, reason in ((-301, "timestamp_too_old"), (301, "timestamp_too_new")):
        headers = signed(at=NOW + timedelta(seconds=offset_s))
        with pytest.raises(WebhookVerificationError) as refused:
            verify_webhook(BODY, headers, SECRET, now=NOW.timestamp())
        assert refused.value.reason == reason
    for offset_s in (-300, 300):
        assert verify_webhook(BODY, signed(at=NOW + timedelta(seconds=offset_s)), SECRET, now=NOW.timestamp())


def test_during_a_rotation_either_signature_verifies() -> None:
    """Signed with the old and the new secret at once: each verifies alone, and a receiver
    that knows both accepts it; a stranger's secret does not."""
    old, new = signed(SECRET)["webhook-signature"], signed(OTHER_SECRET)["webhook-signature"]
    headers = {**signed(), "webhook-signature": f"{old} {new}"}
    for secret in (SECRET, OTHER_SECRET, [OTHER_SECRET, SECRET]):
        assert verify_webhook(BODY, headers, secret, now=NOW.timestamp())
    with pytest.raises(WebhookVerificationError):
        verify_webhook(BODY, headers, "whsec_" + base64.b64encode(b"x" * 24).decode(), now=NOW.timestamp())


def test_a_secret_that_is_not_base64_is_a_clear_error() -> None:
    with pytest.raises(WebhookVerificationError) as refused:
        verify_webhook(BODY, signed(), "whsec_not base64!", now=NOW.timestamp())
    assert refused.value.reason == "bad_secret"


# --- the commands against a real stack ---------------------------------------------------------

# The command of this checkout (`python -m downloads_client`, its source first on the path),
# whichever copy of the package the environment has installed.
CLIENT_SOURCE = Path(__file__).resolve().parents[2] / "src"
# Shared with the other module-scoped stacks on 4: never at once.
CLIENT_WEBHOOKS_BROKER_DB = 4


class Receiver(ThreadingHTTPServer):
    """A webhook receiver on a free loopback port: keeps every delivery, answers 204."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.deliveries: list[tuple[bytes, dict[str, str]]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks"


class _ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:
            self.server.deliveries.append((body, dict(self.headers.items())))
        self.send_response(204)
        self.end_headers()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def webhook_stack(django_db_setup: None, origin_server: OriginServer, receiver: Receiver) -> Iterator[Stack]:
    redis.Redis.from_url(f"{settings.REDIS_URL}/{CLIENT_WEBHOOKS_BROKER_DB}").flushdb()
    host = f"127.0.0.1:{receiver.server_address[1]}"
    env = stack_env(
        origin_server,
        {"WEBHOOK_ALLOW_HTTP": "true", "WEBHOOK_ALLOWED_HOSTS": host},
        broker_db=CLIENT_WEBHOOKS_BROKER_DB,
    )
    stack = Stack("client-webhooks", env).start()
    yield stack
    stack.stop()


def downloads(*args: str, stack: Stack, token: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DOWNLOADS_")}
    env |= {
        "DOWNLOADS_URL": stack.base_url,
        "DOWNLOADS_TOKEN": token,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(CLIENT_SOURCE), env.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [sys.executable, "-m", "downloads_client", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_webhooks_add_list_deliveries_remove(
    webhook_stack: Stack, origin_server: OriginServer, receiver: Receiver, token: str
) -> None:
    added = downloads(
        "webhooks",
        "add",
        receiver.url,
        "--event",
        "job.completed",
        "--json",
        stack=webhook_stack,
        token=token,
    )
    assert added.returncode == 0, added.stderr
    endpoint = json.loads(added.stdout)
    assert endpoint["url"] == receiver.url
    assert endpoint["events"] == ["job.completed"]
    assert endpoint["secret"].startswith("whsec_")
    plain = downloads("webhooks", "list", stack=webhook_stack, token=token)
    assert plain.stdout == f"{endpoint['id']}  {receiver.url}  job.completed\n"

    file_id = 74001
    origin_server.add(file_id, FileScript(size=4096, file_name="hooked.csv"))
    with webhook_stack.client(token) as api:
        job_id = api.post("/v1/download/initiate", json={"file_id": file_id}).json()["data"]["job_id"]
    wait_until_finished(webhook_stack, token, job_id)

    body, headers = wait_for(
        lambda: next((item for item in receiver.deliveries if job_id.encode() in item[0]), None),
        timeout_s=15,
        what="the delivery reaches the receiver",
    )
    payload = verify_webhook(body, headers, endpoint["secret"])
    assert (payload["type"], payload["data"]["job_id"], payload["data"]["status"]) == (
        "job.completed",
        job_id,
        "completed",
    )
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, headers, OTHER_SECRET)

    delivered = wait_for(
        lambda: [
            d
            for d in json.loads(
                downloads(
                    "webhooks", "deliveries", endpoint["id"], "--json", stack=webhook_stack, token=token
                ).stdout
            )
            if d["status"] == "delivered"
        ],
        timeout_s=10,
        what="the delivery is recorded as delivered",
    )
    assert [(d["id"], d["event"], d["job_id"]) for d in delivered] == [
        (headers["webhook-id"], "job.completed", job_id)
    ]
    lines = downloads("webhooks", "deliveries", endpoint["id"], stack=webhook_stack, token=token).stdout
    assert lines.startswith(
        f"{headers['webhook-id']}  job.completed  {job_id}  delivered  1 attempt(s)  HTTP 204"
    )

    removed = downloads("webhooks", "remove", endpoint["id"], stack=webhook_stack, token=token)
    assert (removed.returncode, removed.stdout) == (0, f"{endpoint['id']} removed\n")
    assert downloads("webhooks", "list", "--json", stack=webhook_stack, token=token).stdout == "[]\n"
    gone = downloads("webhooks", "remove", endpoint["id"], stack=webhook_stack, token=token)
    assert gone.returncode == 1
    assert gone.stderr.startswith("error: WEBHOOK_NOT_FOUND")
