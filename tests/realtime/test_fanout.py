"""Fan-out across ASGI processes: a job initiated through one uvicorn process is watched on
a WebSocket served by another, with a real Celery worker publishing through the Redis
channel layer. The client is the `websockets` package, as an API client: no Origin header,
the ticket of the job's `websocket_url`. Child process logs are in test-artifacts/logs/.
"""

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import uuid4

import pytest
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect

from tests.factories import api_key_for
from tests.support.flows import socket_url
from tests.support.origin_server import FileScript, OriginServer
from tests.support.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MiB = 1024 * 1024
FILE_ID = 71000
TERMINAL = {"completed", "failed", "cancelled", "expired"}


@pytest.fixture(scope="module")
def web_b(local_stack: Stack) -> Iterator[str]:
    """A second ASGI process beside the local stack's own (process A)."""
    with local_stack.extra_web() as base_url:
        yield base_url


def watch(url: str, *, timeout_s: float) -> tuple[list[dict[str, Any]], int | None]:
    """Every message of the socket until the server closes it, and the close code."""
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    with connect(url, open_timeout=5, close_timeout=5) as ws:
        try:
            while True:
                messages.append(json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
        except ConnectionClosedOK:
            pass
        return messages, ws.close_code


def test_a_socket_on_another_asgi_process_gets_the_jobs_events(
    local_stack: Stack, web_b: str, origin_server: OriginServer, django_user_model: Any
) -> None:
    user = django_user_model.objects.create_user(f"fanout-{uuid4().hex[:12]}")
    token = api_key_for(user)
    # ~2 s at the origin: long enough for several progress events.
    origin_server.add(FILE_ID, FileScript(size=6 * MiB, rate_bps=3 * MiB))
    assert web_b != local_stack.base_url

    with local_stack.client(token) as api_a, ThreadPoolExecutor(1) as pool:
        response = api_a.post("/v1/download/initiate", json={"file_id": FILE_ID})
        assert response.status_code == 200, response.text
        job_id = response.json()["data"]["job_id"]
        ws_url = socket_url(web_b, response.json()["data"]["websocket_url"])
        watching = pool.submit(watch, ws_url, timeout_s=30)

        polled: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while not polled or polled[-1]["status"] not in TERMINAL:
            assert time.monotonic() < deadline, f"{job_id} did not finish: {polled[-1:]}"
            reply = api_a.get(f"/v1/download/status/{job_id}")
            assert reply.status_code == 200, reply.text
            polled.append(reply.json()["data"])
            time.sleep(0.05)
        messages, close_code = watching.result(timeout=15)

    assert polled[-1]["status"] == "completed"
    assert polled[-1]["progress"] == 100
    assert all({"type", "job_id", "status", "progress", "timestamp"} <= m.keys() for m in messages), messages
    assert {m["job_id"] for m in messages} == {job_id}
    types = [m["type"] for m in messages]
    assert types[0] == "snapshot", types
    assert types[-1] == "completed", types
    assert messages[-1]["download_url"] == f"/v1/download/{job_id}"
    progress = [m["progress"] for m in messages if m["type"] == "progress"]
    assert len(progress) >= 3, types
    assert progress == sorted(progress)
    shown = [m["progress"] for m in messages]  # what the client shows, message after message
    assert shown == sorted(shown), shown
    assert close_code == 1000
