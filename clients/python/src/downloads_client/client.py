"""The download service's API as a Python client: start a job, follow it, collect its file."""

import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx

from . import errors
from .follow import JobFollower
from .models import DownloadResult, Job, JobStatus, Link, Phase, Priority, Progress, Transport
from .transfer import fetch_file
from .webhooks import Webhook, WebhookDelivery

__all__ = ["Client", "ProgressCallback"]

logger = logging.getLogger("downloads_client")

ProgressCallback = Callable[[Progress], None]
T = TypeVar("T")

VERSION = "0.1.0"
USER_AGENT = f"downloads-client/{VERSION} (python-httpx)"
# Tries of a request that is safe to repeat, when the server could not be reached or was
# briefly unavailable.
TRANSIENT_TRIES = 4
TRANSIENT_WAIT_MAX_S = 30.0
DEFAULT_POLLING_INTERVAL_S = 2.0


class Client:
    """A client of one server, as one user (`Authorization: Bearer <token>`).

    >>> with Client("http://127.0.0.1:8000", token) as client:
    ...     result = client.download(70000, "downloads/")
    >>> result.path, result.size, result.sha256

    `retry_rate_limited`: a 429 on initiate (too many active jobs, or too many requests)
    is waited out (its `Retry-After`) and tried again, up to `max_rate_limit_wait_s` in all,
    instead of raising RateLimited. `use_websocket=False` follows jobs by polling only.
    Proxies are taken from the environment (`HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY`).
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout_s: float = 30.0,
        retry_rate_limited: bool = False,
        max_rate_limit_wait_s: float = 600.0,
        use_websocket: bool = True,
        heartbeat_window_s: float = 20.0,
        socket_open_timeout_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not re.match(r"^https?://[^/]", base_url):
            raise ValueError(f"base_url must be an http(s) URL, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.retry_rate_limited = retry_rate_limited
        self.max_rate_limit_wait_s = max_rate_limit_wait_s
        self.use_websocket = use_websocket
        self.heartbeat_window_s = heartbeat_window_s
        self.socket_open_timeout_s = socket_open_timeout_s
        self._sleep = sleep
        self._api = httpx.Client(
            base_url=self.base_url,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            },
            timeout=timeout_s,
        )
        # The file's bytes come from a signed link (maybe on S3): no credential goes there,
        # and no encoding, so that a resumed range counts the bytes as stored.
        self._files = httpx.Client(
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            timeout=timeout_s,
            follow_redirects=True,
        )

    def close(self) -> None:
        self._api.close()
        self._files.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- the API, one call each ----------------------------------------------------------------

    def initiate(
        self,
        file_id: int,
        *,
        priority: Priority = "normal",
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        retry_rate_limited: bool | None = None,
        notify: Sequence[str] | None = None,
        webhook_id: str | None = None,
    ) -> Job:
        """Starts a job (POST /v1/download/initiate). Every call carries an Idempotency-Key
        (a new one unless given), so that a retry after a lost answer gets the same job.
        `notify=["email"]` e-mails you when it ends (`[]`: not; None: your default);
        `webhook_id` sends its end to that one of your webhook endpoints only."""
        body: dict[str, Any] = {"file_id": file_id, "priority": priority}
        if metadata is not None:
            body["metadata"] = metadata
        if notify is not None:
            body["notify"] = list(notify)
        if webhook_id is not None:
            body["webhook_id"] = webhook_id
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        retry = self.retry_rate_limited if retry_rate_limited is None else retry_rate_limited
        waited_s = 0.0
        while True:
            try:
                answer = self._transient_retried(
                    lambda: self._request("POST", "/v1/download/initiate", json=body, headers=headers)
                )
                return Job.from_api(answer["data"])
            except errors.RateLimited as exc:
                wait_s = exc.retry_after if exc.retry_after is not None else 1.0
                if not retry or waited_s + wait_s > self.max_rate_limit_wait_s:
                    raise
                logger.warning("Rate limited (%s); trying again in %g s", exc.message, wait_s)
                self._sleep(wait_s)
                waited_s += wait_s

    def status(self, job_id: str) -> JobStatus:
        """The job's status (GET /v1/download/status/<id>)."""
        return JobStatus.from_api(self._status_data(job_id))

    def cancel(self, job_id: str) -> None:
        """Cancels a queued or processing job (DELETE /v1/download/<id>). A finished one
        raises JobAlreadyFinished."""
        self._request("DELETE", f"/v1/download/{_path_id(job_id)}", job_id=job_id)

    def jobs(self, *, active: bool = False, page_size: int = 50) -> Iterator[JobStatus]:
        """The caller's jobs, newest first (GET /v1/downloads), page after page; only the
        queued and processing ones with `active=True`."""
        params: dict[str, str | int] = {"page_size": page_size}
        if active:
            params["status"] = "active"
        while True:
            answer = self._transient_retried(partial(self._request, "GET", "/v1/downloads", params=params))
            data = answer["data"]
            for item in data.get("results", []):
                yield JobStatus.from_api(item)
            cursor = _cursor(data.get("next"))
            if cursor is None:
                return
            # The cursor, not the link: the link is built from the Host the server saw.
            params = {**params, "cursor": cursor}

    def link(self, job_id: str) -> Link:
        """A fresh download link of a completed job's file (GET /v1/download/<id>)."""
        answer = self._transient_retried(
            lambda: self._request("GET", f"/v1/download/{_path_id(job_id)}", job_id=job_id)
        )
        return Link.from_api(answer["data"])

    # --- webhooks (docs/api.md of the service) -------------------------------------------------

    def webhook_create(
        self, url: str, *, events: Sequence[str] | None = None, description: str = ""
    ) -> Webhook:
        """A new endpoint (POST /v1/webhooks), with its `secret`: shown only now, keep it
        for `verify_webhook`. Without `events`, all of them."""
        body: dict[str, Any] = {"url": url, "description": description}
        if events:
            body["events"] = list(events)
        answer = self._request("POST", "/v1/webhooks", json=body)
        return Webhook.from_api(answer["data"])

    def webhooks(self) -> list[Webhook]:
        """Your endpoints (GET /v1/webhooks), without their secrets."""
        answer = self._transient_retried(lambda: self._request("GET", "/v1/webhooks"))
        return [Webhook.from_api(item) for item in answer["data"]]

    def webhook_delete(self, webhook_id: str) -> None:
        """Deletes an endpoint (DELETE /v1/webhooks/<id>)."""
        self._request("DELETE", f"/v1/webhooks/{_path_id(webhook_id, what='webhook')}")

    def webhook_deliveries(self, webhook_id: str) -> list[WebhookDelivery]:
        """An endpoint's recent deliveries (GET /v1/webhooks/<id>/deliveries)."""
        path = f"/v1/webhooks/{_path_id(webhook_id, what='webhook')}/deliveries"
        answer = self._transient_retried(lambda: self._request("GET", path))
        return [WebhookDelivery.from_api(item) for item in answer["data"]]

    # --- following and collecting ----------------------------------------------------------------

    def wait(
        self,
        job_id: str,
        *,
        on_progress: ProgressCallback | None = None,
        timeout_s: float | None = None,
        websocket_url: str | None = None,
        polling_interval_s: float | None = None,
    ) -> JobStatus:
        """Follows the job until it ends, over its WebSocket with polling as the fallback.
        Returns its completed status; raises JobFailed (with the job's error code),
        JobCancelled, DownloadExpired, or WaitTimeout after `timeout_s`."""
        initial: dict[str, Any] = {"job_id": job_id}
        if websocket_url is None:
            initial = self._status_data(job_id)
            websocket_url = initial.get("websocket_url")
        return self._follow(
            job_id,
            initial=initial,
            websocket_url=websocket_url,
            polling_interval_s=polling_interval_s,
            on_progress=on_progress,
            timeout_s=timeout_s,
        )

    def _follow(
        self,
        job_id: str,
        *,
        initial: dict[str, Any],
        websocket_url: str | None,
        polling_interval_s: float | None,
        on_progress: ProgressCallback | None,
        timeout_s: float | None,
    ) -> JobStatus:
        follower = JobFollower(
            job_id,
            poll=lambda: self._status_data(job_id),
            websocket_url=websocket_url,
            polling_interval_s=polling_interval_s or DEFAULT_POLLING_INTERVAL_S,
            use_websocket=self.use_websocket,
            open_timeout_s=self.socket_open_timeout_s,
            heartbeat_window_s=self.heartbeat_window_s,
            on_update=_job_progress(job_id, on_progress),
            user_agent=USER_AGENT,
        )
        if initial.get("status"):
            follower.apply({**initial, "type": "poll"})
        return _outcome(follower.run(timeout_s=timeout_s))

    def fetch(
        self,
        job_id: str,
        path: str | os.PathLike[str] | None = None,
        *,
        on_progress: ProgressCallback | None = None,
    ) -> DownloadResult:
        """Saves a completed job's file and verifies its size and sha256. `path` is the
        file, or a directory to save it in under its own name (default: the current one).
        A dropped connection is resumed; an expired link is replaced."""
        link = self.link(job_id)
        target = _target(path, link.file_name, job_id)

        def on_bytes(done: int, total: int | None) -> None:
            if on_progress is not None:
                percent = 100 * done // total if total else 0
                on_progress(Progress(job_id, "downloading", percent, done, total, None, None))

        size, sha256 = fetch_file(
            self._files,
            job_id=job_id,
            link=link,
            fresh_link=lambda: self.link(job_id),
            path=target,
            on_bytes=on_bytes,
            sleep=self._sleep,
        )
        return DownloadResult(path=target, size=size, sha256=sha256, job_id=job_id, file_name=link.file_name)

    def download(
        self,
        file_id: int,
        path: str | os.PathLike[str] | None = None,
        priority: Priority = "normal",
        *,
        metadata: dict[str, Any] | None = None,
        on_progress: ProgressCallback | None = None,
        retry_rate_limited: bool | None = None,
        timeout_s: float | None = None,
    ) -> DownloadResult:
        """Starts a job for the file, follows it, and saves and verifies its file: the whole
        flow. Interrupted (Ctrl-C) before the job ends, it cancels the job, whose id nobody
        else holds."""
        job = self.initiate(
            file_id, priority=priority, metadata=metadata, retry_rate_limited=retry_rate_limited
        )
        try:
            self._follow(
                job.job_id,
                initial={"job_id": job.job_id, "status": job.status, "progress": 0},
                websocket_url=job.websocket_url,
                polling_interval_s=job.polling_interval_s,
                on_progress=on_progress,
                timeout_s=timeout_s,
            )
        except (KeyboardInterrupt, errors.WaitTimeout):
            self.cancel_quietly(job.job_id)
            raise
        return self.fetch(job.job_id, path, on_progress=on_progress)

    def cancel_quietly(self, job_id: str) -> bool:
        """Cancels the job if it is still active; True if it was cancelled. Never raises
        for a job already finished, gone, or a server out of reach."""
        try:
            self.cancel(job_id)
        except errors.ApiError as exc:
            logger.info("Could not cancel %s: %s", job_id, exc)
            return False
        return True

    # --- HTTP ----------------------------------------------------------------------------------

    def _status_data(self, job_id: str) -> dict[str, Any]:
        answer = self._request("GET", f"/v1/download/status/{_path_id(job_id)}", job_id=job_id)
        data: dict[str, Any] = answer["data"]
        return data

    def _request(self, method: str, path: str, *, job_id: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """One call of the API: the envelope of a success, or the error it stands for
        (about `job_id`, for a call about one job)."""
        try:
            response = self._api.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise errors.ConnectionFailed(
                "NETWORK_ERROR", f"Could not reach {self.base_url}: {exc}", job_id=job_id
            ) from exc
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.is_success and isinstance(payload, dict) and payload.get("success") is not False:
            return payload
        raise errors.error_from_answer(response.status_code, payload, response.headers, job_id=job_id)

    def _transient_retried(self, call: Callable[[], T]) -> T:
        """`call` again when the server could not be reached, or answered 503 / 5xx, a few
        times; for requests that are safe to repeat. Each retry is announced as it starts
        (a warning), and the error of the last try says how long it kept trying."""
        retries = TRANSIENT_TRIES - 1
        waited_s = 0.0
        for attempt in range(1, TRANSIENT_TRIES + 1):
            try:
                return call()
            except (errors.ConnectionFailed, errors.ServiceUnavailable, errors.ServerError) as exc:
                if attempt == TRANSIENT_TRIES:
                    raise _after_retries(exc, tries=TRANSIENT_TRIES, waited_s=waited_s) from exc
                wait_s = min(TRANSIENT_WAIT_MAX_S, exc.retry_after or 0.5 * 2**attempt)
                logger.warning(
                    "%s, retrying (%d/%d) in %g s: %s",
                    _unreachable(exc),
                    attempt,
                    retries,
                    wait_s,
                    exc.message,
                )
                self._sleep(wait_s)
                waited_s += wait_s
        raise AssertionError("unreachable")


def _unreachable(exc: errors.ApiError) -> str:
    if isinstance(exc, errors.ConnectionFailed):
        return "server unreachable"
    if isinstance(exc, errors.ServiceUnavailable):
        return "server unavailable (503)"
    return f"server error ({exc.status})"


def _after_retries(exc: errors.ApiError, *, tries: int, waited_s: float) -> errors.ApiError:
    """The last try's error, saying that it was the last of several."""
    message = f"{exc.message} (gave up after {tries} tries over {waited_s:g} s)"
    return type(exc)(
        exc.code,
        message,
        status=exc.status,
        details=exc.details,
        retry_after=exc.retry_after,
        job_id=exc.job_id,
    )


def _path_id(job_id: str, *, what: str = "job") -> str:
    """An id as a path segment; an id that is not one cannot name a job (or webhook)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", job_id):
        if what == "job":
            raise errors.JobNotFound("JOB_NOT_FOUND", f"Not a job id: {job_id!r}", status=None, job_id=job_id)
        raise errors.NotFound(f"{what.upper()}_NOT_FOUND", f"Not a {what} id: {job_id!r}", status=None)
    return job_id


def _cursor(next_link: Any) -> str | None:
    if not isinstance(next_link, str) or not next_link:
        return None
    values = parse_qs(urlsplit(next_link).query).get("cursor")
    return values[0] if values else None


def _job_progress(
    job_id: str, on_progress: ProgressCallback | None
) -> Callable[[JobStatus, Transport | None], None] | None:
    if on_progress is None:
        return None
    callback = on_progress

    def on_update(job: JobStatus, transport: Transport | None) -> None:
        if not job.is_active:
            return
        phase: Phase = "processing" if job.status == "processing" else "queued"
        callback(Progress(job_id, phase, job.progress, job.bytes_done, job.bytes_total, transport, job))

    return on_update


def _outcome(job: JobStatus) -> JobStatus:
    if job.status == "completed":
        return job
    if job.status == "failed":
        error = job.error
        raise errors.JobFailed(
            error.code if error else "JOB_FAILED",
            error.message if error else "The job failed",
            details={"retryable": error.retryable if error else False},
            job_id=job.job_id,
        )
    if job.status == "cancelled":
        raise errors.JobCancelled(
            "JOB_CANCELLED", f"{job.job_id} was cancelled at {job.progress} %", job_id=job.job_id
        )
    raise errors.DownloadExpired("DOWNLOAD_EXPIRED", f"{job.job_id} has expired", job_id=job.job_id)


def _safe_name(name: str | None, fallback: str) -> str:
    """A file name from the server, as a plain name in the target folder."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1].strip().lstrip(".")
    name = re.sub(r"[\x00-\x1f\x7f]", "", name)
    return name or fallback


def _target(path: str | os.PathLike[str] | None, file_name: str | None, job_id: str) -> Path:
    target = Path(path) if path is not None else Path.cwd()
    if target.is_dir():
        target = target / _safe_name(file_name, job_id)
    return target
