"""Publishing job events to the browsers and clients that watch a job.

The channel layer delivers at most once and drops when a channel is full: an event is a
hint. The database row (with the hot progress in Redis) is the truth, and every socket
starts from a snapshot of it.
"""

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)


def job_group_name(job_id: str) -> str:
    return f"job.{job_id}"


def job_event_publish(job_id: str, event: dict[str, Any]) -> None:
    """Sends one event to every socket subscribed to the job, on any ASGI process."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(job_group_name(job_id), {"type": "job.event", "event": event})
    except Exception:
        # A lost hint must never fail the job: watchers fall back to polling.
        logger.warning("Could not publish %s event of %s", event.get("type"), job_id, exc_info=True)
