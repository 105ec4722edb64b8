"""Levels a scrape of /metrics reads from their source of truth (besides those of
jobs/ops/scrape.py): the live workers (their heartbeats in the broker's Redis), the Redis
servers' memory, the stored files, the jobs awaiting an operator, the oldest due job per
queue, and whether each dependency answers. Each family is read on its own: one whose
source cannot be read is left out (and logged), the rest of the scrape goes on."""

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.db.models import Case, Count, F, Max, Min, Q, Sum, When
from django.db.models.functions import Coalesce
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from jobs.models import DownloadJob, Status
from jobs.ops.broker import PRIORITIES
from jobs.ops.checks import (
    check_run,
    database_check,
    redis_check,
    redis_check_client,
    redis_urls,
    storage_check,
)
from jobs.ops.worker_heartbeat import heartbeats_read
from jobs.queues import queue_name

logger = logging.getLogger(__name__)

REDIS_INFO_TIMEOUT_S = 1.0
FAILED_WINDOW = timedelta(hours=24)


def _left_out(what: str) -> None:
    logger.warning("metrics: could not read %s", what, exc_info=True)


# --- workers ---------------------------------------------------------------------------------


def worker_families(*, now_s: float | None = None) -> list[Metric]:
    try:
        beats = heartbeats_read()
    except redis.RedisError:
        _left_out("the workers' heartbeats from the broker")
        return []
    now_s = time.time() if now_s is None else now_s
    alive = GaugeMetricFamily(
        "download_workers_alive", "1 per live worker and queue it consumes.", labels=["host", "queue"]
    )
    age = GaugeMetricFamily(
        "download_worker_heartbeat_age_seconds", "Seconds since a worker's last heartbeat.", labels=["host"]
    )
    consumers = GaugeMetricFamily(
        "download_queue_consumers", "Live workers consuming a priority's queue.", labels=["priority"]
    )
    for beat in beats:
        for queue in beat.queues:
            alive.add_metric([beat.host, queue], 1)
        age.add_metric([beat.host], max(0.0, now_s - beat.beat_at))
    for priority in PRIORITIES:
        consumers.add_metric([priority], sum(queue_name(priority) in beat.queues for beat in beats))
    total = GaugeMetricFamily("download_workers_alive_total", "Live workers (0 when none).", value=len(beats))
    return [alive, age, total, consumers]


# --- the Redis servers -------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisMemory:
    used_bytes: int
    max_bytes: int  # 0: no maxmemory
    policy: str
    evicted_keys: int


def redis_memory(url: str) -> RedisMemory:
    client = redis_check_client(url, timeout_s=REDIS_INFO_TIMEOUT_S)
    try:
        memory: dict[str, Any] = client.info("memory")
        stats: dict[str, Any] = client.info("stats")
    finally:
        client.close()
    return RedisMemory(
        used_bytes=int(memory["used_memory"]),
        max_bytes=int(memory.get("maxmemory", 0)),
        policy=str(memory.get("maxmemory_policy", "")),
        evicted_keys=int(stats.get("evicted_keys", 0)),
    )


def redis_families() -> tuple[list[Metric], dict[str, bool]]:
    """The memory of each Redis role's server, and whether it answered (by role)."""
    used = GaugeMetricFamily("download_redis_memory_used_bytes", "Memory the server uses.", labels=["role"])
    limit = GaugeMetricFamily(
        "download_redis_memory_max_bytes", "The Redis server's maxmemory (0: none).", labels=["role"]
    )
    evicted = CounterMetricFamily(
        "download_redis_evicted_keys", "Keys the Redis server evicted for want of memory.", labels=["role"]
    )
    policy = GaugeMetricFamily(
        "download_redis_maxmemory_policy_info", "The server's maxmemory-policy.", labels=["role", "policy"]
    )
    answered: dict[str, bool] = {}
    for role, url in redis_urls().items():
        try:
            found = redis_memory(url)
        except (redis.RedisError, KeyError, ValueError, TypeError) as error:
            _left_out(f"the memory of the {role} Redis")
            # A server that refuses INFO (renamed away) may still answer: ask as /ready does.
            refused = isinstance(error, redis.ResponseError | KeyError | ValueError | TypeError)
            answered[role] = refused and check_run(role, redis_check, url) == "ok"
            continue
        answered[role] = True
        used.add_metric([role], found.used_bytes)
        limit.add_metric([role], found.max_bytes)
        evicted.add_metric([role], found.evicted_keys)
        policy.add_metric([role, found.policy], 1)
    return ([used, limit, evicted, policy] if any(answered.values()) else []), answered


# --- the job table ---------------------------------------------------------------------------


def storage_held() -> tuple[int, int]:
    """(bytes, objects) of the files held in storage: those of completed jobs (not yet
    expired), each stored file once, however many jobs reuse it."""
    files = (
        DownloadJob.objects.filter(status=Status.COMPLETED)
        .exclude(storage_key="")
        .values("storage_key")
        .annotate(size=Max("file_size_bytes"))
        .order_by()
    )
    totals = files.aggregate(objects=Count("storage_key"), held=Sum("size"))
    return totals["held"] or 0, totals["objects"] or 0


def storage_families() -> list[Metric]:
    budget = GaugeMetricFamily(
        "download_storage_budget_bytes", "What stored files may take in all (STORAGE_BUDGET_BYTES).",
        value=settings.STORAGE_BUDGET_BYTES,
    )  # fmt: skip
    try:
        held_bytes, objects = storage_held()
    except Exception:
        _left_out("the stored files from the job table")
        return [budget]
    return [
        GaugeMetricFamily(
            "download_storage_held_bytes", "Bytes of the files held in storage.", value=held_bytes
        ),
        GaugeMetricFamily("download_storage_held_objects", "Files held in storage.", value=objects),
        budget,
    ]


def awaiting_operator(*, now: datetime) -> dict[str, int]:
    """Failed jobs an operator may act on: dead-lettered (their retries spent, not queued
    again since: a retry clears `dead_lettered_at`), and all that failed in the last 24 h."""
    return DownloadJob.objects.filter(status=Status.FAILED).aggregate(
        dead_lettered=Count("pk", filter=Q(dead_lettered_at__isnull=False)),
        failed=Count("pk", filter=Q(failed_at__gte=now - FAILED_WINDOW)),
    )


def queue_oldest(*, now: datetime) -> dict[str, float]:
    """Per priority, how long the queued job that has been due longest has waited (0: none):
    due since its retry's time, else its creation (a first attempt), else its last change
    (queued again), as `DownloadJob.due_since`."""
    due_since = Coalesce(
        "next_retry_at", Case(When(attempts=0, then=F("created_at")), default=F("updated_at"))
    )
    rows = (
        DownloadJob.objects.filter(status=Status.QUEUED)
        .filter(Q(next_retry_at__isnull=True) | Q(next_retry_at__lte=now))
        .values("priority")
        .annotate(oldest=Min(due_since))
        .order_by()
    )
    found = dict.fromkeys(PRIORITIES, 0.0)
    for row in rows:
        found[row["priority"]] = max(0.0, (now - row["oldest"]).total_seconds())
    return found


def job_table_families(*, now: datetime | None = None) -> list[Metric]:
    now = now or timezone.now()
    families: list[Metric] = []
    try:
        awaiting = awaiting_operator(now=now)
    except Exception:
        _left_out("the jobs awaiting an operator")
    else:
        family = GaugeMetricFamily(
            "download_jobs_awaiting_operator",
            "Failed jobs: dead_lettered (not retried since), failed (in the last 24 h).",
            labels=["reason"],
        )
        for reason in ("dead_lettered", "failed"):
            family.add_metric([reason], awaiting[reason])
        families.append(family)
    try:
        oldest = queue_oldest(now=now)
    except Exception:
        _left_out("the oldest due job of each queue")
    else:
        family = GaugeMetricFamily(
            "download_queue_oldest_age_seconds",
            "How long the longest-waiting queued and due job has waited, per priority (0: none).",
            labels=["priority"],
        )
        for priority, age_s in oldest.items():
            family.add_metric([priority], age_s)
        families.append(family)
    return families + storage_families()


# --- dependencies ------------------------------------------------------------------------------


def dependency_families(redis_answered: dict[str, bool]) -> list[Metric]:
    """`/ready`'s checks: the database and the storage checked now, the Redis servers by
    whether they answered the memory read."""
    up = GaugeMetricFamily(
        "download_dependency_up", "1 if the dependency answers as /ready checks it.", labels=["dependency"]
    )
    up.add_metric(["database"], float(check_run("database", database_check) == "ok"))
    for role, answered in redis_answered.items():
        up.add_metric([role], float(answered))
    up.add_metric(["storage"], float(check_run("storage", storage_check) == "ok"))
    return [up]


def levels_collect() -> Iterable[Metric]:
    yield from worker_families()
    redis_memory_families, answered = redis_families()
    yield from redis_memory_families
    yield from job_table_families()
    yield from dependency_families(answered)
