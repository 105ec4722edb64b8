"""The wait of the old `POST /download/start` (legacy/apis.py), without a thread.

HTTP views run in the WSGI thread pool (downloads_project/asgi.py). A request of the old
endpoint that had to wait there for its job would hold a thread for up to `LEGACY_WAIT_S`:
20 such callers would take the whole pool. So the view only creates the job and hands the
wait over: its answer carries the job id in `X-Downloads-Legacy-Wait`. This ASGI
middleware, in front of the pool, then waits on the event loop: subscribed to the job's
channel-layer group (the events the worker publishes), re-reading the job's card from
hot-state Redis every `RECHECK_S` in case an event was missed, until the job has ended or
the wait is over.
The answer then comes from `GET /download/start/{job_id}` run through the pool with the
caller's own credentials: a 302 to the file, the job's error, or the 202 to the new flow.

The marker header is removed from every request that reaches the pool (a client cannot
set it) and from every answer (a client never sees it). The view's answer carries the job
id and its owner's id in it; the request for the answer after the wait carries it too,
so that the view counts that answer (a GET of the same path from anywhere else is
answered but not counted: a cross-site page could send a user's browser there).

A wait is bounded three ways: by `LEGACY_WAIT_S`; by the client, whose disconnect
(`http.disconnect`) ends it at once, with nothing more computed or counted; and by its
places: at most `LEGACY_WAITS_PER_USER` waits of one user across all web processes
(counted in hot-state Redis, each place expiring on its own so that a process that dies
leaks none) and `LEGACY_WAITS_PER_PROCESS` in this process. Past either, or when Redis
cannot be asked, there is no wait: the answer is the one after it, at once (the 202 of
the new flow for a job still running).
"""

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings

from infra.redis import state_async_client
from jobs import hotstate
from jobs.events import job_group_name
from jobs.models import TERMINAL_STATUSES
from legacy.apis import WAIT_HEADER

logger = logging.getLogger(__name__)

PATH = "/download/start"
MARKER = WAIT_HEADER.lower().encode("latin-1")  # as ASGI names headers
# How often the card is re-read while no event came: a lost event costs at most this.
RECHECK_S = 2.0
# A place of a user's waits is held at most the wait and this margin, whatever becomes of
# the process that took it.
PLACE_MARGIN_S = 10.0
# Request headers the answer's request keeps from the caller's: its credentials and
# what a client sends about itself (the body's are dropped: the answer's request has none).
_DROPPED = {b"content-length", b"content-type", b"transfer-encoding", MARKER}

Scope = dict[str, Any]


class LegacyWait:
    def __init__(self, app: Any, *, clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.clock = clock
        self.waiting = 0  # this process's waits

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = [(name, value) for name, value in scope["headers"] if name.lower() != MARKER]
        if scope["path"] != PATH or scope["method"] != "POST":
            await self.app({**scope, "headers": headers}, receive, send)
            return
        answer = _Buffered()
        await self.app({**scope, "headers": [*headers, (MARKER, b"1")]}, receive, answer.send)
        handed = answer.marker()
        if handed is None:
            await answer.replay(send)
            return
        job_id, _, user_id = handed.partition(" ")
        if not await self._wait(job_id, user_id, receive):
            logger.info("Legacy wait for %s: the client left", job_id)
            return
        path = f"{PATH}/{job_id}"
        result_scope = {
            **scope,
            "method": "GET",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [
                *((name, value) for name, value in headers if name.lower() not in _DROPPED),
                (MARKER, b"1"),
            ],
        }
        await self.app(result_scope, _no_body, _Unmarked(send))

    async def _wait(self, job_id: str, user_id: str, receive: Any) -> bool:
        """Waits for the job if a place is free, racing the client's disconnect: False if
        the client left."""
        if self.waiting >= settings.LEGACY_WAITS_PER_PROCESS:
            return True
        self.waiting += 1
        try:
            place = await user_place_take(user_id, now=self.clock())
            if place is None:
                return True
            try:
                return await _unless_client_leaves(
                    job_end_wait(job_id, timeout_s=settings.LEGACY_WAIT_S), receive
                )
            finally:
                await user_place_release(user_id, place)
        finally:
            self.waiting -= 1


def _places_key(user_id: str) -> str:
    return f"legacy:waits:{user_id}"


async def user_place_take(user_id: str, *, now: float) -> str | None:
    """One of the user's LEGACY_WAITS_PER_USER places, or None (all taken, or Redis could
    not be asked). A place is a member of the user's sorted set scored with the time it
    lapses: taking one first drops the lapsed ones, so a process that died while waiting
    frees its places within LEGACY_WAIT_S + PLACE_MARGIN_S. Added and then counted in one
    transaction: two requests racing for the last place may both lose it, never both get it."""
    key = _places_key(user_id)
    place = uuid.uuid4().hex
    held_s = settings.LEGACY_WAIT_S + PLACE_MARGIN_S
    try:
        client = state_async_client()
        async with client.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zadd(key, {place: now + held_s})
            pipe.zcard(key)
            pipe.expire(key, int(held_s) + 1)
            _, _, held, _ = await pipe.execute()
        if held <= settings.LEGACY_WAITS_PER_USER:
            return place
        await client.zrem(key, place)
    except Exception:
        logger.warning("Legacy wait: could not take a place of user %s; no wait", user_id, exc_info=True)
    return None


async def user_place_release(user_id: str, place: str) -> None:
    try:
        await state_async_client().zrem(_places_key(user_id), place)
    except Exception:  # it lapses on its own
        logger.warning("Legacy wait: could not free a place of user %s", user_id, exc_info=True)


async def _client_left(receive: Any) -> None:
    """Returns once the client has disconnected. Whatever of the body the view did not
    read is skipped."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _unless_client_leaves(wait: Any, receive: Any) -> bool:
    """Runs `wait` until it ends (True) or the client disconnects first (False, and the
    wait is cancelled: its subscription is dropped, its card no longer read)."""
    waiting = asyncio.ensure_future(wait)
    leaving = asyncio.ensure_future(_client_left(receive))
    try:
        await asyncio.wait({waiting, leaving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiting, leaving):
            task.cancel()
        await asyncio.gather(waiting, leaving, return_exceptions=True)
    return not (leaving.done() and not leaving.cancelled() and leaving.exception() is None)


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


class _Buffered:
    """An answer held back until it is known whether it hands a wait over."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    def marker(self) -> str | None:
        for message in self.messages:
            if message["type"] == "http.response.start":
                for name, value in message.get("headers", []):
                    if name.lower() == MARKER:
                        return str(value.decode("latin-1"))
        return None

    async def replay(self, send: Any) -> None:
        for message in self.messages:
            await _Unmarked(send)(message)


class _Unmarked:
    """Passes an answer on without the marker header."""

    def __init__(self, send: Any) -> None:
        self._send = send

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = [(name, value) for name, value in message.get("headers", []) if name.lower() != MARKER]
            message = {**message, "headers": headers}
        await self._send(message)


async def _ended(job_id: str) -> bool:
    """The job's card says it ended, read on the loop (no thread). A card that is missing
    or cannot be read says nothing: the answer's request reads the row anyway."""
    try:
        card = await hotstate.card_read_async(job_id)
    except Exception:
        logger.warning("Legacy wait: could not read the card of %s", job_id, exc_info=True)
        return False
    return card is not None and card.status in TERMINAL_STATUSES


async def job_end_wait(job_id: str, *, timeout_s: float) -> bool:
    """Waits until the job has ended (True) or `timeout_s` has passed (False), on the
    event loop: the job's events, and its card every RECHECK_S."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    layer = get_channel_layer()
    group = job_group_name(job_id)
    channel = None
    try:
        if layer is not None:
            try:
                channel = await layer.new_channel()
                await layer.group_add(group, channel)
            except Exception:
                logger.warning("Legacy wait: no events for %s; reading its card only", job_id, exc_info=True)
                channel = None
        while True:
            if await _ended(job_id):
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            step = min(left, RECHECK_S)
            if channel is None:
                await asyncio.sleep(step)
                continue
            try:
                message = await asyncio.wait_for(layer.receive(channel), timeout=step)
            except TimeoutError:
                continue
            except Exception:
                logger.warning("Legacy wait: events of %s lost; reading its card only", job_id, exc_info=True)
                channel = None
                continue
            if message.get("event", {}).get("status") in TERMINAL_STATUSES:
                return True
    finally:
        if channel is not None and layer is not None:
            try:
                await layer.group_discard(group, channel)
            except Exception:
                logger.warning("Legacy wait: could not leave the group of %s", job_id, exc_info=True)
