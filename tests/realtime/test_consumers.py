"""The job socket through channels' WebsocketCommunicator, on the configured (Redis) channel
layer: authentication and ownership, the snapshot, the events in order, progress that
never goes backwards within an attempt, the heartbeat, and the Origin check.

Each test is a plain function that runs its async scenario with asgiref's `async_to_sync`
(no pytest-asyncio): the consumer's database reads then run in the test's own thread, and
the scenario's sync setup and checks use the usual fixtures and the test client.
"""

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings
from django.contrib.auth.models import User
from django.core import signing
from django.test import Client
from django.utils import timezone
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from downloads_project.asgi import application
from infra.redis import state_async_client
from jobs import hotstate
from jobs.events import job_event_message, job_event_publish, job_group_name
from jobs.hotstate import HotProgress
from jobs.models import ApiKey, DownloadJob, Status
from jobs.selectors import iso
from realtime import backlog
from realtime.consumers import _replaced_progress
from realtime.routing import websocket_urlpatterns
from tests.factories import api_key_for, make_job

pytestmark = pytest.mark.django_db(transaction=True)

ROUTER = URLRouter(websocket_urlpatterns)
pubsub_only = pytest.mark.skipif(
    settings.CHANNEL_LAYER_BACKEND != "pubsub", reason="the pub/sub layer's backlog (CHANNEL_LAYER_BACKEND)"
)
TIMEOUT_S = 5
NORMAL_CLOSE = 1000


# --- helpers -------------------------------------------------------------------------------


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return async_to_sync(scenario)()


def processing_job(owner: User, *, progress: int, attempts: int = 1) -> DownloadJob:
    job = make_job(owner, status=Status.PROCESSING, attempts=attempts, started_at=timezone.now())
    total = 1000
    hotstate.progress_write(
        job_id=job.job_id, progress=HotProgress(attempts, progress * total // 100, total, progress)
    )
    return job


def subscribe_path(job_id: str, query: str = "") -> str:
    return f"/v1/download/subscribe/{job_id}" + (f"?{query}" if query else "")


@asynccontextmanager
async def socket(
    path: str, *, user: Any = None, app: Any = ROUTER, headers: list[tuple[bytes, bytes]] | None = None
) -> AsyncIterator[WebsocketCommunicator]:
    """A connected socket (the consumer accepts before it checks anything), disconnected
    at the end. `user` goes into the scope, as the session middleware would put it."""
    communicator = WebsocketCommunicator(app, path, headers=headers)
    if user is not None:
        communicator.scope["user"] = user
    connected, _ = await communicator.connect(timeout=TIMEOUT_S)
    assert connected
    try:
        yield communicator
    finally:
        await communicator.disconnect(timeout=TIMEOUT_S)


async def receive(communicator: WebsocketCommunicator) -> dict[str, Any]:
    message: dict[str, Any] = await communicator.receive_json_from(timeout=TIMEOUT_S)
    return message


async def receive_skipping_heartbeats(communicator: WebsocketCommunicator) -> dict[str, Any]:
    while (message := await receive(communicator))["type"] == "heartbeat":
        pass
    return message


async def close_code(communicator: WebsocketCommunicator) -> int:
    output = await communicator.receive_output(timeout=TIMEOUT_S)
    assert output["type"] == "websocket.close", output
    code: int = output.get("code", NORMAL_CLOSE)
    return code


async def publish(job_id: str, event: dict[str, Any]) -> None:
    await sync_to_async(job_event_publish)(job_id, event)


def event(job: DownloadJob, kind: str, status: str, progress: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "job_id": job.job_id,
        "status": status,
        "progress": progress,
        "timestamp": iso(timezone.now()),
        **extra,
    }


def progress_event(job: DownloadJob, progress: int) -> dict[str, Any]:
    return event(job, "progress", Status.PROCESSING, progress, bytes_done=progress * 10, bytes_total=1000)


def heartbeat_tasks() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task.get_name().startswith("heartbeat ")]


def without_envelope(snapshot: dict[str, Any]) -> dict[str, Any]:
    assert snapshot["type"] == "snapshot"
    assert snapshot["timestamp"].endswith("Z")
    return {key: value for key, value in snapshot.items() if key not in ("type", "timestamp")}


# --- authentication and ownership ----------------------------------------------------------


def test_unauthenticated_socket_is_closed_4401(user):
    job = make_job(user)

    async def scenario() -> int:
        async with socket(subscribe_path(job.job_id)) as ws:  # no user in the scope at all
            return await close_code(ws)

    assert run(scenario) == 4401


def test_socket_without_credentials_is_closed_4401(user):
    job = make_job(user)

    async def scenario() -> int:
        async with socket(subscribe_path(job.job_id), app=application) as ws:
            return await close_code(ws)

    assert run(scenario) == 4401


@pytest.mark.parametrize("whose", ["another user's", "unknown"])
def test_foreign_or_unknown_job_is_closed_4404(user, other_user, whose):
    job_id = make_job(other_user).job_id if whose == "another user's" else "job_" + "0" * 32

    async def scenario() -> tuple[int, bool]:
        async with socket(subscribe_path(job_id), user=user) as ws:
            return await close_code(ws), await ws.receive_nothing()

    assert run(scenario) == (4404, True)


def test_session_cookie_authenticates_a_page_of_the_site(user):
    job = make_job(user)
    browser = Client()
    browser.force_login(user)
    headers = [
        (b"host", b"localhost:8000"),
        (b"origin", b"http://localhost:8000"),
        (b"cookie", f"sessionid={browser.cookies['sessionid'].value}".encode()),
    ]

    async def scenario() -> dict[str, Any]:
        async with socket(subscribe_path(job.job_id), app=application, headers=headers) as ws:
            return await receive(ws)

    assert run(scenario)["job_id"] == job.job_id


def test_a_page_of_another_site_is_refused(user):
    """A browser on a foreign page never reaches the consumer, even with valid credentials
    (more in test_socket_auth.py)."""
    job = make_job(user)
    key = api_key_for(user)
    headers = [(b"origin", b"https://evil.example")]

    async def scenario() -> bool:
        ws = WebsocketCommunicator(application, subscribe_path(job.job_id, f"token={key}"), headers=headers)
        connected, _ = await ws.connect(timeout=TIMEOUT_S)
        await ws.disconnect(timeout=TIMEOUT_S)
        return bool(connected)

    assert run(scenario) is False


# --- snapshot ------------------------------------------------------------------------------


def test_snapshot_of_a_queued_job_is_the_status_api_object(user, api_client):
    job = make_job(user)

    async def scenario() -> tuple[dict[str, Any], bool]:
        async with socket(subscribe_path(job.job_id), user=user) as ws:
            return await receive(ws), await ws.receive_nothing()

    snapshot, quiet = run(scenario)
    api = api_client.get(f"/v1/download/status/{job.job_id}").json()["data"]
    # The HTTP answer alone carries a socket's URL (with a fresh ticket), for a client to open.
    assert api.pop("websocket_url").startswith(f"ws://testserver/v1/download/subscribe/{job.job_id}?ticket=")
    assert without_envelope(snapshot) == api
    assert (snapshot["status"], snapshot["progress"]) == ("queued", 0)
    assert quiet  # open, waiting for events


def test_snapshot_of_a_completed_job_then_a_normal_close(user, api_client):
    now = timezone.now()
    job = make_job(
        user,
        status=Status.COMPLETED,
        attempts=1,
        progress=100,
        bytes_done=2048,
        bytes_total=2048,
        file_size_bytes=2048,
        file_name="report.pdf",
        started_at=now - timedelta(seconds=3),
        completed_at=now,
        expires_at=now + timedelta(hours=24),
    )

    async def scenario() -> tuple[dict[str, Any], int, bool]:
        async with socket(subscribe_path(job.job_id), user=user) as ws:
            return await receive(ws), await close_code(ws), heartbeat_tasks() == []

    snapshot, code, no_heartbeat = run(scenario)
    api = api_client.get(f"/v1/download/status/{job.job_id}").json()["data"]
    assert without_envelope(snapshot) == api
    assert (snapshot["status"], snapshot["progress"]) == ("completed", 100)
    assert snapshot["download_url"] == f"/v1/download/{job.job_id}"
    assert code == NORMAL_CLOSE
    assert no_heartbeat


# --- events --------------------------------------------------------------------------------


def test_events_arrive_in_order_after_the_snapshot_and_completed_closes(user):
    job = make_job(user)
    events = [
        event(job, "status_update", Status.PROCESSING, 0),
        *(progress_event(job, percent) for percent in (1, 2, 10, 10, 50, 99)),
        event(job, "completed", Status.COMPLETED, 100, download_url=f"/v1/download/{job.job_id}"),
    ]

    async def scenario() -> tuple[list[dict[str, Any]], int, bool]:
        async with socket(subscribe_path(job.job_id), user=user) as ws:
            received = [await receive(ws)]
            # One at a time, as a socket that keeps up sees them (one that falls behind
            # may skip progress: test_a_socket_behind_skips_only_progress_that_newer_events_replace).
            for sent in events:
                await publish(job.job_id, sent)
                received.append(await receive(ws))
            code = await close_code(ws)
            # Whatever is still delivered after the close is not sent on a closed socket.
            await publish(job.job_id, progress_event(job, 100))
            return received, code, await ws.receive_nothing(timeout=0.3)

    received, code, quiet = run(scenario)
    assert received[0]["type"] == "snapshot"
    assert received[1:] == events
    assert code == NORMAL_CLOSE
    assert quiet


@pytest.mark.parametrize(
    ("kind", "status", "extra"),
    [
        ("error", Status.FAILED, {"error": {"code": "FILE_NOT_FOUND", "message": "No", "retryable": False}}),
        ("cancelled", Status.CANCELLED, {}),
    ],
)
def test_every_terminal_event_closes_normally(user, kind, status, extra):
    job = processing_job(user, progress=40)
    terminal = event(job, kind, status, 40, **extra)

    async def scenario() -> tuple[dict[str, Any], int]:
        async with socket(subscribe_path(job.job_id), user=user) as ws:
            await receive(ws)
            await publish(job.job_id, terminal)
            return await receive(ws), await close_code(ws)

    assert run(scenario) == (terminal, NORMAL_CLOSE)


def test_a_lower_progress_is_not_forwarded(user):
    """The snapshot (row + hot progress) is at 50: older events queued behind it are
    dropped, and so is any later one that is lower than what was sent."""
    job = processing_job(user, progress=50)
    stale_start = event(job, "status_update", Status.PROCESSING, 0)  # this attempt's own start

    async def scenario() -> tuple[list[dict[str, Any]], bool]:
        async with socket(subscribe_path(job.job_id), user=user) as ws:
            received = [await receive(ws)]
            for sent in (stale_start, progress_event(job, 40), progress_event(job, 60)):
                await publish(job.job_id, sent)
            received.append(await receive(ws))
            for percent in (55, 60):
                await publish(job.job_id, progress_event(job, percent))
            received.append(await receive(ws))
            await publish(job.job_id, progress_event(job, 70))
            received.append(await receive(ws))
            return received, await ws.receive_nothing(timeout=0.3)

    received, quiet = run(scenario)
    assert [(m["type"], m["status"], m["progress"]) for m in received] == [
        ("snapshot", "processing", 50),
        ("progress", "processing", 60),
        ("progress", "processing", 60),
        ("progress", "processing", 70),
    ]
    assert quiet


def test_a_new_attempt_starts_progress_again(user):
    """A retry (queued, then processing from 0) and a redelivered job (processing again
    with the next attempt number in the row) lower the progress; nothing else does."""
    job = processing_job(user, progress=50, attempts=1)

    async def next_attempt(attempts: int) -> None:
        # As the services write a row: the job's card is dropped with the write.
        await sync_to_async(DownloadJob.objects.filter(pk=job.pk).update)(attempts=attempts)
        await sync_to_async(hotstate.card_forget)(job.job_id)

    async def scenario() -> list[tuple[str, str, int]]:
        async with socket(subscribe_path(job.job_id), user=user) as ws:
            received = [await receive(ws)]
            # Attempt 1 fails and is queued for a retry; attempt 2 starts.
            await publish(job.job_id, event(job, "status_update", Status.QUEUED, 50))
            await next_attempt(2)
            for sent in (
                event(job, "status_update", Status.PROCESSING, 0),
                progress_event(job, 5),
                progress_event(job, 4),  # dropped
            ):
                await publish(job.job_id, sent)
            received += [await receive(ws) for _ in range(3)]
            # Attempt 2's worker dies; the job is redelivered and attempt 3 starts.
            await next_attempt(3)
            for sent in (event(job, "status_update", Status.PROCESSING, 0), progress_event(job, 2)):
                await publish(job.job_id, sent)
            received += [await receive(ws) for _ in range(2)]
            assert await ws.receive_nothing(timeout=0.3)
            return [(m["type"], m["status"], m["progress"]) for m in received]

    assert run(scenario) == [
        ("snapshot", "processing", 50),
        ("status_update", "queued", 50),
        ("status_update", "processing", 0),
        ("progress", "processing", 5),
        ("status_update", "processing", 0),
        ("progress", "processing", 2),
    ]


def queue_behind(job_id: str, events: list[dict[str, Any]]) -> None:
    """Puts `events` in the queues of the job's sockets in this process at once, as the
    pub/sub layer's reader does for a process that is busy: the sockets have a backlog."""
    from channels.layers import get_channel_layer

    from jobs.events import job_event_message, job_group_name

    layer = get_channel_layer()
    loop_layer = layer._get_layer()
    channels = loop_layer.groups[loop_layer._get_group_channel_name(job_group_name(job_id))]
    for channel in channels:
        for sent in events:
            loop_layer.channels[channel].put_nowait(layer.serialize(job_event_message(sent)))


@pubsub_only
def test_a_socket_behind_skips_only_progress_that_newer_events_replace(user):
    """A socket with a backlog sends the job's latest state: a progress event that a later
    one (at least as far) or a status change replaces is skipped; status changes, a lower
    progress of a new attempt and the terminal event are not."""
    job = make_job(user)
    first = [
        event(job, "status_update", Status.PROCESSING, 0),
        *(progress_event(job, percent) for percent in (10, 20, 30)),
    ]
    second = [
        progress_event(job, 40),
        event(job, "status_update", Status.QUEUED, 40),  # a retry
        progress_event(job, 45),  # a late one of the failed attempt: no later event replaces it
        event(job, "completed", Status.COMPLETED, 100, download_url=f"/v1/download/{job.job_id}"),
    ]

    async def scenario() -> tuple[list[dict[str, Any]], int]:
        async with socket(subscribe_path(job.job_id), user=user) as ws:
            received = [await receive(ws)]
            queue_behind(job.job_id, first)
            received += [await receive(ws), await receive(ws)]
            assert await ws.receive_nothing(timeout=0.3)
            queue_behind(job.job_id, second)
            received += [await receive(ws), await receive(ws)]
            return received, await close_code(ws)

    received, code = run(scenario)
    assert [(m["type"], m["status"], m["progress"]) for m in received] == [
        ("snapshot", "queued", 0),
        ("status_update", "processing", 0),
        ("progress", "processing", 30),
        ("status_update", "queued", 40),
        ("completed", "completed", 100),
    ]
    assert code == NORMAL_CLOSE


def test_which_progress_a_later_event_replaces():
    def message(kind: str, progress: int) -> dict[str, Any]:
        return {"type": "job.event", "event": {"type": kind, "progress": progress}}

    assert _replaced_progress([message("progress", 10)]) == set()
    assert _replaced_progress([message("progress", 10), message("progress", 20)]) == {0}
    assert _replaced_progress([message("progress", 20), message("progress", 20)]) == {0}
    # A lower progress replaces nothing (the consumer drops it, or it starts a new attempt).
    assert _replaced_progress([message("progress", 20), message("progress", 5)]) == set()
    assert _replaced_progress([message("progress", 20), message("status_update", 0)]) == {0}
    assert _replaced_progress([message("status_update", 0), message("progress", 1)]) == set()
    assert _replaced_progress([message("progress", 1), message("completed", 100)]) == {0}
    # Other messages on the channel neither replace nor are replaced.
    assert _replaced_progress([message("progress", 1), {"type": "other"}]) == set()


def test_the_backlog_of_another_layer_is_empty():
    """Only the pub/sub layer's queues are taken; with any other layer every message is
    received one at a time, as Channels does."""
    from channels.layers import InMemoryChannelLayer

    assert backlog.take(InMemoryChannelLayer(), "anything") == []


def test_an_event_published_from_a_thread_reaches_the_pubsub_layers_subscribers():
    """job_event_publish sends the pub/sub layer's PUBLISH itself, from the calling thread:
    a subscriber of the layer (as a web process's consumer is) receives the very message
    the layer's own group_send would have delivered, on the group's channel only."""
    layer = get_channel_layer()
    assert isinstance(layer, RedisPubSubChannelLayer)
    sent = {"type": "progress", "job_id": "job_threaded", "progress": 42}

    async def scenario() -> tuple[dict[str, Any], bool]:
        mine, other = await layer.new_channel(), await layer.new_channel()
        await layer.group_add(job_group_name("job_threaded"), mine)
        await layer.group_add(job_group_name("job_other"), other)
        try:
            await sync_to_async(job_event_publish, thread_sensitive=False)("job_threaded", sent)
            received = await asyncio.wait_for(layer.receive(mine), TIMEOUT_S)
            try:
                await asyncio.wait_for(layer.receive(other), 0.3)
                leaked = True
            except TimeoutError:
                leaked = False
            return received, leaked
        finally:
            await layer.group_discard(job_group_name("job_threaded"), mine)
            await layer.group_discard(job_group_name("job_other"), other)

    received, leaked = async_to_sync(scenario)()

    assert received == job_event_message(sent)
    assert not leaked


# --- heartbeat -----------------------------------------------------------------------------


def test_heartbeat_repeats_the_last_state_while_the_job_is_active(user, settings):
    settings.WEBSOCKET_HEARTBEAT_S = 0.05
    job = processing_job(user, progress=30)

    async def scenario() -> tuple[list[dict[str, Any]], int, int]:
        async with socket(subscribe_path(job.job_id), user=user) as ws:
            received = [await receive(ws), await receive(ws)]
            await publish(job.job_id, progress_event(job, 35))
            received.append(await receive_skipping_heartbeats(ws))
            received.append(await receive(ws))
            running = len(heartbeat_tasks())
        await asyncio.sleep(0)
        return received, running, len(heartbeat_tasks())

    received, running, left = run(scenario)
    snapshot, first_beat, progress, next_beat = received
    assert (snapshot["type"], snapshot["progress"]) == ("snapshot", 30)
    assert first_beat.keys() == {"type", "job_id", "status", "progress", "timestamp"}
    assert first_beat == {**first_beat, "type": "heartbeat", "job_id": job.job_id, "status": "processing"}
    assert (first_beat["progress"], progress["progress"], next_beat["progress"]) == (30, 35, 35)
    assert next_beat["type"] == "heartbeat"
    assert (running, left) == (1, 0)  # cancelled at the disconnect


def test_heartbeat_stops_with_a_terminal_event(user, settings):
    settings.WEBSOCKET_HEARTBEAT_S = 0.05
    job = processing_job(user, progress=90)

    async def scenario() -> tuple[str, int, int, bool]:
        async with socket(subscribe_path(job.job_id), user=user) as ws:
            await receive(ws)
            await publish(job.job_id, event(job, "completed", Status.COMPLETED, 100))
            completed = await receive_skipping_heartbeats(ws)
            code = await close_code(ws)
            await asyncio.sleep(0)
            return completed["type"], code, len(heartbeat_tasks()), await ws.receive_nothing(timeout=0.3)

    assert run(scenario) == ("completed", NORMAL_CLOSE, 0, True)


def test_a_socket_that_missed_the_terminal_event_learns_it_from_the_row(user, settings):
    """channels-redis delivers at most once: a dropped `completed` must not leave the
    socket open with heartbeats forever."""
    settings.WEBSOCKET_HEARTBEAT_S = 0.05
    settings.WEBSOCKET_RESYNC_S = 0.2
    job = processing_job(user, progress=90)

    async def scenario() -> tuple[dict[str, Any], int]:
        async with socket(subscribe_path(job.job_id), user=user) as ws:
            await receive(ws)
            # Completed in the database; its event never reaches this socket.
            await sync_to_async(DownloadJob.objects.filter(pk=job.pk).update)(
                status=Status.COMPLETED, progress=100, completed_at=timezone.now()
            )
            return await receive_skipping_heartbeats(ws), await close_code(ws)

    missed, code = run(scenario)
    assert (missed["type"], missed["status"], missed["progress"]) == ("completed", "completed", 100)
    assert code == NORMAL_CLOSE


def test_a_socket_without_events_is_closed_after_the_idle_timeout(user, settings):
    settings.WEBSOCKET_HEARTBEAT_S = 0.05
    settings.WEBSOCKET_IDLE_TIMEOUT_S = 0.3
    job = processing_job(user, progress=10)

    async def scenario() -> tuple[int, int]:
        async with socket(subscribe_path(job.job_id), user=user) as ws:
            await receive(ws)
            beats = 0
            while True:
                output = await ws.receive_output(timeout=TIMEOUT_S)
                if output["type"] == "websocket.close":
                    return beats, output["code"]
                beats += 1

    beats, code = run(scenario)
    assert code == 4408
    assert 3 <= beats <= 8


def test_an_idle_socket_outlives_the_redis_read_timeout(user, settings):
    """redis-py 8 times reads out after 5 s by default, as long as channels_redis's blocking
    receive waits; the layer's settings must give the read more time, or an idle consumer
    dies."""
    settings.WEBSOCKET_HEARTBEAT_S = 60
    job = make_job(user)

    async def scenario() -> None:
        async with socket(subscribe_path(job.job_id), user=user) as communicator:
            assert (await receive(communicator))["type"] == "snapshot"
            await asyncio.sleep(6.5)
            await publish(job.job_id, event(job, "status_update", Status.PROCESSING, 0))
            assert (await receive(communicator))["status"] == Status.PROCESSING

    run(scenario)


# --- job ids: the HTTP pattern, 4404 for anything else --------------------------------------


def open_sockets_gauge() -> float:
    value = REGISTRY.get_sample_value("download_websocket_connections")
    return value or 0.0


@pytest.mark.parametrize(
    "job_id",
    ["job 0123456789abcdef", "job_" + "0" * 116, "job_dé️jà_vu"],
    ids=["space", "120 chars", "unicode"],
)
@pytest.mark.parametrize("who", ["user", "anonymous"])
def test_a_job_id_outside_the_http_pattern_is_closed_4404_without_an_error(user, job_id, who, caplog):
    """As on HTTP, where such a path matches no route: 4404 before anything else, nothing
    logged at ERROR, and the open-connections gauge where it was."""
    before = open_sockets_gauge()

    async def scenario() -> int:
        async with socket(subscribe_path(quote(job_id)), user=user if who == "user" else None) as ws:
            return await close_code(ws)

    with caplog.at_level(logging.WARNING):
        code = run(scenario)

    assert code == 4404
    assert [record for record in caplog.records if record.levelno >= logging.ERROR] == []
    assert open_sockets_gauge() == before


def test_the_websocket_route_has_the_http_job_id_pattern():
    """One definition, in the routes of both protocols and in the schema's 404."""
    from jobs.api import openapi
    from jobs.api.urls import JobIdConverter
    from jobs.job_id_path import JOB_ID_PATH_REGEX
    from realtime.routing import websocket_urlpatterns

    assert JobIdConverter.regex == JOB_ID_PATH_REGEX
    assert websocket_urlpatterns[0].pattern.regex.pattern == (
        rf"^v1/download/subscribe/(?P<job_id>{JOB_ID_PATH_REGEX})\Z"
    )
    assert JOB_ID_PATH_REGEX in (openapi.JOB_NOT_FOUND.description or "")


# --- connections per user --------------------------------------------------------------------


async def crash(communicator: WebsocketCommunicator) -> None:
    """The socket's process dies: no disconnect, nothing cleaned up."""
    for task in heartbeat_tasks():
        task.cancel()
    communicator.future.cancel()
    await asyncio.sleep(0)


def test_sockets_per_user_are_capped_at_websocket_max_per_user(user, other_user, settings):
    assert settings.WEBSOCKET_MAX_PER_USER == 20
    job = processing_job(user, progress=10)
    others_job = processing_job(other_user, progress=10)

    async def scenario() -> tuple[list[str], int, str, str]:
        async with AsyncExitStack() as stack:
            sockets = [
                await stack.enter_async_context(socket(subscribe_path(job.job_id), user=user))
                for _ in range(20)
            ]
            snapshots = [(await receive(ws))["type"] for ws in sockets]
            async with socket(subscribe_path(job.job_id), user=user) as refused:
                code = await close_code(refused)
            # Another user's sockets are counted apart.
            async with socket(subscribe_path(others_job.job_id), user=other_user) as theirs:
                others = (await receive(theirs))["type"]
            await sockets.pop().disconnect(timeout=TIMEOUT_S)
            async with socket(subscribe_path(job.job_id), user=user) as again:
                after_one_left = (await receive(again))["type"]
            return snapshots, code, others, after_one_left

    snapshots, code, others, after_one_left = run(scenario)
    assert snapshots == ["snapshot"] * 20
    assert code == 4429
    assert others == "snapshot"
    assert after_one_left == "snapshot"


def test_open_sockets_keep_their_place_and_those_of_a_dead_process_expire(user, settings):
    """The heartbeat renews each socket's place; a socket whose process died without a
    disconnect loses it within three heartbeats."""
    settings.WEBSOCKET_MAX_PER_USER = 2
    settings.WEBSOCKET_HEARTBEAT_S = 0.25  # a place lapses 0.75 s after it was last renewed
    job = processing_job(user, progress=10)

    async def scenario() -> tuple[int, str]:
        live = [WebsocketCommunicator(ROUTER, subscribe_path(job.job_id)) for _ in range(2)]
        for communicator in live:
            communicator.scope["user"] = user
            assert (await communicator.connect(timeout=TIMEOUT_S))[0]
            assert (await receive(communicator))["type"] == "snapshot"
        await asyncio.sleep(1.5)  # twice the lifetime of a place that is not renewed
        async with socket(subscribe_path(job.job_id), user=user) as refused:
            code = await close_code(refused)
        for communicator in live:
            await crash(communicator)
        await asyncio.sleep(1.5)
        async with socket(subscribe_path(job.job_id), user=user) as ws:
            return code, (await receive(ws))["type"]

    assert run(scenario) == (4429, "snapshot")


# --- tickets: what websocket_url carries instead of a credential -----------------------------


class ClockAhead:
    """django.core.signing's clock, set `ahead_s` later than the real one."""

    def __init__(self, ahead_s: float) -> None:
        self.ahead_s = ahead_s

    def time(self) -> float:
        return time.time() + self.ahead_s


def socket_path_of(websocket_url: str) -> str:
    """The path and query of a websocket_url, for the communicator."""
    parts = urlsplit(websocket_url)
    assert (parts.scheme, parts.netloc) == ("ws", "testserver")
    return f"{parts.path}?{parts.query}"


def ticket_of(websocket_url: str) -> str:
    query = parse_qs(urlsplit(websocket_url).query)
    assert set(query) == {"ticket"}, websocket_url  # no API key in a URL
    return query["ticket"][0]


def initiate(api_client: APIClient) -> dict[str, Any]:
    response = api_client.post("/v1/download/initiate", {"file_id": 70000}, format="json")
    assert response.status_code == 200, response.content
    data: dict[str, Any] = response.json()["data"]
    return data


def open_socket(path: str) -> dict[str, Any] | int:
    """What a client with no cookie, no header and no Origin gets: the snapshot, or the code."""

    async def scenario() -> dict[str, Any] | int:
        async with socket(path, app=application) as ws:
            output = await ws.receive_output(timeout=TIMEOUT_S)
            if output["type"] == "websocket.close":
                code: int = output.get("code", NORMAL_CLOSE)
                return code
            message: dict[str, Any] = json.loads(output["text"])
            return message

    result: dict[str, Any] | int = run(scenario)
    return result


def test_initiates_websocket_url_opens_the_socket_with_no_cookie_and_no_token(api_client, dispatched):
    created = initiate(api_client)
    assert ticket_of(created["websocket_url"])

    snapshot = open_socket(socket_path_of(created["websocket_url"]))

    assert isinstance(snapshot, dict)
    assert (snapshot["type"], snapshot["job_id"], snapshot["status"]) == (
        "snapshot",
        created["job_id"],
        "queued",
    )


def test_a_ticket_opens_sockets_for_websocket_ticket_ttl_s(api_client, dispatched, settings, monkeypatch):
    assert settings.WEBSOCKET_TICKET_TTL_S == 300
    path = socket_path_of(initiate(api_client)["websocket_url"])

    def at(later_s: float) -> dict[str, Any] | int:
        monkeypatch.setattr(signing, "time", ClockAhead(later_s))
        return open_socket(path)

    still_valid = at(290)
    expired = at(310)

    assert isinstance(still_valid, dict)
    assert still_valid["type"] == "snapshot"
    assert expired == 4401


def test_a_ticket_of_one_job_is_refused_on_another(api_client, dispatched):
    first, second = initiate(api_client), initiate(api_client)
    path = f"/v1/download/subscribe/{second['job_id']}?ticket={quote(ticket_of(first['websocket_url']))}"

    assert open_socket(path) == 4401


@pytest.mark.parametrize("change", ["tampered", "other salt", "another user's", "deactivated user"])
def test_a_forged_or_foreign_ticket_is_refused(api_client, other_client, user, dispatched, change):
    created = initiate(api_client)
    job_id, ticket = created["job_id"], ticket_of(created["websocket_url"])
    if change == "tampered":
        payload, rest = ticket.split(":", 1)
        ticket = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + ":" + rest
    elif change == "other salt":
        ticket = signing.dumps(signing.loads(ticket, salt="realtime.ticket"))
    elif change == "another user's":
        # A ticket of bob's own job does not open alice's job, and bob's job id is no help.
        ticket = ticket_of(initiate(other_client)["websocket_url"])
    else:
        User.objects.filter(pk=user.pk).update(is_active=False)

    assert open_socket(f"/v1/download/subscribe/{job_id}?ticket={quote(ticket)}") == 4401


def test_a_ticket_grants_nothing_else(api_client, dispatched):
    created = initiate(api_client)
    ticket = ticket_of(created["websocket_url"])
    status_path = f"/v1/download/status/{created['job_id']}"
    anonymous = APIClient()

    by_query = anonymous.get(status_path, {"ticket": ticket})
    by_header = anonymous.get(status_path, HTTP_AUTHORIZATION=f"Token {ticket}")
    as_a_token = open_socket(f"/v1/download/subscribe/{created['job_id']}?token={quote(ticket)}")

    assert (by_query.status_code, by_header.status_code, as_a_token) == (401, 401, 4401)


def test_a_ticket_minted_with_an_api_key_is_refused_once_that_key_is_deleted(api_client, user, dispatched):
    """Deleting a key revokes the tickets minted with it, whatever other keys the user has."""
    path = socket_path_of(initiate(api_client)["websocket_url"])
    assert isinstance(open_socket(path), dict)
    api_key_for(user, name="another")

    ApiKey.objects.filter(user=user).exclude(name="another").delete()

    assert open_socket(path) == 4401


def test_a_ticket_minted_in_a_session_outlives_the_users_api_keys(user, dispatched):
    browser = APIClient()
    browser.force_login(user)
    path = socket_path_of(initiate(browser)["websocket_url"])
    api_key_for(user)

    ApiKey.objects.filter(user=user).delete()

    opened = open_socket(path)
    assert isinstance(opened, dict)
    assert opened["type"] == "snapshot"


def test_the_status_of_an_active_job_carries_a_fresh_websocket_url(api_client, user, dispatched, monkeypatch):
    job_id = initiate(api_client)["job_id"]
    finished = make_job(user, status=Status.CANCELLED)
    # Ten minutes after initiate's ticket: the status answer is how a client gets a new one.
    monkeypatch.setattr(signing, "time", ClockAhead(600))

    data = api_client.get(f"/v1/download/status/{job_id}").json()["data"]
    snapshot = open_socket(socket_path_of(data["websocket_url"]))
    finished_data = api_client.get(f"/v1/download/status/{finished.job_id}").json()["data"]

    assert data["websocket_url"].startswith(f"ws://testserver/v1/download/subscribe/{job_id}?ticket=")
    assert isinstance(snapshot, dict)
    assert snapshot["type"] == "snapshot"
    assert "websocket_url" not in finished_data


# --- fan-out cost: one encoding per event, no thread hop per event ----------------------------


def test_the_published_text_is_sent_as_it_is_and_a_message_without_it_still_works(user):
    """The publisher encodes an event once (`text`), and every socket sends that text; a
    group message from an older publisher (the event alone) is encoded by the socket."""
    job = make_job(user)
    first, second = progress_event(job, 10), progress_event(job, 20)

    async def scenario() -> tuple[str, dict[str, Any]]:
        from channels.layers import get_channel_layer

        from jobs.events import job_event_message, job_group_name

        async with socket(subscribe_path(job.job_id), user=user) as ws:
            await receive(ws)
            message = job_event_message(first)
            assert json.loads(message["text"]) == first
            # A text that differs from the event's own encoding shows which one was sent.
            message["text"] = json.dumps(first, indent=1)
            layer = get_channel_layer()
            await layer.group_send(job_group_name(job.job_id), message)
            text = await ws.receive_from(timeout=TIMEOUT_S)
            await layer.group_send(job_group_name(job.job_id), {"type": "job.event", "event": second})
            return text, await receive(ws)

    text, old_style = run(scenario)
    assert text == json.dumps(first, indent=1)
    assert old_style == second


def test_job_events_and_the_disconnect_take_no_database_thread_hop(user, monkeypatch):
    """Channels closes old database connections (in the thread-sensitive executor) before
    every handler, and again in its disconnect handler; the job's events and the
    disconnect touch no database and skip it."""
    import channels.consumer
    import channels.generic.websocket

    job = make_job(user)
    hops: list[str] = []
    original = channels.consumer.aclose_old_connections

    async def counted() -> None:
        hops.append("hop")
        await original()

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", counted)
    monkeypatch.setattr(channels.generic.websocket, "aclose_old_connections", counted)

    async def scenario() -> tuple[int, int]:
        async with socket(subscribe_path(job.job_id), user=user) as ws:
            await receive(ws)
            after_connect = len(hops)
            for percent in (1, 2, 3):
                await publish(job.job_id, progress_event(job, percent))
                await receive(ws)
        return after_connect, len(hops)

    after_connect, at_the_end = run(scenario)
    assert after_connect >= 1  # the connect handler still has it
    assert at_the_end == after_connect


def test_sockets_closing_together_all_give_up_their_places(user, settings):
    """The places given up in one turn of the loop go to Redis in one round trip: each
    one is freed, and the user can open as many sockets again at once."""
    settings.WEBSOCKET_MAX_PER_USER = 5
    job = processing_job(user, progress=10)

    async def open_all() -> list[WebsocketCommunicator]:
        opened = []
        for _ in range(5):
            communicator = WebsocketCommunicator(ROUTER, subscribe_path(job.job_id))
            communicator.scope["user"] = user
            assert (await communicator.connect(timeout=TIMEOUT_S))[0]
            assert (await receive(communicator))["type"] == "snapshot"
            opened.append(communicator)
        return opened

    async def scenario() -> tuple[int, int, int]:
        first = await open_all()
        held = await state_async_client().zcard(f"websockets:user:{user.pk}")
        await asyncio.gather(*(communicator.disconnect(timeout=TIMEOUT_S) for communicator in first))
        after_close = await state_async_client().zcard(f"websockets:user:{user.pk}")
        again = await open_all()
        await asyncio.gather(*(communicator.disconnect(timeout=TIMEOUT_S) for communicator in again))
        return held, after_close, len(again)

    assert run(scenario) == (5, 0, 5)
