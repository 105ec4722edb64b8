"""WebSocket of one job: a snapshot first, then the job's events until a terminal one."""

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.utils import timezone

from jobs import selectors
from jobs.models import DownloadJob, Status

from .events import job_group_name

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404
TERMINAL_EVENT_TYPES = frozenset({"completed", "error", "cancelled"})


@database_sync_to_async
def _snapshot(user: Any, job_id: str) -> dict[str, Any] | None:
    try:
        job = selectors.download_job_get_for_owner(owner=user, job_id=job_id)
    except DownloadJob.DoesNotExist:
        return None
    hot = selectors.download_job_hot([job]).get(job.job_id)
    return selectors.download_job_status(job=job, hot=hot)


class JobConsumer(AsyncJsonWebsocketConsumer):
    job_id: str
    group: str | None = None

    async def connect(self) -> None:
        self.job_id = self.scope["url_route"]["kwargs"]["job_id"]
        user = self.scope.get("user")
        await self.accept()
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        # Join before reading the snapshot: an event sent in between arrives after the
        # snapshot instead of being lost.
        self.group = job_group_name(self.job_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        snapshot = await _snapshot(user, self.job_id)
        if snapshot is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        await self.send_json({**snapshot, "type": "snapshot", "timestamp": selectors.iso(timezone.now())})
        if snapshot["status"] not in (Status.QUEUED, Status.PROCESSING):
            await self.close()

    async def disconnect(self, code: int) -> None:
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def job_event(self, message: dict[str, Any]) -> None:
        event = message["event"]
        await self.send_json(event)
        if event.get("type") in TERMINAL_EVENT_TYPES:
            await self.close()
