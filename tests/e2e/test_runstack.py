"""`manage.py runstack` (what `make run` runs) as a real process on the embedded default:
a worker that dies is started again, and jobs complete on the new one; SIGTERM still
stops every child."""

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped]
import pytest

from devtools.servers import free_port, wait_for_port
from stack.management.commands.runstack import (
    WORKER_HEALTHY_S,
    WORKER_RESTART_FIRST_S,
    WORKER_RESTART_MAX_S,
    worker_restart_delay_s,
)
from tests.support.flows import eventually, initiate, job_status, wait_until_finished
from tests.support.stack import ARTIFACTS, ROOT, LogTail

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


def _stack_ready(log: "LogTail", *, port: int, process: subprocess.Popen[str], timeout_s: float) -> str:
    """Waits until runstack has printed its demo key, serves on `port` and has a worker
    ready; returns the key."""
    log.wait_for("API token:", timeout_s=timeout_s)
    (token,) = {m.group(1) for line in log.lines if (m := re.search(r"API token: (\w+)", line))}
    wait_for_port(port, process=process)
    log.wait_for(" ready.")
    return token


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
    log = LogTail(process, ARTIFACTS / "logs" / "runstack.log")
    runstack = psutil.Process(process.pid)
    try:
        token = _stack_ready(log, port=port, process=process, timeout_s=30)
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


def _descendants(runstack: psutil.Process) -> list[psutil.Process]:
    return runstack.children(recursive=True)


def _alive(processes: list[psutil.Process]) -> list[str]:
    left = []
    for each in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if each.is_running() and each.status() != psutil.STATUS_ZOMBIE:
                left.append(" ".join(each.cmdline()[:6]))
    return left


def _job_status_in(database: Path, job_id: str) -> str:
    with contextlib.closing(sqlite3.connect(database)) as db:
        (status,) = db.execute("SELECT status FROM jobs_downloadjob WHERE job_id = ?", (job_id,)).fetchone()
    return str(status)


@pytest.mark.parametrize(
    ("to", "sig", "times"),
    [
        ("group", signal.SIGTERM, 1),
        ("group", signal.SIGTERM, 2),
        ("group", signal.SIGINT, 2),
        ("runstack", signal.SIGTERM, 1),
    ],
)
def test_a_stop_signal_stops_every_child_in_order_with_a_job_in_flight(
    tmp_path: Path, to: str, sig: signal.Signals, times: int
) -> None:
    """As a terminal, systemd or a container runtime stops `make run`: the signal to the
    whole process group (or to runstack alone), once or twice. Every child stops, web
    first, then the worker (which finishes its job, or when hurried leaves it to be handed
    back), beat, Redis last; no traceback, no process left."""
    port = free_port()
    # A job of about 8 s, so that it is in flight when the signal comes.
    env = _runstack_env(tmp_path) | {
        "SYNTHETIC_FILE_BYTES": str(4 * 1024 * 1024),
        "SYNTHETIC_RATE_BPS": str(512 * 1024),
    }
    process = subprocess.Popen(
        [sys.executable, "manage.py", "runstack", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own group, as `make run` has in a terminal
    )
    log = LogTail(process, ARTIFACTS / "logs" / f"runstack-stop-{to}-{sig.name}-{times}.log")
    runstack = psutil.Process(process.pid)
    try:
        token = _stack_ready(log, port=port, process=process, timeout_s=60)
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Token {token}"}
        ) as api:
            job_id = initiate(api, 70000)
            eventually(
                lambda: job_status(api, job_id).get("bytes_done", 0) > 0,
                timeout_s=30,
                what="the job in flight",
            )
        children = _descendants(runstack)
        assert len(children) >= 4  # web, worker, beat, redis

        def send() -> None:
            if to == "group":
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)

        send()
        if times == 2:
            log.wait_for("Stopping…", timeout_s=10)
            send()

        assert process.wait(timeout=300) == 0
        assert _alive(children) == []
        output = "".join(log.lines)
        assert "Traceback" not in output
        assert "Cold shutdown" not in output
        stops = [output.index(f"{name} stopped") for name in ("web", "worker", "beat")] + [
            output.index("redis stopping")
        ]
        assert stops == sorted(stops)
        status = _job_status_in(tmp_path / "db.sqlite3", job_id)
        if times == 1:
            # Warm: the worker took no new job after the web stopped and finished its own.
            assert output.index("Warm shutdown") > output.index("web stopped")
            assert status == "completed"
        else:
            # Hurried: the job is left to the reaper of the next start (or finished).
            assert status in ("processing", "completed")
    finally:
        if process.poll() is None:
            for child in runstack.children(recursive=True):
                child.kill()
            process.kill()
            process.wait()
