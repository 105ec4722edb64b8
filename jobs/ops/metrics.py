"""Prometheus metrics of the service.

Events are counted where they happen (the services, the WebSocket consumer), in whatever
process that is: a Celery pool child, an ASGI process. With `PROMETHEUS_MULTIPROC_DIR`
set (as `manage.py runstack` and the test stacks do), prometheus-client keeps each
process's values in a file of that directory and `/metrics` adds them all up, so a
scrape of any web process sees the counts of every worker. The directory must be empty
when the processes start (the launcher clears it); without it each process counts alone.

Levels that have a source of truth are read from it at scrape time instead of being
tracked: queue depth per priority from the broker's Redis, active jobs from the database,
the origins' circuit breakers from hot-state Redis.
"""

import logging
import os
import shutil
from collections import Counter as Tally
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from celery.signals import worker_process_shutdown
from django.conf import settings
from django.db.models import Count
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from jobs.models import DownloadJob

logger = logging.getLogger(__name__)

PRIORITIES = ("high", "normal", "low")
# kombu's Redis transport keeps priority 0 in the queue's own list and the other priority
# steps in lists named "<queue>\x06\x16<step>" (PRIORITY_STEPS = [0, 3, 6, 9]).
_KOMBU_SEP = "\x06\x16"
_KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)

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
origin_circuit_opens = Counter(
    "download_origin_circuit_opened",
    "Times the circuit breaker of an origin opened (again, after a failed probe).",
    ["origin"],
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


def origin_circuit_opened(origin: str) -> None:
    origin_circuit_opens.labels(origin=origin).inc()


# --- levels read at scrape time ----------------------------------------------------------


@cache
def _broker() -> redis.Redis:
    return redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_connect_timeout=1, socket_timeout=1)


def queue_depths() -> dict[str, int]:
    pipe = _broker().pipeline(transaction=False)
    for priority in PRIORITIES:
        queue = f"downloads.{priority}"
        for step in _KOMBU_PRIORITY_STEPS:
            pipe.llen(f"{queue}{_KOMBU_SEP}{step}" if step else queue)
    sizes = iter(pipe.execute())
    return {priority: sum(next(sizes) for _ in _KOMBU_PRIORITY_STEPS) for priority in PRIORITIES}


def active_jobs() -> Tally[tuple[str, str]]:
    from jobs.models import ACTIVE_STATUSES, DownloadJob

    rows = (
        DownloadJob.objects.filter(status__in=ACTIVE_STATUSES)
        .values("status", "priority")
        .annotate(n=Count("pk"))
        .order_by()
    )
    found: Tally[tuple[str, str]] = Tally({(s, p): 0 for s in ACTIVE_STATUSES for p in PRIORITIES})
    for row in rows:
        found[(row["status"], row["priority"])] = row["n"]
    return found


CIRCUIT_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}


def origin_circuit_families() -> list[Metric]:
    """The state and the failures in the window of every origin's circuit breaker, from
    hot-state Redis (jobs.transfer.breaker); none if it cannot be read."""
    from jobs.transfer.breaker import breakers_all

    try:
        breakers = breakers_all()
    except redis.RedisError:
        logger.warning("metrics: could not read the circuit breakers from Redis", exc_info=True)
        return []
    state = GaugeMetricFamily(
        "download_origin_circuit_state",
        "Circuit breaker of an origin: 0 closed, 1 half-open, 2 open.",
        labels=["origin"],
    )
    failures = GaugeMetricFamily(
        "download_origin_circuit_failures",
        "Failures counted in the circuit breaker's rolling window.",
        labels=["origin"],
    )
    for breaker in breakers:
        state.add_metric([breaker.name], CIRCUIT_STATE_VALUES[breaker.state])
        failures.add_metric([breaker.name], breaker.failures)
    return [state, failures]


class LevelsCollector(Collector):
    """Queue depth and active jobs, read when scraped. A source that cannot be read is
    left out of the scrape (and logged) rather than failing it."""

    def collect(self) -> Iterable[Metric]:
        depths: dict[str, int] | None = None
        try:
            depths = queue_depths()
        except redis.RedisError:
            logger.warning("metrics: could not read the queue depths from the broker", exc_info=True)
        else:
            depth = GaugeMetricFamily(
                "download_queue_depth",
                "Messages waiting in the broker per priority queue.",
                labels=["priority"],
            )
            for priority, size in depths.items():
                depth.add_metric([priority], size)
            yield depth
        try:
            active = active_jobs()
        except Exception:
            logger.warning("metrics: could not count the active jobs", exc_info=True)
        else:
            jobs = GaugeMetricFamily(
                "download_jobs_active", "Jobs queued or processing.", labels=["status", "priority"]
            )
            for (status, priority), n in sorted(active.items()):
                jobs.add_metric([status, priority], n)
            yield jobs
        yield from origin_circuit_families()
        # The alerts' figures and whether each fires (jobs.ops.alerts), as they are now.
        from jobs.ops.alerts import alert_metric_families, alerts_evaluate

        yield from alert_metric_families(alerts_evaluate(queue_depths=depths))


def _multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition() -> tuple[bytes, str]:
    """The text of a scrape: every process's metrics (or this one's) plus the levels."""
    levels = CollectorRegistry(auto_describe=False)
    levels.register(LevelsCollector())
    if _multiprocess_dir():
        processes = CollectorRegistry()
        multiprocess.MultiProcessCollector(processes)
        body = generate_latest(processes)
    else:
        body = generate_latest(REGISTRY)
    return body + generate_latest(levels), CONTENT_TYPE_LATEST


@worker_process_shutdown.connect
def _pool_child_exited(pid: int | None = None, **kwargs: Any) -> None:
    """A Celery pool child that exits takes its live gauges with it; its counts stay."""
    if _multiprocess_dir():
        multiprocess.mark_process_dead(pid or os.getpid())


def multiprocess_dir_reset(path: str | Path) -> None:
    """Empties (or makes) the directory for a fresh start of all the processes."""
    directory = Path(path)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
