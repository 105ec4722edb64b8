"""WebSocket of one job: a snapshot first, then the job's events until a terminal one.

Every message carries `status` and `progress`. Within an attempt the progress that a socket
shows never goes backwards: the snapshot is read after joining the job's group, so events
already queued for the socket can be older than it, and those are dropped. A socket that is
behind (its process busy) skips a progress event that a newer event of the job, queued
behind it, replaces; status changes and terminal events are always sent. While the job is
active, a heartbeat repeats the last state sent, so that proxies keep an idle socket open.

A socket that has carried no event of its job for WEBSOCKET_RESYNC_S reads the job's row
again: an event the channel layer dropped (it delivers at most once) cannot leave a
finished job's socket waiting. After WEBSOCKET_IDLE_TIMEOUT_S without an event the server
closes it (4408); a client that still cares polls the status or opens a new one.

A socket acts for its user only while the user is active: every socket joins its user's
group, which realtime/signals.py tells to close (4401) when the user is deactivated or
deleted, and re-reads the user every WEBSOCKET_RESYNC_S in case that message was lost or
never sent (a bulk `update()` sends no signal).

A user has at most WEBSOCKET_MAX_PER_USER sockets open at once, on all web processes
(realtime/socket_places.py): one more is closed 4429. Every refusal comes after the
handshake, so that the client sees its code.
"""

import asyncio
import json
import time
import uuid
from typing import Any

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer
from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone

from jobs import metrics, selectors
from jobs.events import job_group_name, user_group_name
from jobs.models import ACTIVE_STATUSES, DownloadJob, Status

from . import backlog, socket_places
from .auth import socket_user

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_IDLE = 4408
CLOSE_TOO_MANY = 4429
TERMINAL_EVENT_TYPES = frozenset({"completed", "error", "cancelled"})


@database_sync_to_async
def _snapshot(user: Any, job_id: str) -> tuple[dict[str, Any], int] | None:
    """The job's status object (as the status API gives it, from the job's card, with a
    queued job's place in line) and its attempt number."""
    try:
        card, hot = selectors.download_job_card_for_owner(owner_id=user.pk, job_id=job_id)
    except DownloadJob.DoesNotExist:
        return None
    status = selectors.download_job_status(job=card, hot=hot)
    return {**status, **selectors.download_job_queue_place(job=card)}, card.attempts


@database_sync_to_async
def _row_status(user: Any, job_id: str) -> dict[str, Any] | None:
    """The job's status object from its row, not its card: what a quiet socket checks
    against, in case both an event and the card's replacement were lost."""
    try:
        job = selectors.download_job_get_for_owner(owner=user, job_id=job_id)
    except DownloadJob.DoesNotExist:
        return None
    return selectors.download_job_status(job=job, hot=selectors.download_job_hot([job]).get(job_id))


@database_sync_to_async
def _user_is_active(user_id: int) -> bool:
    return get_user_model()._default_manager.filter(pk=user_id, is_active=True).exists()


# Message types whose handlers take no thread hop to close old database connections (see
# JobConsumer.dispatch): the job's events, the client's frames and the disconnect.
_NO_DATABASE_HANDLERS = {
    "job.event": "job_event",
    "websocket.receive": "websocket_receive",
    "websocket.disconnect": "websocket_disconnect",
}


def _replaced_progress(batch: list[dict[str, Any]]) -> set[int]:
    """The indexes of the progress events in `batch` (channel-layer messages, oldest first)
    that a later job event of the batch replaces: a status change or terminal event, or a
    progress event at least as far."""
    replaced: set[int] = set()
    later_status = False  # a later event that is not a progress event
    later_progress = -1  # the furthest later progress event
    for index in range(len(batch) - 1, -1, -1):
        if batch[index].get("type") != "job.event":
            continue
        event = batch[index]["event"]
        if event.get("type") != "progress":
            later_status = True
            continue
        progress = event.get("progress", 0)
        if later_status or later_progress >= progress:
            replaced.add(index)
        later_progress = max(later_progress, progress)
    return replaced


class UnknownPathConsumer(AsyncWebsocketConsumer):
    """Any socket path that no route takes: closed 4404, as HTTP answers 404."""

    async def connect(self) -> None:
        await self.accept()
        await self.close(code=CLOSE_NOT_FOUND)


class JobConsumer(AsyncJsonWebsocketConsumer):
    job_id: str
    user: Any = None
    place: str | None = None  # this socket's id among its user's open sockets, once counted
    group: str | None = None
    user_group: str | None = None
    heartbeat: asyncio.Task[None] | None = None
    closing = False
    # What this socket last told its client, and the attempt that was in.
    status = ""
    progress = 0
    attempt: int | None = None
    counted = False  # in the open-connections gauge
    last_event_at = 0.0  # monotonic time of the last event of the job sent

    async def connect(self) -> None:
        self.job_id = self.scope["url_route"]["kwargs"]["job_id"]
        await self.accept()
        metrics.websocket_connections.inc()
        self.counted = True
        user = await socket_user(self.scope, self.job_id)
        if user is None or not user.is_authenticated:
            await self._close(code=CLOSE_UNAUTHENTICATED)
            return
        self.user = user
        place = uuid.uuid4().hex
        taken = await socket_places.websocket_place_take(user_id=user.pk, socket_id=place)
        if taken is False:
            await self._close(code=CLOSE_TOO_MANY)
            return
        if taken:
            self.place = place
        self.user_group = user_group_name(user.pk)
        await self.channel_layer.group_add(self.user_group, self.channel_name)
        # Join before reading the snapshot: an event sent in between arrives after the
        # snapshot instead of being lost.
        self.group = job_group_name(self.job_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        found = await _snapshot(user, self.job_id)
        if found is None:
            await self._close(code=CLOSE_NOT_FOUND)
            return
        snapshot, self.attempt = found
        self.last_event_at = time.monotonic()
        await self._send({**snapshot, "type": "snapshot", "timestamp": selectors.iso(timezone.now())})
        if snapshot["status"] in ACTIVE_STATUSES:
            self.heartbeat = asyncio.create_task(self._beat(), name=f"heartbeat {self.job_id}")
        else:
            await self._close()

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        """Channels' own, without its second `aclose_old_connections()` hop (see
        `dispatch`): this consumer joins no `groups` of the class, only its job's."""
        await self.disconnect(message.get("code", 1005))
        raise StopConsumer()

    async def disconnect(self, code: int) -> None:
        if self.counted:
            self.counted = False
            metrics.websocket_connections.dec()
        self._stop_heartbeat()
        await self._give_up_place()
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)
        if self.user_group is not None:
            await self.channel_layer.group_discard(self.user_group, self.channel_name)

    async def user_revoked(self, message: dict[str, Any]) -> None:
        """The user was deactivated or deleted (realtime/signals.py)."""
        if not self.closing:
            await self._close(code=CLOSE_UNAUTHENTICATED)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch, without its `aclose_old_connections()` (a hop to the
        thread-sensitive executor) before the handlers that touch no database: the
        job's events and the client's frames, which is one hop per event and socket, and
        the disconnect. Every database read here goes through `database_sync_to_async`,
        which closes old connections in its thread anyway."""
        handler_name = _NO_DATABASE_HANDLERS.get(message.get("type", ""))
        if handler_name is None:
            await super().dispatch(message)
            return
        await getattr(self, handler_name)(message)

    async def job_event(self, message: dict[str, Any]) -> None:
        """This event, and the messages queued behind it for this socket (realtime/
        backlog.py), in order. A progress event that a later event of the job in that lot
        replaces is skipped: a socket that fell behind catches up to the job's latest state
        instead of replaying every step. Other events are never skipped."""
        batch = [message, *backlog.take(self.channel_layer, self.channel_name)]
        replaced = _replaced_progress(batch) if len(batch) > 1 else ()
        for index, item in enumerate(batch):
            if item.get("type") != "job.event":
                await self.dispatch(item)
            elif index not in replaced:
                await self._forward(item)

    async def _forward(self, message: dict[str, Any]) -> None:
        event = message["event"]
        if self.closing:
            return
        if self._may_be_outdated(event) and await self._is_outdated(event):
            return
        self.last_event_at = time.monotonic()
        # The publisher encodes the event once for all its sockets (`text`); a message
        # without it (from a publisher of an older release) is encoded here.
        await self._send(event, text=message.get("text"))
        if event.get("type") in TERMINAL_EVENT_TYPES:
            await self._close()

    def _may_be_outdated(self, event: dict[str, Any]) -> bool:
        """A lower progress than this socket sent while processing: only then is the event
        possibly outdated. Plain comparisons, no await: the common case costs nothing."""
        return bool(
            event.get("status") == self.status == Status.PROCESSING
            and event.get("progress", 0) < self.progress
        )

    async def _is_outdated(self, event: dict[str, Any]) -> bool:
        """True for a lower progress than this socket sent in the same attempt. Only a
        status change lowers it: queued for a retry, then processing from 0."""
        if not self._may_be_outdated(event):
            return False
        if event.get("type") == "progress":
            return True
        # A status_update to processing that is lower than what was sent: the start of
        # this attempt, queued before the snapshot was read (outdated), or the start of a
        # new attempt of a job redelivered after its worker died. The row tells which.
        found = await _snapshot(self.user, self.job_id)
        attempt, self.attempt = self.attempt, (found[1] if found else None)
        return attempt == self.attempt

    async def _send(self, message: dict[str, Any], *, text: str | None = None) -> None:
        """Sends `message`, as `text` when that is its JSON already."""
        self.status = message.get("status", self.status)
        self.progress = message.get("progress", self.progress)
        await self.send(text_data=text if text is not None else json.dumps(message))

    async def _beat(self) -> None:
        last_resync_at = last_user_check_at = time.monotonic()
        try:
            while True:
                await asyncio.sleep(settings.WEBSOCKET_HEARTBEAT_S)
                if self.place is not None:
                    await socket_places.websocket_place_renew(user_id=self.user.pk, socket_id=self.place)
                now = time.monotonic()
                if now - self.last_event_at >= settings.WEBSOCKET_IDLE_TIMEOUT_S:
                    await self._close(code=CLOSE_IDLE)
                    return
                if now - last_user_check_at >= settings.WEBSOCKET_RESYNC_S:
                    last_user_check_at = now
                    if not await _user_is_active(self.user.pk):
                        await self._close(code=CLOSE_UNAUTHENTICATED)
                        return
                quiet_since = max(self.last_event_at, last_resync_at)
                if now - quiet_since >= settings.WEBSOCKET_RESYNC_S:
                    last_resync_at = now
                    if await self._resync():
                        return
                await self.send_json(
                    {
                        "type": "heartbeat",
                        "job_id": self.job_id,
                        "status": self.status,
                        "progress": self.progress,
                        "timestamp": selectors.iso(timezone.now()),
                    }
                )
        except OSError:
            return  # the client is gone (uvicorn's ClientDisconnected); its disconnect follows

    async def _resync(self) -> bool:
        """Reads the row; if the job has ended, sends that as the event the socket missed
        and closes. Returns True if it closed."""
        found = await _row_status(self.user, self.job_id)
        if found is None or found["status"] in ACTIVE_STATUSES:
            return False
        event_type = {Status.COMPLETED: "completed", Status.FAILED: "error"}.get(found["status"], "cancelled")
        await self._send({**found, "type": event_type, "timestamp": selectors.iso(timezone.now())})
        await self._close()
        return True

    async def _close(self, code: int | None = None) -> None:
        """Closes from the server's end; nothing is sent after (the ASGI server would
        refuse it), though queued events may still be delivered until the disconnect."""
        self.closing = True
        self._stop_heartbeat()
        await self.close(code=code)

    async def _give_up_place(self) -> None:
        """Frees this socket's place among its user's sockets. At the disconnect, not at a
        close of the server's: that may run in the heartbeat task, cancelled as it closes."""
        place, self.place = self.place, None
        if place is not None:
            await socket_places.websocket_place_give_up(user_id=self.user.pk, socket_id=place)

    def _stop_heartbeat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.cancel()
            self.heartbeat = None
