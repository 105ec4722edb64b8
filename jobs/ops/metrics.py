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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery.signals import worker_process_shutdown, worker_ready
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
websocket_connections = Gauge(
    "download_websocket_connections",
    "Open job WebSocket connections.",
    multiprocess_mode="livesum",
)
legacy_requests = Counter(
    "download_legacy_requests",
    "Answers of the old POST /download/start, by outcome (jobs/legacy.py).",
    ["outcome"],
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


def job_reused() -> None:
    """A job completed at once from a file another job staged."""
    job_outcomes.labels(outcome="reused", code="").inc()


def job_ended(outcome: str, code: str = "") -> None:
    """A failed, retried or cancelled attempt (code: the error code, if any)."""
    job_outcomes.labels(outcome=outcome, code=code).inc()


def legacy_request(outcome: str) -> None:
    legacy_requests.labels(outcome=outcome).inc()


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
