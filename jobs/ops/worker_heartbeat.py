"""Which workers are alive, as the broker's Redis knows it.

Each worker's main process writes a key of its own to the broker's Redis every
WORKER_HEARTBEAT_S (a thread started when the worker is ready), naming its host (Celery's
node name, `celery@<host>`) and the queues it consumes, with a lifetime of three periods:
a worker that stops says so by deleting its key, one killed outright (SIGKILL, a lost
host) is gone once its key expires. A scrape lists the keys (jobs/ops/levels.py). The same
thread copies the worker's database pool figures into its metrics (jobs/ops/db_pool.py).
"""

import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from celery.signals import worker_ready, worker_shutdown
from django.conf import settings

from infra.redis import broker_client
from jobs.ops.db_pool import WORKER, db_pool_refresh

logger = logging.getLogger(__name__)

KEY_PREFIX = "downloads:worker-heartbeat:"
LIFETIMES = 3  # periods a key outlives its last beat


@dataclass(frozen=True)
class WorkerBeat:
    host: str
    queues: tuple[str, ...]
    beat_at: float  # epoch seconds


def heartbeat_write(beat: WorkerBeat, *, interval_s: float, client: redis.Redis | None = None) -> None:
    value = json.dumps({"host": beat.host, "queues": list(beat.queues), "beat_at": beat.beat_at})
    ttl_s = max(1, math.ceil(LIFETIMES * interval_s))
    (client or broker_client()).set(f"{KEY_PREFIX}{beat.host}", value, ex=ttl_s)


def heartbeat_forget(host: str, *, client: redis.Redis | None = None) -> None:
    (client or broker_client()).delete(f"{KEY_PREFIX}{host}")


def heartbeats_read(*, client: redis.Redis | None = None) -> list[WorkerBeat]:
    """The live workers' last beats, by host."""
    client = client or broker_client()
    keys = sorted(client.scan_iter(match=f"{KEY_PREFIX}*", count=1000))
    beats = []
    for raw in client.mget(keys) if keys else []:
        if raw is None:
            continue  # expired between the scan and the read
        try:
            found = json.loads(raw)
            beats.append(WorkerBeat(str(found["host"]), tuple(found["queues"]), float(found["beat_at"])))
        except (ValueError, KeyError, TypeError):
            logger.warning("metrics: a worker heartbeat that is not one: %r", raw[:200])
    return sorted(beats, key=lambda beat: beat.host)


class Heartbeat(threading.Thread):
    def __init__(self, *, host: str, queues: tuple[str, ...], interval_s: float) -> None:
        super().__init__(name="worker-heartbeat", daemon=True)
        self.host, self.queues, self.interval_s = host, queues, interval_s
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                heartbeat_write(WorkerBeat(self.host, self.queues, time.time()), interval_s=self.interval_s)
            except redis.RedisError:
                logger.warning("Could not write the worker's heartbeat to the broker's Redis", exc_info=True)
            db_pool_refresh(WORKER)
            self.stopping.wait(self.interval_s)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)
        try:
            heartbeat_forget(self.host)
        except redis.RedisError:
            logger.warning("Could not delete the worker's heartbeat; it expires", exc_info=True)


_running: list[Heartbeat] = []


def _consumed_queues(consumer: Any) -> tuple[str, ...]:
    task_consumer = getattr(consumer, "task_consumer", None)
    if task_consumer is not None:
        return tuple(sorted(queue.name for queue in task_consumer.queues))
    return tuple(sorted(consumer.app.amqp.queues.consume_from))


@worker_ready.connect
def _heartbeat_start(sender: Any = None, **kwargs: Any) -> None:
    if sender is None or not settings.WORKER_HEARTBEAT_S:
        return
    heartbeat = Heartbeat(
        host=sender.hostname, queues=_consumed_queues(sender), interval_s=settings.WORKER_HEARTBEAT_S
    )
    heartbeat.start()
    _running.append(heartbeat)


@worker_shutdown.connect
def _heartbeat_stop(**kwargs: Any) -> None:
    while _running:
        _running.pop().stop()
