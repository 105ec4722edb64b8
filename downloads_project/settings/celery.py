"""Celery: the worker's pool, time limits, the broker's options and beat's schedule."""

import os

from django.core.exceptions import ImproperlyConfigured

from downloads_project.settings.base import TIME_ZONE
from downloads_project.settings.environment import env
from downloads_project.settings.notices import EMAIL_NOTICE_SWEEP_EVERY_S
from downloads_project.settings.ops import ALERT_CHECK_EVERY_S
from downloads_project.settings.redis import REDIS_SENTINEL_MASTER, REDIS_SENTINELS
from downloads_project.settings.webhooks import WEBHOOK_REAP_EVERY_S
from jobs.queues import DEFAULT_QUEUE, MAINTENANCE_QUEUE

# The worker's pool. "threads" (the default): one process runs WORKER_CONCURRENCY jobs at
# once as threads. A job spends nearly all its time waiting on the origin and the store, so
# threads hold hundreds of jobs in one process; its database connections come from a pool
# (DATABASE_POOL_MAX_SIZE) and its S3 parts from a byte budget, whatever the concurrency.
# "prefork": WORKER_CONCURRENCY child processes, one job each (Celery's own time limits).
WORKER_POOL = env("WORKER_POOL", default="threads")
if WORKER_POOL not in ("threads", "prefork"):
    raise ImproperlyConfigured(f"WORKER_POOL is {WORKER_POOL!r}: threads or prefork")
WORKER_CONCURRENCY = env.int(
    "WORKER_CONCURRENCY", default=200 if WORKER_POOL == "threads" else max(2, os.cpu_count() or 2)
)
if WORKER_CONCURRENCY < 1:
    raise ImproperlyConfigured("WORKER_CONCURRENCY must be 1 or more")
# The worker's memory allocator keeps its chunk-sized buffers rather than fault them in
# anew for every chunk (downloads_project/celery.py, MALLOC_OPTIONS; glibc only).
WORKER_MALLOC_TUNE = env.bool("WORKER_MALLOC_TUNE", default=True)
CELERY_WORKER_POOL = WORKER_POOL
CELERY_WORKER_CONCURRENCY = WORKER_CONCURRENCY

JOB_SOFT_TIME_LIMIT_S = env.int("JOB_SOFT_TIME_LIMIT_S", default=150)
JOB_HARD_TIME_LIMIT_S = env.int("JOB_HARD_TIME_LIMIT_S", default=JOB_SOFT_TIME_LIMIT_S + 30)

CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # An unacknowledged message is redelivered after this long; it must exceed the hard
    # time limit plus the longest retry countdown, or a long job would run twice.
    "visibility_timeout": env.int(
        "CELERY_VISIBILITY_TIMEOUT_S", default=max(3600, 4 * JOB_HARD_TIME_LIMIT_S)
    ),
    # Serve downloads.high before downloads.normal before downloads.low.
    "queue_order_strategy": "priority",
    **({"master_name": REDIS_SENTINEL_MASTER} if REDIS_SENTINELS else {}),
}
CELERY_TASK_DEFAULT_QUEUE = DEFAULT_QUEUE
CELERY_TIMEZONE = TIME_ZONE

# Maintenance runs on downloads.high, which every worker serves first, so a backlog of
# downloads never holds it up. Each message expires after one period: runs missed while
# no worker was up do not pile up and run back to back.
JOB_EXPIRE_EVERY_S = env.float("JOB_EXPIRE_EVERY_S", default=300.0)
JOB_REAP_EVERY_S = env.float("JOB_REAP_EVERY_S", default=30.0)
JOB_PURGE_EVERY_S = env.float("JOB_PURGE_EVERY_S", default=3600.0)
ANALYTICS_REFRESH_EVERY_S = env.float("ANALYTICS_REFRESH_EVERY_S", default=60.0)

CELERY_BEAT_SCHEDULE = {
    name: {"task": task, "schedule": every_s, "options": {"queue": MAINTENANCE_QUEUE, "expires": every_s}}
    for name, task, every_s in (
        ("download-jobs-expire", "jobs.download_jobs_expire", JOB_EXPIRE_EVERY_S),
        ("download-jobs-reap", "jobs.download_jobs_reap", JOB_REAP_EVERY_S),
        ("download-jobs-purge", "jobs.download_jobs_purge", JOB_PURGE_EVERY_S),
        ("download-analytics-refresh", "jobs.download_analytics_refresh", ANALYTICS_REFRESH_EVERY_S),
        ("download-alerts-check", "jobs.download_alerts_check", ALERT_CHECK_EVERY_S),
        ("email-notices-sweep", "notices.email_notices_sweep", EMAIL_NOTICE_SWEEP_EVERY_S),
        ("webhook-deliveries-reap", "webhooks.webhook_deliveries_reap", WEBHOOK_REAP_EVERY_S),
    )
}
