"""Publishing job events to the browsers and clients that watch a job.

The channel layer delivers at most once: the pub/sub layer (the default) loses what a web
process misses while it is cut off from Redis, the core layer what overflows a process's
inbox, and a socket that is behind skips progress that a newer event replaces. An event is
a hint. The database row (with the hot progress in Redis) is the truth, and every socket
starts from a snapshot of it.

Events are published from sync code (the Celery worker's job threads, the API's services).
With the pub/sub layer (the default) a group send is one PUBLISH of the layer's serialized
message on the group's channel: the calling thread sends it itself, through a pool of
plain connections shared by the process's threads (infra/redis.py `publish_client`: hot state's,
when the layer is on its server), so hundreds of jobs publishing at once neither queue behind
one connection nor hop to another thread.

The core layer's group send is a Lua call per member process, which only channels_redis
makes. It keeps its connections per event loop, and `async_to_sync` from a thread without a
loop would make a new loop, so a new connection, on every call (~7 ms instead of ~1 ms). So
with the core layer each process publishes on one long-lived loop in a daemon thread, made
on first use and made again in a forked child (Celery's prefork pool forks after import).
"""

import asyncio
import atexit
import json
import logging
import os
import threading
import weakref
from typing import Any

from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings

from infra.redis import publish_client, same_server

logger = logging.getLogger(__name__)

# A publish that Redis has not taken by then is dropped (and logged): the job goes on.
PUBLISH_TIMEOUT_S = 2.0


def job_group_name(job_id: str) -> str:
    return f"job.{job_id}"


def user_group_name(user_id: int) -> str:
    """The group that every open socket of the user joins, on any ASGI process."""
    return f"user.{user_id}"


def job_event_publish(job_id: str, event: dict[str, Any]) -> None:
    """Sends one event to every socket subscribed to the job, on any ASGI process. Returns
    once Redis has it, or after PUBLISH_TIMEOUT_S; never raises. For sync code only: a
    coroutine awaits `get_channel_layer().group_send` itself."""
    try:
        _group_send(job_group_name(job_id), job_event_message(event))
    except Exception:
        # A lost hint must never fail the job: watchers fall back to polling.
        logger.warning("Could not publish %s event of %s", event.get("type"), job_id, exc_info=True)


def user_sockets_close(user_id: int) -> None:
    """Closes every open socket of the user, on any ASGI process: the user was deactivated
    or deleted. Never raises; a socket that misses it finds out at its next check of the
    user (realtime/consumers.py, every WEBSOCKET_RESYNC_S)."""
    try:
        _group_send(user_group_name(user_id), {"type": "user.revoked"})
    except Exception:
        logger.warning("Could not tell the sockets of user %s to close", user_id, exc_info=True)


def _group_send(group: str, message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    if isinstance(layer, RedisPubSubChannelLayer) and (publisher := _pubsub_publisher(layer)) is not None:
        publisher.publish(group, layer.serialize(message))
    else:
        _publisher().run(layer.group_send(group, message), timeout_s=PUBLISH_TIMEOUT_S)


def job_event_on_hot_state(job_id: str, event: dict[str, Any]) -> tuple[str, bytes] | None:
    """The PUBLISH (channel, message) of one event, for a caller that sends it to hot-state
    Redis itself, with its own writes there (a running attempt's progress, in one round
    trip): when the channel layer is the pub/sub one on hot state's server (pub/sub ignores
    the database number). None otherwise: then `job_event_publish` sends it."""
    layer = get_channel_layer()
    if not isinstance(layer, RedisPubSubChannelLayer):
        return None
    publisher = _pubsub_publisher(layer)
    if publisher is None or not publisher.on_hot_state:
        return None
    return publisher.channel(job_group_name(job_id)), layer.serialize(job_event_message(event))


def job_event_message(event: dict[str, Any]) -> dict[str, Any]:
    """The group message of one event: the event (what the consumer decides on) and its
    JSON text, encoded once here rather than once per socket (what the consumer sends)."""
    return {"type": "job.event", "event": event, "text": json.dumps(event)}


class _PubSubPublisher:
    """PUBLISH as channels-redis's pub/sub layer does it (`RedisPubSubLoopLayer.group_send`:
    the layer's serialized message, on the channel `<prefix>__group__<group>`), from the
    calling thread. tests/realtime/test_consumers.py holds it to the layer's subscribers."""

    def __init__(self, address: str, prefix: str, *, on_hot_state: bool) -> None:
        self.address = address
        self.prefix = prefix
        self.on_hot_state = on_hot_state  # the layer's server is hot state's

    def channel(self, group: str) -> str:
        return f"{self.prefix}__group__{group}"

    def publish(self, group: str, payload: bytes) -> None:
        publish_client(self.address, timeout_s=PUBLISH_TIMEOUT_S).publish(self.channel(group), payload)


_pubsub_publishers: "weakref.WeakKeyDictionary[RedisPubSubChannelLayer, _PubSubPublisher | None]" = (
    weakref.WeakKeyDictionary()
)
_pubsub_publishers_lock = threading.Lock()


def _pubsub_publisher(layer: RedisPubSubChannelLayer) -> _PubSubPublisher | None:
    """The process's publisher for the pub/sub `layer`, or None where the layer spreads
    groups over several servers (then the layer itself publishes, on the loop thread). Its
    client (infra/redis.py `publish_client`) is bounded as hot state's, and is hot state's
    own where the layer is on that server."""
    with _pubsub_publishers_lock:
        if layer in _pubsub_publishers:
            return _pubsub_publishers[layer]
        hosts = layer._kwargs.get("hosts") or []
        publisher = None
        if len(hosts) == 1:
            host = hosts[0]
            address = (host.get("address") if isinstance(host, dict) else host) or settings.CHANNEL_LAYER_URL
            prefix = layer._kwargs.get("prefix", "asgi")
            publisher = _PubSubPublisher(
                address, prefix, on_hot_state=same_server(address, settings.REDIS_STATE_URL)
            )
        _pubsub_publishers[layer] = publisher
        return publisher


class _LoopThread:
    """An event loop that runs forever in a daemon thread of the process that made it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="job-events", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            # channels_redis wraps `close` to close its connection pool of this loop first.
            self.loop.close()

    def run(self, coroutine: Any, *, timeout_s: float) -> None:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise

    def stop(self, *, timeout_s: float = 2.0) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout_s)


_loop_thread: _LoopThread | None = None
_loop_thread_lock = threading.Lock()


def _publisher() -> _LoopThread:
    global _loop_thread
    with _loop_thread_lock:
        if _loop_thread is None or _loop_thread.pid != os.getpid():
            _loop_thread = _LoopThread()
        return _loop_thread


def _forget_after_fork() -> None:
    """In a forked child the parent's loop thread does not exist, and its lock may have
    been held at the fork: the next publish makes both anew."""
    global _loop_thread, _loop_thread_lock, _pubsub_publishers_lock
    _loop_thread = None
    _loop_thread_lock = threading.Lock()
    _pubsub_publishers_lock = threading.Lock()
    _pubsub_publishers.clear()


@atexit.register
def _stop_publisher() -> None:
    """Closes the loop's Redis connections at a normal exit."""
    if _loop_thread is not None and _loop_thread.pid == os.getpid():
        _loop_thread.stop()


os.register_at_fork(after_in_child=_forget_after_fork)
