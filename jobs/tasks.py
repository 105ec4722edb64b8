"""Celery tasks: thin wrappers that load nothing but an id and call a service."""

import logging

from celery import Task, shared_task
from django import db
from django.conf import settings

from jobs import metrics, queues, services
from jobs.ops import alerts, hourly_analytics
from jobs.ops import worker_heartbeat as _worker_heartbeat  # noqa: F401 (its signals: the heartbeat)
from jobs.ops.db_pool import WORKER, db_pool_refresh

logger = logging.getLogger(__name__)

# A fault of the database (PostgreSQL restarting, a connection lost, the pool's timeout)
# is no fault of the job's: the attempt's message is sent again, with the same task id,
# after 1, 2, 4 ... 60 s, for about a quarter of an hour (then the reaper's thresholds
# take over). Acknowledged and dropped instead, every message a worker took during a
# short outage would wait JOB_QUEUED_STALE_S (or a running attempt JOB_HEARTBEAT_STALE_S)
# for the reaper. The same task id lets the message restart an attempt it had started
# (download_job_start); the compare-and-swap keeps it from starting one beside another's.
DATABASE_FAULT_RETRIES = 20
DATABASE_FAULT_RETRY_MAX_S = 60


@shared_task(
    name=queues.STAGE_TASK,  # the services send it by this name
    bind=True,
    # A job is acknowledged only when its attempt ended, and handed back to the queue if
    # the worker process died, so a crash never loses it; the services make a
    # redelivered job restart cleanly and never complete twice.
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=settings.JOB_SOFT_TIME_LIMIT_S,
    time_limit=settings.JOB_HARD_TIME_LIMIT_S,
    # Retries are the job's, not Celery's: the service re-dispatches a retryable failure
    # with backoff and jitter and counts attempts on the row.
    max_retries=0,
)
def download_job_stage(self: Task, job_pk: int) -> None:
    # The task id tells a redelivery of this message (which may restart its attempt)
    # from another message for the same job (which may not).
    try:
        with metrics.job_in_flight():
            services.download_job_run(job_pk=job_pk, task_id=self.request.id or "")
        db_pool_refresh(WORKER, at_most_every_s=1.0)
    except (db.OperationalError, db.InterfaceError) as error:
        retries = self.request.retries or 0
        countdown_s = min(DATABASE_FAULT_RETRY_MAX_S, 2**retries)
        logger.warning(
            "Job %s: the database failed (%s: %s); its message is sent again in %s s",
            job_pk,
            type(error).__name__,
            error,
            countdown_s,
        )
        raise self.retry(exc=error, countdown=countdown_s, max_retries=DATABASE_FAULT_RETRIES) from error


# Maintenance, sent by beat (CELERY_BEAT_SCHEDULE). Each is safe to run twice at once.


@shared_task(name="jobs.download_jobs_expire")
def download_jobs_expire() -> int:
    return services.download_jobs_expire()


@shared_task(name="jobs.download_jobs_reap")
def download_jobs_reap() -> int:
    return services.download_jobs_reap()


@shared_task(name="jobs.download_jobs_purge")
def download_jobs_purge() -> int:
    return services.download_jobs_purge()


@shared_task(name="jobs.download_alerts_check")
def download_alerts_check() -> None:
    """Logs a WARNING for each alert that fires (docs/operations.md); /metrics shows their state."""
    alerts.alerts_check()


@shared_task(name="jobs.download_analytics_refresh")
def download_analytics_refresh() -> bool:
    """Refreshes the analytics materialized view (PostgreSQL); a no-op on SQLite."""
    return hourly_analytics.download_analytics_refresh()
