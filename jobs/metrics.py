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

from jobs.errors import FAULT_CLIENT, FAULT_NONE, FAULT_SERVICE, error_fault

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

# Once per job at its terminal write (an operator's retry starts a new run, which ends once
# more): the objective's numerator and denominator. fault: jobs/errors.py `error_fault`.
jobs_terminal = Counter(
    "download_jobs_terminal",
    "Jobs that reached an end (completed, reused, failed, cancelled), and whose fault a failure was.",
    ["outcome", "fault"],
)
jobs_created = Counter("download_jobs_created", "Jobs created, reused ones included.", ["priority"])
first_progress = Histogram(
    "download_job_first_progress_seconds",
    "Time from a job's creation to the first bytes it reported, once per job.",
    buckets=(0.5, 1, 2.5, 5, 10, 20, 30, 60, 90, 120, 180, 300, 600),
)
TERMINAL_SERIES = (
    ("completed", FAULT_NONE),
    ("reused", FAULT_NONE),
    ("cancelled", FAULT_NONE),
    ("failed", FAULT_SERVICE),
    ("failed", FAULT_CLIENT),
)
# Made at 0 in every process, so that a rate over them exists before the first job ends.
for _outcome, _fault in TERMINAL_SERIES:
    jobs_terminal.labels(outcome=_outcome, fault=_fault)
for _priority in ("high", "normal", "low"):
    jobs_created.labels(priority=_priority)

# HTTP requests of the web processes (jobs/ops/http_metrics.py); view is the resolved URL
# name (a bounded set), "unmatched" for a path no route takes.
http_requests = Counter(
    "download_http_requests",
    "HTTP requests answered, by view, method and status code.",
    ["view", "method", "code"],
)
http_request_duration = Histogram(
    "download_http_request_duration_seconds",
    "Time to answer an HTTP request, by view.",
    ["view"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

# Each process's psycopg connection pool (jobs/ops/db_pool.py), summed over the live
# processes of a PROMETHEUS_MULTIPROC_DIR; role is web or worker. None on SQLite.
db_pool_connections = Gauge(
    "download_db_pool_connections", "Connections the pool holds open.", ["role"], multiprocess_mode="livesum"
)
db_pool_available = Gauge(
    "download_db_pool_available", "Open connections idle in the pool.", ["role"], multiprocess_mode="livesum"
)
db_pool_requests_waiting = Gauge(
    "download_db_pool_requests_waiting",
    "Requests waiting for a connection of the pool.",
    ["role"],
    multiprocess_mode="livesum",
)
db_pool_timeouts = Counter(
    "download_db_pool_timeouts", "Requests for a connection that failed (timed out) in the pool.", ["role"]
)
db_pool_requests = Counter("download_db_pool_requests", "Requests for a connection of the pool.", ["role"])


def job_created(priority: str) -> None:
    jobs_created.labels(priority=priority).inc()


def job_terminal(outcome: str, code: str = "") -> None:
    jobs_terminal.labels(outcome=outcome, fault=error_fault(code)).inc()


def job_first_progress(waited_s: float) -> None:
    first_progress.observe(max(0.0, waited_s))


def job_completed(job: "DownloadJob", *, size: int) -> None:
    job_outcomes.labels(outcome="completed", code="").inc()
    job_terminal("completed")
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
    job_terminal("reused")


def job_ended(outcome: str, code: str = "") -> None:
    """A failed, retried, held or cancelled attempt (code: the error code, if any). Failed
    and cancelled are the job's end."""
    job_outcomes.labels(outcome=outcome, code=code).inc()
    if outcome in ("failed", "cancelled"):
        job_terminal(outcome, code if outcome == "failed" else "")


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
