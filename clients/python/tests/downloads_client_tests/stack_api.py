"""The service under test, read directly through its HTTP API (not through the client
under test): what the tests check the client's work against."""

import os
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.support.stack import Stack

MiB = 1024 * 1024
TERMINAL_STATUSES = {"completed", "failed", "cancelled", "expired"}


def api(stack: Stack, token: str) -> httpx.Client:
    return stack.client(token)


def wait_for(check: Callable[[], Any], *, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.05)
    return value


def active_job(stack: Stack, token: str, *, file_id: int | None = None) -> dict[str, Any] | None:
    """The user's one active job (of `file_id`, if given), as the API lists it, once it is
    processing with bytes."""
    with api(stack, token) as client:
        jobs = client.get("/v1/downloads", params={"status": "active"}).json()["data"]["results"]
    for job in jobs:
        if job["status"] == "processing" and job.get("bytes_done") and file_id in (None, job["file_id"]):
            return dict(job)
    return None


def job_status(stack: Stack, token: str, job_id: str) -> dict[str, Any]:
    with api(stack, token) as client:
        response = client.get(f"/v1/download/status/{job_id}")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def wait_until_finished(stack: Stack, token: str, job_id: str, *, timeout_s: float = 15) -> dict[str, Any]:
    found: dict[str, Any] = wait_for(
        lambda: (data := job_status(stack, token, job_id))["status"] in TERMINAL_STATUSES and data,
        timeout_s=timeout_s,
        what=f"{job_id} finished",
    )
    return found


def cli_env(stack: Stack | None, token: str | None, **extra: str) -> dict[str, str]:
    """This environment without any proxy or DOWNLOADS_* variable, with the stack's URL and
    the token, and `extra`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("DOWNLOADS_") and "proxy" not in key.lower()
    }
    if stack is not None:
        env["DOWNLOADS_URL"] = stack.base_url
    if token is not None:
        env["DOWNLOADS_TOKEN"] = token
    return env | extra
