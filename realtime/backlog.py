"""A socket's backlog: the channel-layer messages that this process already holds for a
consumer's channel and that the consumer has not received yet.

With channels-redis's pub/sub layer (`CHANNEL_LAYER_BACKEND=pubsub`), one task per process
reads the subscription connection and puts each message in an in-memory queue per
channel; a consumer then receives them one at a time, each through a new task. A socket
whose consumer is behind (a busy process) has several waiting there. `take` hands them
over at once, in order, so that the consumer can skip a progress event that a newer
event of the same job already replaces (realtime/consumers.py), and spend one dispatch on
the lot.

The queues are the layer's own (`RedisPubSubLoopLayer.channels`, not public API, checked by
tests/realtime against the pinned channels-redis). Any other layer, or one whose internals
moved, gives an empty backlog: the consumer then receives and sends every message, as it
would without this module.
"""

import asyncio
import logging
from functools import cache
from typing import Any

from channels_redis.pubsub import RedisPubSubChannelLayer

logger = logging.getLogger(__name__)


def take(layer: Any, channel: str) -> list[dict[str, Any]]:
    """The messages queued in this process for `channel`, oldest first, taken off the layer
    without waiting; [] when there are none or the layer cannot tell. Call it only while no
    `receive()` of the channel is pending (within a consumer's handler), or that receive
    would miss them."""
    if not isinstance(layer, RedisPubSubChannelLayer):
        return []
    try:
        queue = layer._get_layer().channels.get(channel)
    except AttributeError:  # another release of channels-redis
        _warn_once()
        return []
    if not isinstance(queue, asyncio.Queue):
        return []
    messages = []
    while not queue.empty():
        messages.append(layer.deserialize(queue.get_nowait()))
    return messages


@cache
def _warn_once() -> None:
    logger.warning("This channels-redis keeps no per-channel queues in its pub/sub layer: no backlog taken")
