"""Jobs through a fault: several jobs streaming and several queued when a dependency fails,
then the count every fault test reports: started, completed, duplicated, lost.

`jobs_through_a_fault` initiates the jobs on a real stack, waits until `streaming` of them
send progress, runs the fault (`inject`, which returns once the dependency is back), and
waits until every job has ended. It then checks each job end to end:

- completed once: its row's completion does not move afterwards (a late attempt or a
  duplicate message would write it again), and the stack's completed counter rose by
  exactly the number of jobs;
- with the origin's bytes: the row's sha256, and the bytes downloaded through the API;
- nothing left behind: one stored object per job (the completing attempt's), no
  unfinished upload.

The outcome is also appended to `test-artifacts/faults.jsonl`, one line per fault.
"""

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from django.conf import settings

from jobs.models import DownloadJob, Status
from tests.support.flows import assert_downloads_exactly, eventually, initiate, stored_files
from tests.support.origin_server import FileScript, OriginServer
from tests.support.scrapes import samples
from tests.support.stack import ARTIFACTS, Stack

MiB = 1024 * 1024

# The fault tests start stacks of their own and take minutes: they run on the PostgreSQL
# profile (the production one; CI's first), and are skipped on the embedded default.
COMPLETED = ("download_job_outcomes_total", (("code", ""), ("outcome", "completed")))

# A fault stack's reaper: every second, with short thresholds, so that what a fault loses
# comes back within a test (> 2 x (ORIGIN_READ_TIMEOUT_S + JOB_HEARTBEAT_INTERVAL_S 0.5),
# as settings require).
FAST_REAPER = {
    "ORIGIN_READ_TIMEOUT_S": "1.0",
    "JOB_HEARTBEAT_STALE_S": "4",
    "JOB_QUEUED_STALE_S": "3",
    "JOB_REAP_EVERY_S": "1",
    "REDIS_SOCKET_TIMEOUT_S": "2",
}


@contextmanager
def running_stack(
    name: str, env: dict[str, str], *, beat_dir: Path | None = None, concurrency: int = 2
) -> Iterator[Stack]:
    """A stack of its own (web, worker, and beat with `beat_dir`), its metrics in a
    directory of its own, stopped whatever happens."""
    env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(settings.VAR_DIR / "prometheus" / f"stack-{name}")}
    stack = Stack(name, env).start(worker=False)
    try:
        stack.start_worker(concurrency=concurrency)
        if beat_dir is not None:
            stack.start_beat(beat_dir)
        yield stack
    finally:
        stack.stop_beat()
        stack.stop()


@dataclass
class FaultOutcome:
    fault: str
    started: int
    completed: int
    duplicated: int
    lost: int
    seconds: float


def completed_count(stack: Stack) -> float:
    response = httpx.get(f"{stack.base_url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return samples(response.text).get(COMPLETED, 0)


def hot_streaming(api: httpx.Client, job_ids: list[str]) -> int:
    """How many of the jobs are processing with bytes flowing, as their status says."""
    flowing = 0
    for job_id in job_ids:
        response = api.get(f"/v1/download/status/{job_id}")
        if response.status_code == 200:
            data = response.json()["data"]
            flowing += data["status"] == Status.PROCESSING and data["bytes_done"] > 0
    return flowing


def jobs_through_a_fault(
    fault: str,
    *,
    stack: Stack,
    api: httpx.Client,
    origin: OriginServer,
    file_ids: list[int],
    inject: Callable[[], None],
    streaming: int = 2,
    file_bytes: int = 2 * MiB,
    rate_bps: int = MiB,
    timeout_s: float = 90,
) -> FaultOutcome:
    scripts = {
        file_id: origin.add(file_id, FileScript(size=file_bytes, rate_bps=rate_bps)) for file_id in file_ids
    }
    completed_before = completed_count(stack)
    started = time.monotonic()
    job_ids = {initiate(api, file_id): file_id for file_id in file_ids}
    rows = DownloadJob.objects.filter(job_id__in=job_ids)
    eventually(
        lambda: hot_streaming(api, list(job_ids)) >= streaming,
        timeout_s=20,
        what=f"{streaming} jobs streaming",
    )
    assert rows.filter(status=Status.QUEUED).exists(), "some jobs must still be queued when the fault starts"

    inject()

    eventually(
        lambda: not rows.filter(status__in=(Status.QUEUED, Status.PROCESSING)).exists(),
        timeout_s=timeout_s,
        what="every job ended",
    )
    seconds = time.monotonic() - started
    snapshot = {row.job_id: (row.status, row.completed_at, row.updated_at) for row in rows}
    time.sleep(3)  # the reaper (every second) and any late duplicate message get a few runs
    assert {row.job_id: (row.status, row.completed_at, row.updated_at) for row in rows} == snapshot
    eventually(lambda: completed_count(stack) >= completed_before, timeout_s=5, what="the counter read")
    completions = completed_count(stack) - completed_before

    completed = 0
    for row in rows:
        file_id = job_ids[row.job_id]
        if row.status != Status.COMPLETED:
            continue
        completed += 1
        assert row.sha256 == scripts[file_id].sha256(file_id), row.job_id
        assert row.file_size_bytes == file_bytes
        assert_downloads_exactly(api, row.job_id, scripts[file_id], file_id)
        # One object (S3 key, or a file under the storage's downloads/), no unfinished upload.
        stored = stored_files(stack, row.job_id)
        assert stored in ([row.storage_key], [row.storage_key.removeprefix("downloads/")]), (
            row.job_id,
            stored,
        )
    outcome = FaultOutcome(
        fault=fault,
        started=len(job_ids),
        completed=completed,
        duplicated=max(0, int(completions) - completed),
        lost=len(job_ids) - completed,
        seconds=round(seconds, 1),
    )
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / "faults.jsonl").open("a") as log:
        log.write(json.dumps(asdict(outcome)) + "\n")
    return outcome
