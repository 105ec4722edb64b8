"""Prometheus metrics of the service.

Events are counted where they happen (the services, the WebSocket consumer), in whatever
process that is: a Celery pool child, an ASGI process. With `PROMETHEUS_MULTIPROC_DIR`
set (as `manage.py runstack` and the test stacks do), prometheus-client keeps each
process's values in a file of that directory and `/metrics` adds them all up, so a
scrape of any web process sees the counts of every worker. The directory must be empty
when the processes start (the launcher clears it); without it each process counts alone.

Levels that have a source of truth are read from it at scrape time instead of being
tracked (jobs/ops/scrape.py).
"""

import logging
import os
import shutil
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery.signals import worker_process_shutdown, worker_ready, worker_shutdown
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)

if TYPE_CHECKING:
    from jobs.models import DownloadJob

logger = logging.getLogger(__name__)

if _dir := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Each process opens its files in it as the metrics below are made.
    os.makedirs(_dir, exist_ok=True)

job_outcomes = Counter(
    "download_job_outcomes",
    "Ends of job attempts: completed, failed, retried or cancelled; code is the error code.",
    ["outcome", "code"],
)
job_duration = Histogram(
    "download_job_duration_seconds",
    "Time from the start of the completing attempt to completion.",
    buckets=(0.5, 1, 2.5, 5, 10, 20, 30, 60, 90, 120, 180, 300, 600),
)
bytes_staged = Counter("download_job_staged_bytes", "Bytes of completed files written to storage.")
bytes_resumed = Counter(
    "download_bytes_resumed",
    "Bytes of completed files that an attempt took from parts stored by an earlier attempt.",
)
queue_wait = Histogram(
    "download_job_queue_wait_seconds",
    "Time from when a job's attempt was due (the job created, or its retry's next_retry_at) "
    "to when a worker started it.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800),
)
# Per process, summed over the live processes of PROMETHEUS_MULTIPROC_DIR: a worker with the
# thread pool is one process running many attempts, a prefork worker a child per attempt,
# so the scrape of a worker (WORKER_METRICS_PORT, a directory of its own) is that worker's
# count, and the sum over the workers' scrapes the total.
jobs_in_flight = Gauge(
    "download_jobs_in_flight",
    "Job attempts running now in this worker (its stage tasks).",
    multiprocess_mode="livesum",
)
websocket_connections = Gauge(
    "download_websocket_connections",
    "Open job WebSocket connections.",
    multiprocess_mode="livesum",
)
origin_circuit_opens = Counter(
    "download_origin_circuit_opened",
    "Times the circuit breaker of an origin opened (again, after a failed probe).",
    ["origin"],
)
origin_limit_refusals = Counter(
    "download_origin_limit_refused",
    "Starts an origin's limit held back (the job waits queued): limit is in_flight or start_rate.",
    ["origin", "limit"],
)


def job_completed(job: "DownloadJob", *, size: int) -> None:
    job_outcomes.labels(outcome="completed", code="").inc()
    if job.duration_seconds is not None:
        job_duration.observe(job.duration_seconds)
    bytes_staged.inc(size)
    bytes_resumed.inc(job.resumed_bytes)


def attempt_started(*, due_since: datetime | None, started_at: datetime) -> None:
    """A worker started an attempt that had been due since `due_since` (None: a restart of
    an attempt whose worker died, which waited in no queue)."""
    if due_since is not None:
        queue_wait.observe(max(0.0, (started_at - due_since).total_seconds()))


def job_in_flight() -> AbstractContextManager[None]:
    """Counts a stage task in `download_jobs_in_flight` while the block runs, and no longer
    once it has left it, whether it returned or raised."""
    return jobs_in_flight.track_inprogress()


def job_reused() -> None:
    """A job completed at once from a file another job staged."""
    job_outcomes.labels(outcome="reused", code="").inc()


def job_ended(outcome: str, code: str = "") -> None:
    """A failed, retried or cancelled attempt (code: the error code, if any)."""
    job_outcomes.labels(outcome=outcome, code=code).inc()


def origin_circuit_opened(origin: str) -> None:
    origin_circuit_opens.labels(origin=origin).inc()


def origin_limit_refused(origin: str, limit: str) -> None:
    origin_limit_refusals.labels(origin=origin, limit=limit).inc()


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


@worker_process_shutdown.connect
def _pool_child_exited(pid: int | None = None, **kwargs: Any) -> None:
    """A Celery pool child that exits takes its live gauges with it; its counts stay."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid or os.getpid())


@worker_shutdown.connect
def _worker_exited(**kwargs: Any) -> None:
    """A worker that stopped (its running attempts finished or handed back) takes its live
    gauges with it: with the thread pool they are its main process's own."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(os.getpid())


@worker_ready.connect
def _worker_metrics_serve(**kwargs: Any) -> None:
    """With WORKER_METRICS_PORT, the worker's main process serves the counters of its host's
    processes (its pool children, through PROMETHEUS_MULTIPROC_DIR) on that port: a worker
    host has no web process whose /metrics would add them up. Only counters: the levels
    read from their source at scrape time (queue depth, active jobs) stay on /metrics."""
    from django.conf import settings

    port = settings.WORKER_METRICS_PORT
    if not port:
        return
    registry = REGISTRY
    if directory := multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
    else:
        logger.warning(
            "WORKER_METRICS_PORT without PROMETHEUS_MULTIPROC_DIR: the pool children's counts are not seen"
        )
    start_http_server(port, addr=settings.WORKER_METRICS_ADDR, registry=registry)
    logger.info("Worker metrics on %s:%s/metrics", settings.WORKER_METRICS_ADDR, port)


def multiprocess_dir_reset(path: str | Path) -> None:
    """Empties (or makes) the directory for a fresh start of all the processes."""
    directory = Path(path)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)


def dead_processes_forget(path: str | Path) -> list[int]:
    """Drops the live gauges of processes that died without saying so (a worker killed by
    SIGKILL, and its pool children), as their supervisor must: a `livesum` gauge otherwise
    keeps counting their last value. Returns their pids."""
    dead = []
    for gauge in Path(path).glob("gauge_live*_*.db"):
        pid = int(gauge.stem.rsplit("_", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, str(path))
            dead.append(pid)
        except PermissionError:
            pass  # alive, another user's
    return sorted(set(dead))
