"""What a Prometheus scrape of /metrics reads: every process's counters (jobs/metrics.py)
plus the levels that have a source of truth, read from it now: queue depth per priority
from the broker's Redis, active jobs from the database, the origins' circuit breakers
from hot-state Redis, and the alerts' figures.
"""

import logging
from collections import Counter as Tally
from collections.abc import Iterable

import redis
from django.db.models import Count
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from jobs.metrics import multiprocess_dir
from jobs.models import ACTIVE_STATUSES, DownloadJob
from jobs.ops.alerts import alert_metric_families, alerts_evaluate
from jobs.ops.broker import PRIORITIES, queue_depths
from jobs.transfer.breaker import breakers_all

logger = logging.getLogger(__name__)


def active_jobs() -> Tally[tuple[str, str]]:
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
        yield from alert_metric_families(alerts_evaluate(queue_depths=depths))


# Levels of the apps above jobs (webhooks' deliveries due), added by each at its start.
_app_levels: list[Collector] = []


def levels_collector_add(collector: Collector) -> None:
    """Adds `collector` to every scrape, read then as `LevelsCollector` is."""
    _app_levels.append(collector)


def exposition() -> tuple[bytes, str]:
    """The text of a scrape: every process's metrics (or this one's) plus the levels."""
    levels = CollectorRegistry(auto_describe=False)
    levels.register(LevelsCollector())
    for collector in _app_levels:
        levels.register(collector)
    if multiprocess_dir():
        processes = CollectorRegistry()
        multiprocess.MultiProcessCollector(processes)
        body = generate_latest(processes)
    else:
        body = generate_latest(REGISTRY)
    return body + generate_latest(levels), CONTENT_TYPE_LATEST
