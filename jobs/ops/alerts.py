"""The service's two alerts (docs/operations.md): a queue backlog and a low job success rate.

`alerts_evaluate()` reads both figures from their sources of truth (the broker's queue
lists and the job table), so the `/metrics` collector exposes them as they are at scrape
time, and beat's `jobs.download_alerts_check` logs a WARNING while an alert fires.

- backlog: messages waiting in the broker, summed over the priority queues; fires above
  ALERT_BACKLOG_THRESHOLD.
- success rate: completed / (completed + failed) of the jobs that ended within the last
  ALERT_WINDOW_S (cancelled jobs are not counted); fires below ALERT_SUCCESS_RATE_MIN,
  but only once at least ALERT_MIN_SAMPLES jobs ended in the window.
"""

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from django.conf import settings
from django.db.models import Count, Q
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from jobs.models import DownloadJob, Status
from jobs.ops import broker

logger = logging.getLogger(__name__)

BACKLOG = "backlog"
SUCCESS_RATE = "success_rate"


@dataclass(frozen=True)
class SuccessRate:
    completed: int
    failed: int

    @property
    def ended(self) -> int:
        return self.completed + self.failed

    @property
    def rate(self) -> float | None:
        return self.completed / self.ended if self.ended else None


@dataclass(frozen=True)
class AlertState:
    backlog: int | None  # None: the broker could not be read
    success: SuccessRate | None  # None: the database could not be read

    @property
    def backlog_firing(self) -> bool | None:
        if self.backlog is None:
            return None
        return self.backlog > settings.ALERT_BACKLOG_THRESHOLD

    @property
    def success_rate_firing(self) -> bool | None:
        if self.success is None:
            return None
        rate = self.success.rate
        if rate is None or self.success.ended < settings.ALERT_MIN_SAMPLES:
            return False
        return rate < settings.ALERT_SUCCESS_RATE_MIN


def queue_backlog() -> int:
    """Messages waiting in the broker over every priority queue."""
    return sum(broker.queue_depths().values())


def success_rate_window(*, now: datetime | None = None) -> SuccessRate:
    """Jobs completed and failed within the last ALERT_WINDOW_S."""
    since = (now or timezone.now()) - timedelta(seconds=settings.ALERT_WINDOW_S)
    counts = DownloadJob.objects.filter(status__in=(Status.COMPLETED, Status.FAILED)).aggregate(
        completed=Count("pk", filter=Q(status=Status.COMPLETED, completed_at__gte=since)),
        failed=Count("pk", filter=Q(status=Status.FAILED, failed_at__gte=since)),
    )
    return SuccessRate(completed=counts["completed"], failed=counts["failed"])


def alerts_evaluate(*, now: datetime | None = None, queue_depths: dict[str, int] | None = None) -> AlertState:
    """Both figures; a source that cannot be read is None (and logged), not an error.
    A caller that has just read the queue depths passes them, so the broker is read once."""
    try:
        backlog: int | None = sum(queue_depths.values()) if queue_depths is not None else queue_backlog()
    except redis.RedisError:
        logger.warning("alerts: could not read the queue backlog from the broker", exc_info=True)
        backlog = None
    try:
        success: SuccessRate | None = success_rate_window(now=now)
    except Exception:
        logger.warning("alerts: could not count the jobs that ended", exc_info=True)
        success = None
    return AlertState(backlog=backlog, success=success)


def alerts_check(*, now: datetime | None = None) -> AlertState:
    """Evaluates the alerts and logs a WARNING for each one that fires (beat, every minute)."""
    state = alerts_evaluate(now=now)
    if state.backlog_firing:
        logger.warning(
            "ALERT backlog: %s messages waiting in the broker, above the threshold of %s; scale the workers",
            state.backlog,
            settings.ALERT_BACKLOG_THRESHOLD,
        )
    if state.success_rate_firing and state.success is not None:
        logger.warning(
            "ALERT success_rate: %.3f of the %s jobs that ended in the last %s s completed, "
            "below the threshold of %s",
            state.success.rate,
            state.success.ended,
            settings.ALERT_WINDOW_S,
            settings.ALERT_SUCCESS_RATE_MIN,
        )
    return state


def alert_metric_families(state: AlertState | None = None) -> Iterable[Metric]:
    """The figures and the alerts' state, for the scrape-time collector. A figure that
    could not be read is left out, with its alert."""
    state = state or alerts_evaluate()
    firing = GaugeMetricFamily("download_alert_firing", "1 while the alert fires, else 0.", labels=["alert"])
    if state.backlog is not None:
        yield GaugeMetricFamily(
            "download_queue_backlog",
            "Messages waiting in the broker over every priority queue.",
            value=state.backlog,
        )
        firing.add_metric([BACKLOG], float(bool(state.backlog_firing)))
    if state.success is not None:
        ended = GaugeMetricFamily(
            "download_jobs_ended_window",
            "Jobs that completed or failed within the alert window (ALERT_WINDOW_S).",
            labels=["outcome"],
        )
        ended.add_metric(["completed"], state.success.completed)
        ended.add_metric(["failed"], state.success.failed)
        yield ended
        if state.success.rate is not None:
            yield GaugeMetricFamily(
                "download_job_success_rate",
                "completed / (completed + failed) of the jobs that ended within the alert window.",
                value=state.success.rate,
            )
        firing.add_metric([SUCCESS_RATE], float(bool(state.success_rate_firing)))
    yield firing
