"""`manage.py runstack` (what `make run` runs) as a real process on the embedded default:
a worker that dies is started again, and jobs complete on the new one; SIGTERM still
stops every child."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped]
import pytest

from conftest import ARTIFACTS, ROOT, _LogTail
from devtools.servers import free_port, wait_for_port
from jobs.management.commands.runstack import (
    WORKER_HEALTHY_S,
    WORKER_RESTART_FIRST_S,
    WORKER_RESTART_MAX_S,
    worker_restart_delay_s,
)
from tests.support.flows import eventually, initiate, wait_until_finished

pytestmark = pytest.mark.e2e


def test_the_restart_backoff_grows_while_the_worker_dies_young_and_starts_over_after_a_long_run() -> None:
    delays = []
    previous = None
    for _ in range(7):
        previous = worker_restart_delay_s(previous_s=previous, uptime_s=2)
        delays.append(previous)

    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert WORKER_RESTART_MAX_S == 30
    assert worker_restart_delay_s(previous_s=30, uptime_s=WORKER_HEALTHY_S) == WORKER_RESTART_FIRST_S


def _runstack_env(tmp_path: Path) -> dict[str, str]:
    """The embedded default as `make run` has it, on a scratch SQLite database and VAR_DIR:
    no REDIS_URL (runstack starts its own Redis), local storage, the synthetic origin with
    a small file served at once."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "PYTEST", "DATABASE_", "REDIS_", "AWS_", "CELERY_", "PROMETHEUS_"))
        and key not in ("ORIGIN", "ORIGIN_URL_TEMPLATE", "CHANNEL_LAYER_URL")
    }
    return env | {
        "VAR_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "SYNTHETIC_FILE_BYTES": str(256 * 1024),
        "SYNTHETIC_RATE_BPS": "0",
    }


def _workers(runstack: psutil.Process) -> list[psutil.Process]:
    return [
        child
        for child in runstack.children()
        if "celery" in child.cmdline()
        and "worker" in child.cmdline()
        and child.status() != psutil.STATUS_ZOMBIE
    ]


def test_runstack_starts_a_killed_worker_again_and_its_jobs_complete(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "runstack", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=_runstack_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log = _LogTail(process, ARTIFACTS / "logs" / "runstack.log")
    runstack = psutil.Process(process.pid)
    try:
        log.wait_for("API token:", timeout_s=30)
        (token,) = {m.group(1) for line in log.lines if (m := re.search(r"API token: (\w+)", line))}
        wait_for_port(port, process=process)
        log.wait_for(" ready.")
        (worker,) = _workers(runstack)

        worker.send_signal(signal.SIGKILL)

        log.wait_for("worker stopped (killed by SIGKILL); starting it again in 1 s", timeout_s=10)
        log.wait_for("worker started again", timeout_s=10)
        eventually(
            lambda: {each.pid for each in _workers(runstack)} - {worker.pid} != set(),
            timeout_s=10,
            what="a new worker process among runstack's children",
        )
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Token {token}"}
        ) as api:
            job_id = initiate(api, 70000)
            assert wait_until_finished(api, job_id, timeout_s=30)["status"] == "completed"

        children = runstack.children(recursive=True)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert not [
            child.pid for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE
        ]
    finally:
        if process.poll() is None:
            for child in runstack.children(recursive=True):
                child.kill()
            process.kill()
            process.wait()
