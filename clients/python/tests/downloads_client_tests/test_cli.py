"""The `downloads` command as a user runs it: the installed console script in a process of
its own, against a real server and worker, its stderr not a terminal (so no bar: a line
per change), with real proxies in between where the network has to fail."""

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools.servers import free_port
from tests.support.stack import Stack

from .proxies import CuttingProxy, UpgradeRefusingProxy
from .stack_api import MiB, active_job, job_status, wait_for, wait_until_finished

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# Installed with the package (requirements-dev.txt: -e ./clients/python).
DOWNLOADS = Path(sys.executable).with_name("downloads")


def cli_env(url: str | None, token: str | None, **extra: str) -> dict[str, str]:
    """This environment without any proxy or DOWNLOADS_* variable; then the URL, the
    token and `extra`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("DOWNLOADS_") and "proxy" not in key.lower()
    }
    if url is not None:
        env["DOWNLOADS_URL"] = url
    if token is not None:
        env["DOWNLOADS_TOKEN"] = token
    return env | extra


def downloads(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert DOWNLOADS.exists(), "pip install -e ./clients/python (requirements-dev.txt does)"
    return subprocess.run(
        [str(DOWNLOADS), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_get_saves_the_verified_file_and_prints_its_path(
    stack: Stack, add_file: Callable[..., Any], token: str, tmp_path: Path
) -> None:
    file_id = 73001
    script = add_file(file_id, 2 * MiB + 3, rate_bps=2 * MiB, file_name="data.csv")
    done = downloads(
        "get", str(file_id), "--priority", "high", env=cli_env(stack.base_url, token), cwd=tmp_path
    )

    assert done.returncode == 0, done.stderr
    saved = tmp_path / "data.csv"
    assert done.stdout == f"{saved}\n"
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == script.sha256(file_id)
    notes = done.stderr.splitlines()
    assert notes[0].endswith(f"started for file {file_id} (high)"), notes
    assert any(line.endswith("preparing (following by websocket)") for line in notes), notes
    assert not any("polling" in line for line in notes), notes
    assert f"completed; downloading ({script.size} bytes)" in done.stderr
    assert notes[-1] == f"saved {saved} ({script.size} bytes, sha256 {script.sha256(file_id)})"


def test_get_completes_by_polling_when_the_socket_is_refused(
    local_stack: Stack, add_file: Callable[..., Any], token: str, tmp_path: Path
) -> None:
    file_id = 73002
    script = add_file(file_id, 3 * MiB, rate_bps=MiB)
    proxy = UpgradeRefusingProxy(local_stack.port)
    try:
        done = downloads(
            "get", str(file_id), "-o", str(tmp_path / "out.bin"), "--json", env=cli_env(proxy.url, token)
        )
    finally:
        proxy.stop()

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["sha256"] == script.sha256(file_id)
    assert result["size"] == script.size
    assert result["path"] == str(tmp_path / "out.bin")
    assert proxy.refused >= 1
    assert "preparing (following by polling)" in done.stderr
    assert "websocket" not in done.stderr


def test_get_resumes_a_dropped_download(
    s3_stack: Stack, add_file: Callable[..., Any], token: str, tmp_path: Path
) -> None:
    file_id = 73003
    script = add_file(file_id, 3 * MiB)
    proxy = CuttingProxy(cut_after_bytes=2 * MiB, refuse_after_cut=False)
    try:
        done = downloads(
            "get",
            str(file_id),
            "-o",
            str(tmp_path),
            env=cli_env(s3_stack.base_url, token, http_proxy=proxy.url),
        )
    finally:
        proxy.stop()

    assert done.returncode == 0, done.stderr
    assert hashlib.sha256(Path(done.stdout.strip()).read_bytes()).hexdigest() == script.sha256(file_id)
    cut, resumed = proxy.file_requests()
    assert (cut.action, resumed.range, resumed.status) == ("cut", f"bytes={2 * MiB}-", 206)


def test_a_failed_job_exits_1_with_its_code(
    local_stack: Stack, add_file: Callable[..., Any], token: str, tmp_path: Path
) -> None:
    file_id = 73004
    add_file(file_id, MiB, faults=["404"])
    done = downloads("get", str(file_id), env=cli_env(local_stack.base_url, token), cwd=tmp_path)

    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    last = done.stderr.splitlines()[-1]
    assert last.startswith("error: FILE_NOT_FOUND: "), done.stderr
    assert "(job job_" in last
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_cancels_the_job_and_exits_130(
    local_stack: Stack, add_file: Callable[..., Any], token: str, tmp_path: Path
) -> None:
    file_id = 73005
    add_file(file_id, 8 * MiB, rate_bps=MiB)  # 8 s if let run
    process = subprocess.Popen(
        [str(DOWNLOADS), "get", str(file_id), "-o", str(tmp_path)],
        env=cli_env(local_stack.base_url, token),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal: a test run started in the background (`&` without job control)
        # ignores SIGINT, and Python keeps an ignored SIGINT ignored in its children.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        job = wait_for(
            lambda: active_job(local_stack, token, file_id=file_id), timeout_s=10, what="the job processing"
        )
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 130, stderr
    assert stdout == ""
    assert f"interrupted: cancelling {job['job_id']}" in stderr
    assert f"{job['job_id']} cancelled" in stderr
    assert job_status(local_stack, token, job["job_id"])["status"] == "cancelled"
    assert list(tmp_path.iterdir()) == []


def test_detach_then_status_list_fetch_and_cancel(
    local_stack: Stack, add_file: Callable[..., Any], token: str, tmp_path: Path
) -> None:
    file_id = 73006
    script = add_file(file_id, MiB, rate_bps=MiB // 4)  # 4 s: still active when listed, under load too
    env = cli_env(local_stack.base_url, token)

    detached = downloads("get", str(file_id), "--detach", env=env)
    assert detached.returncode == 0, detached.stderr
    job_id = detached.stdout.strip()
    assert job_id.startswith("job_")

    listed = downloads("list", "--active", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [job["job_id"] for job in json.loads(listed.stdout)] == [job_id]

    # fetch waits for the job, then saves its file.
    fetched = downloads("fetch", job_id, "-o", str(tmp_path / "f.bin"), "--json", "--quiet", env=env)
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stderr == ""
    assert json.loads(fetched.stdout)["sha256"] == script.sha256(file_id)
    assert (tmp_path / "f.bin").stat().st_size == script.size

    status = downloads("status", job_id, env=env)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(f"{job_id}  completed  100%  file {file_id}  normal")
    as_json = json.loads(downloads("status", job_id, "--json", env=env).stdout)
    assert (as_json["status"], as_json["file_size"]) == ("completed", script.size)

    refused = downloads("cancel", job_id, env=env)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: JOB_ALREADY_FINISHED: ")

    assert wait_until_finished(local_stack, token, job_id)["status"] == "completed"
    unknown_id = "job_" + "0" * 32
    unknown = downloads("status", unknown_id, "--json", env=env)
    assert unknown.returncode == 1
    # The API's error envelope, about the job asked for.
    assert json.loads(unknown.stdout) == {
        "success": False,
        "error": {
            "code": "JOB_NOT_FOUND",
            "message": "Job not found",
            "job_id": unknown_id,
            "http_status": 404,
        },
    }
    assert unknown.stderr == f"error: JOB_NOT_FOUND: Job not found (job {unknown_id})\n"


def test_list_has_a_header_and_says_when_there_is_nothing(
    local_stack: Stack, add_file: Callable[..., Any], token: str
) -> None:
    env = cli_env(local_stack.base_url, token)
    empty = downloads("list", env=env)
    assert (empty.returncode, empty.stdout, empty.stderr) == (0, "No downloads yet.\n", "")
    no_active = downloads("list", "--active", env=env)
    assert (no_active.returncode, no_active.stdout) == (0, "No active downloads.\n")
    assert json.loads(downloads("list", "--json", env=env).stdout) == []

    file_id = 73007
    add_file(file_id, MiB)
    job_id = downloads("get", str(file_id), "--detach", env=env).stdout.strip()
    listed = downloads("list", env=env)

    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["JOB", "ID", "STATUS", "PROGRESS", "FILE", "PRIORITY", "CREATED"]
    assert row.split()[0] == job_id
    assert row.split()[3:5] == [str(file_id), "normal"]
    assert header.index("STATUS") == row.index(row.split()[1])  # the columns line up


def test_a_job_cancelled_midway_shows_the_progress_it_stopped_at(
    local_stack: Stack, add_file: Callable[..., Any], token: str
) -> None:
    file_id = 73008
    add_file(file_id, 8 * MiB, rate_bps=MiB)  # 8 s if let run
    env = cli_env(local_stack.base_url, token)
    job_id = downloads("get", str(file_id), "--detach", env=env).stdout.strip()
    seen = wait_for(
        lambda: (job := active_job(local_stack, token)) and job["progress"] >= 10 and job,
        timeout_s=15,
        what="the job 10 % done",
    )

    assert downloads("cancel", job_id, env=env).returncode == 0
    stopped_at = wait_until_finished(local_stack, token, job_id)["progress"]
    status = downloads("status", job_id, env=env)

    assert seen["progress"] <= stopped_at < 100
    assert status.stdout.startswith(f"{job_id}  cancelled  {stopped_at}%  file {file_id}"), status.stdout
    listed = downloads("list", env=env).stdout.splitlines()
    assert listed[1].split()[1:3] == ["cancelled", f"{stopped_at}%"]


def test_an_unreachable_server_is_announced_at_once_then_exit_3() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    process = subprocess.Popen(
        [str(DOWNLOADS), "get", "70000"],
        env=cli_env(url, "dlk_unused"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        first = process.stderr.readline()
        # Said while it still tries (the retries take 7 s in all), not when it gives up.
        assert process.poll() is None
        stdout, rest = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert first.startswith("server unreachable, retrying (1/3) in 1 s: Could not reach "), first
    notes = [first.rstrip("\n"), *rest.splitlines()]
    assert [line.split(" in ")[0] for line in notes[:3]] == [
        "server unreachable, retrying (1/3)",
        "server unreachable, retrying (2/3)",
        "server unreachable, retrying (3/3)",
    ]
    assert notes[3].startswith(f"error: NETWORK_ERROR: Could not reach {url}: "), notes
    assert notes[3].endswith("(gave up after 4 tries over 7 s)"), notes
    assert len(notes) == 4
    assert stdout == ""
    assert process.returncode == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["get", "70000"], "no API token", id="no-token"),
        pytest.param(["--token", "t", "get", "seventy"], "not a file id", id="file-id"),
        pytest.param(["--token", "t", "get", "0"], "not a file id", id="zero"),
        pytest.param(["--token", "t", "get", "1", "--priority", "urgent"], "invalid choice", id="priority"),
        pytest.param(
            ["--token", "t", "--url", "ftp://x", "list"], "base_url must be an http(s) URL", id="url"
        ),
        pytest.param(["--token", "t"], "required: COMMAND", id="no-command"),
        pytest.param(["--token", "t", "status"], "JOB_ID", id="no-job-id"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    done = downloads(*args, env=cli_env(None, None))
    assert done.returncode == 2, done
    assert message in done.stderr
    assert done.stdout == ""


def test_a_request_the_server_finds_invalid_exits_2(local_stack: Stack, token: str) -> None:
    done = downloads("get", str(2**63), "--token", token, env=cli_env(local_stack.base_url, None))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: VALIDATION_ERROR: ")
    assert "  file_id: " in done.stderr
