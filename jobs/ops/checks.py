"""The checks of what a request needs: the database, the Redis servers (broker, hot state,
channel layer) and the downloads storage, each with a short timeout. `/ready` answers with
them (jobs/ops/probes.py) and a scrape reports them as `download_dependency_up`
(jobs/ops/levels.py). A check raises on failure; `check_run` logs the error and says only
"ok" or "failed"."""

import logging
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.db import connection
from redis.backoff import NoBackoff
from redis.retry import Retry
from storages.backends.s3 import S3Storage

from infra import redis as redis_clients
from jobs.transfer.storage import downloads_storage

CHECK_TIMEOUT_S = 2.0

logger = logging.getLogger(__name__)


def database_pool(*, open_it: bool = True) -> dict[str, int] | None:
    """The process's connection pool as psycopg counts it, or None without a pool (or,
    unless `open_it`, before the process first used it: made here it would connect)."""
    if open_it:
        pool = getattr(connection, "pool", None)
    else:
        pool = getattr(connection, "_connection_pools", {}).get(connection.alias)
    if pool is None:
        return None
    stats = pool.get_stats()
    return {
        "max": stats.get("pool_max", 0),
        "open": stats.get("pool_size", 0),
        "idle": stats.get("pool_available", 0),
        "waiting": stats.get("requests_waiting", 0),
        "timeouts": stats.get("requests_errors", 0),  # since the process started
        "requests": stats.get("requests_num", 0),  # since the process started
    }


def database_check() -> None:
    pool = database_pool()
    # Exhausted: every connection is in use and requests queue for one. Said at once,
    # rather than after the pool's timeout, so an orchestrator can route around it.
    if pool is not None and pool["idle"] == 0 and pool["open"] >= pool["max"] and pool["waiting"]:
        raise ConnectionError(f"connection pool exhausted: {pool['waiting']} request(s) waiting")
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def redis_urls() -> dict[str, str]:
    """The Redis servers the service uses, by role."""
    return {
        "broker": settings.CELERY_BROKER_URL,
        "hotstate": settings.REDIS_STATE_URL,
        "channels": settings.CHANNEL_LAYER_URL,
    }


def redis_check_client(url: str, *, timeout_s: float = CHECK_TIMEOUT_S) -> redis.Redis:
    """A client of its own for one check: it gives up after `timeout_s`, and tries once."""
    return redis_clients.client(
        url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
    )


def redis_check(url: str) -> None:
    client = redis_check_client(url)
    try:
        client.ping()
    finally:
        client.close()


@cache
def _s3_client(
    endpoint_url: str | None, region: str | None, access_key: str | None, secret: str | None
) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret,
        config=Config(
            connect_timeout=CHECK_TIMEOUT_S, read_timeout=CHECK_TIMEOUT_S, retries={"max_attempts": 1}
        ),
    )


def storage_check() -> None:
    storage = downloads_storage()
    if isinstance(storage, S3Storage):
        client = _s3_client(storage.endpoint_url, storage.region_name, storage.access_key, storage.secret_key)
        client.head_bucket(Bucket=storage.bucket_name)
        return
    # Local files: the root (or the folder it will be made in) must be a writable folder.
    location = Path(storage.location)  # type: ignore[attr-defined]
    while not location.exists() and location != location.parent:
        location = location.parent
    if not location.is_dir() or not os.access(location, os.W_OK | os.X_OK):
        raise OSError(f"{location} is not a writable folder")


def check_run(name: str, check: Callable[..., None], *args: Any) -> str:
    try:
        check(*args)
    except Exception as error:
        logger.warning("Readiness check %s failed: %s: %s", name, type(error).__name__, error)
        return "failed"
    return "ok"
