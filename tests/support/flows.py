"""A job through a real stack, as a client drives it over HTTP, and what it leaves in
storage."""

import hashlib
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import httpx
from django.conf import settings

from devtools.servers import S3Endpoint
from tests.support.origin_server import FileScript
from tests.support.stack import Stack

TERMINAL = {"completed", "failed", "cancelled", "expired"}
POLL_S = 0.03


def initiate(api: httpx.Client, file_id: int, **body: Any) -> str:
    response = api.post("/v1/download/initiate", json={"file_id": file_id, **body})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["status"] == "queued"
    return data["job_id"]


def socket_url(base_url: str, websocket_url: str) -> str:
    """A job's `websocket_url` (path and ticket) on the server at `base_url`: the same socket
    opened on another web process than the one that answered."""
    parts = urlsplit(websocket_url)
    return base_url.replace("http://", "ws://", 1) + f"{parts.path}?{parts.query}"


def eventually(check: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(POLL_S)


def stored_files(stack: Stack, job_id: str) -> list[str]:
    """Everything of the job in the stack's storage: files, objects, unfinished uploads."""
    s3 = stack_s3(stack)
    if s3 is None:
        root = settings.VAR_DIR / "media" / "downloads"
        return sorted(str(path.relative_to(root)) for path in root.glob(f"*/{job_id}*"))
    objects = s3.keys()  # S3Endpoint.keys(): the bucket's object keys
    keys = [key for key in objects if job_id in key]
    uploads = [f"upload:{up['Key']}" for up in s3.open_multipart_uploads() if job_id in up["Key"]]
    return sorted(keys + uploads)


def assert_downloads_exactly(api: httpx.Client, job_id: str, script: FileScript, file_id: int) -> None:
    link, file_response = fetch_download(api, job_id)
    expected = script.sha256(file_id)
    assert link["sha256"] == expected
    assert link["file_size"] == script.size
    assert hashlib.sha256(file_response.content).hexdigest() == expected


def job_status(api: httpx.Client, job_id: str) -> dict[str, Any]:
    response = api.get(f"/v1/download/status/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()["data"]


def wait_for_status(
    api: httpx.Client,
    job_id: str,
    until: Callable[[dict[str, Any]], bool],
    *,
    timeout_s: float = 15,
    seen: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Polls the status endpoint until `until(status)`; every status read goes to `seen`."""
    deadline = time.monotonic() + timeout_s
    while True:
        data = job_status(api, job_id)
        if seen is not None:
            seen.append(data)
        if until(data):
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"{job_id} did not reach the awaited status in {timeout_s} s: {data}")
        time.sleep(POLL_S)


def wait_until_all_finished(
    api: httpx.Client,
    job_ids: Iterable[str],
    *,
    timeout_s: float,
    poll_s: float = 0.2,
    seen: Callable[[str, dict[str, Any]], None] = lambda job_id, status: None,
) -> dict[str, dict[str, Any]]:
    """Polls every job until each is finished; returns their last statuses by job id. Every
    status read of a job not yet finished goes to `seen`."""
    deadline = time.monotonic() + timeout_s
    waiting, finished = set(job_ids), {}
    while waiting:
        assert time.monotonic() < deadline, f"{len(waiting)} jobs not finished in {timeout_s} s"
        for job_id in sorted(waiting):
            status = job_status(api, job_id)
            if status["status"] in TERMINAL:
                finished[job_id] = status
                waiting.discard(job_id)
            else:
                seen(job_id, status)
        time.sleep(poll_s)
    return finished


def wait_until_finished(api: httpx.Client, job_id: str, **kwargs: Any) -> dict[str, Any]:
    return wait_for_status(api, job_id, lambda data: data["status"] in TERMINAL, **kwargs)


def fetch_download(api: httpx.Client, job_id: str) -> tuple[dict[str, Any], httpx.Response]:
    response = api.get(f"/v1/download/{job_id}")
    assert response.status_code == 200, response.text
    link = response.json()["data"]
    file_response = httpx.get(link["download_url"], timeout=30)
    assert file_response.status_code == 200, file_response.text[:500]
    return link, file_response


def stack_s3(stack: Stack) -> S3Endpoint | None:
    if "AWS_STORAGE_BUCKET_NAME" not in stack.env:
        return None
    return S3Endpoint(
        endpoint_url=stack.env["AWS_S3_ENDPOINT_URL"],
        bucket=stack.env["AWS_STORAGE_BUCKET_NAME"],
        env=stack.env,
    )
