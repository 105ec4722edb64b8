"""Following one job to its end: its WebSocket first, polling its status as the fallback.

The rules are the download page's (static/downloads.js), in one thread:

- The socket is the job's `websocket_url` (initiate's, then the newest one a status answer
  of the active job carried: its ticket opens the socket for a few minutes only).
- Polling GET /v1/download/status/<id> every `polling_interval` starts when the socket does
  not open within `open_timeout_s`, is refused, errors, drops before a terminal message,
  or goes silent: no snapshot within `open_timeout_s` of opening, or nothing (the server
  sends a heartbeat every 15 s) for `heartbeat_window_s`.
- The socket is tried again with backoff (1 s, 2 s, 4 s ... 30 s, from 1 s again once a
  socket has worked); polling stops while it is open.
- Closed 4401 (the ticket expired): the next poll brings a fresh ticket, or a 401 if the
  credential is gone. 4404: the job does not exist (JobNotFound). 4408 (idle) and 4429
  (too many sockets of this user): lost, as above.
- Events are hints: progress never goes backwards on screen within an attempt, and a stale
  `queued` (without a newer attempt count) after `processing` is ignored.
"""

import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import connect

from . import errors
from .models import STATUSES, TERMINAL_STATUSES, JobStatus, Transport

logger = logging.getLogger("downloads_client")

RECONNECT_BASE_S = 1.0
RECONNECT_MAX_S = 30.0
# Kept from the previous state when a message does not repeat them.
_KEPT_FIELDS = ("file_id", "priority", "created_at")
# Transient faults of a poll: polling goes on.
_TRANSIENT = (errors.ConnectionFailed, errors.ServiceUnavailable, errors.ServerError, errors.RateLimited)


class JobFollower:
    def __init__(
        self,
        job_id: str,
        *,
        poll: Callable[[], dict[str, Any]],
        websocket_url: str | None,
        polling_interval_s: float,
        use_websocket: bool = True,
        open_timeout_s: float = 5.0,
        heartbeat_window_s: float = 20.0,
        on_update: Callable[[JobStatus, Transport | None], None] | None = None,
        user_agent: str | None = None,
    ) -> None:
        self.job_id = job_id
        self.poll = poll
        self.websocket_url = websocket_url
        self.polling_interval_s = polling_interval_s
        self.use_websocket = use_websocket
        self.open_timeout_s = open_timeout_s
        self.heartbeat_window_s = heartbeat_window_s
        self.on_update = on_update
        self.user_agent = user_agent
        self.state: dict[str, Any] = {"job_id": job_id}
        self.queued_attempts = 0
        self.transport: Transport | None = None  # until the socket opens or a poll is made

    @property
    def finished(self) -> bool:
        return self.state.get("status") in TERMINAL_STATUSES

    def run(self, *, timeout_s: float | None = None) -> JobStatus:
        """Follows the job until a terminal status, which it returns (whatever it is)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        reconnect_at = 0.0
        reconnect_attempt = 0
        next_poll_at = 0.0
        while not self.finished:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise errors.WaitTimeout(
                    "WAIT_TIMEOUT", f"{self.job_id} did not finish within {timeout_s} s", job_id=self.job_id
                )
            if self.use_websocket and self.websocket_url and now >= reconnect_at:
                if self._socket_session(deadline):
                    reconnect_attempt = 0
                if self.finished:
                    break
                # Lost, refused or never opened: polling starts (at once, unless it was
                # going on already), and the socket is tried again later.
                delay = min(RECONNECT_MAX_S, RECONNECT_BASE_S * 2**reconnect_attempt)
                reconnect_attempt += 1
                reconnect_at = time.monotonic() + delay
                if self.transport != "polling":
                    next_poll_at = 0.0
                continue
            self._set_transport("polling")
            if now >= next_poll_at:
                self._poll_once()
                next_poll_at = time.monotonic() + self.polling_interval_s
                continue
            wake = next_poll_at
            if self.use_websocket and self.websocket_url:
                wake = min(wake, reconnect_at)
            if deadline is not None:
                wake = min(wake, deadline)
            time.sleep(max(0.0, wake - now))
        return JobStatus.from_api(self.state)

    # --- the socket --------------------------------------------------------------------------

    def _socket_session(self, deadline: float | None) -> bool:
        """One socket, from opening to its loss or the job's end. True if it carried a
        message (it worked, so the backoff starts again)."""
        url = self.websocket_url
        assert url is not None
        worked = False
        try:
            with connect(
                url,
                open_timeout=self.open_timeout_s,
                close_timeout=1,
                user_agent_header=self.user_agent,
            ) as socket:
                window = self.open_timeout_s  # the snapshot comes as soon as it opens
                while True:
                    timeout = window
                    if deadline is not None:
                        timeout = min(timeout, max(0.0, deadline - time.monotonic()))
                    try:
                        raw = socket.recv(timeout=timeout)
                    except TimeoutError:
                        logger.info("The socket of %s went silent; polling", self.job_id)
                        return worked
                    worked = True
                    window = self.heartbeat_window_s
                    # Following by socket once it carries something: a socket refused after
                    # its handshake (4401, 4429) never did.
                    self._set_transport("websocket")
                    message = _json_object(raw)
                    if message is not None:
                        self.apply(message)
                    if self.finished:
                        return True
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else None
            if code == 4404:
                raise errors.JobNotFound("JOB_NOT_FOUND", "Job not found", job_id=self.job_id) from None
            if code == 4401 and self.websocket_url == url:
                self.websocket_url = None  # its ticket expired: the next poll brings a fresh one
            logger.info("The socket of %s closed (%s); polling", self.job_id, code)
        except (OSError, TimeoutError, WebSocketException) as exc:
            logger.info("The socket of %s did not open (%s); polling", self.job_id, exc)
        return worked

    # --- polling -------------------------------------------------------------------------------

    def _poll_once(self) -> None:
        try:
            data = self.poll()
        except _TRANSIENT as exc:
            logger.info("Polling %s: %s; trying again", self.job_id, exc)
            return
        self.apply({**data, "type": "poll"})

    # --- state -------------------------------------------------------------------------------

    def apply(self, update: dict[str, Any]) -> None:
        """Takes a status object or a socket message into the job's state."""
        kind = update.get("type")
        if kind == "heartbeat":
            return  # repeats what the socket last said
        if isinstance(update.get("websocket_url"), str) and update["websocket_url"]:
            self.websocket_url = update["websocket_url"]
        previous = self.state
        status = update.get("status") or previous.get("status")
        if status not in STATUSES:
            return
        if status == "queued" and previous.get("status") not in (None, "queued"):
            # Queued again is a retry after a failed attempt, which carries its number; an
            # answer without a newer one is stale, from before the job started.
            attempts = int(update.get("attempts") or 0)
            if attempts <= self.queued_attempts:
                return
            self.queued_attempts = attempts
            state = {**update, "progress": update.get("progress") or 0}
        else:
            # A progress event carries only the numbers; every other message is a whole status.
            state = {**previous, **update} if kind == "progress" else dict(update)
            for key in _KEPT_FIELDS:
                if key not in state and key in previous:
                    state[key] = previous[key]
            if status == previous.get("status") == "processing":
                state["progress"] = max(int(previous.get("progress") or 0), int(update.get("progress") or 0))
                if isinstance(previous.get("bytes_done"), int) and isinstance(update.get("bytes_done"), int):
                    state["bytes_done"] = max(previous["bytes_done"], update["bytes_done"])
                if state.get("bytes_total") is None and previous.get("bytes_total") is not None:
                    state["bytes_total"] = previous["bytes_total"]
            if status == "completed":
                state["progress"] = 100
            if status == "queued" and update.get("attempts"):
                self.queued_attempts = max(self.queued_attempts, int(update["attempts"]))
        for key in ("type", "timestamp", "websocket_url"):
            state.pop(key, None)
        state["job_id"] = self.job_id
        state["status"] = status
        self.state = state
        self._notify()

    def _set_transport(self, transport: Transport) -> None:
        if transport != self.transport:
            self.transport = transport
            if self.state.get("status"):
                self._notify()

    def _notify(self) -> None:
        if self.on_update is not None:
            self.on_update(JobStatus.from_api(self.state), self.transport)


def _json_object(raw: str | bytes) -> dict[str, Any] | None:
    with contextlib.suppress(ValueError):
        message = json.loads(raw)
        if isinstance(message, dict):
            return message
    return None
