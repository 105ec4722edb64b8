"""Endpoints for operators and orchestrators: liveness, readiness and Prometheus metrics.

`/health` says the process answers, and touches nothing (a liveness probe that checked
the database would restart every web process when the database blips). `/ready` checks
what a request needs: the database, the Redis servers (broker, hot state, channel layer)
and the downloads storage, each with a short timeout; 503 names what failed. The answer
says only which check failed: the error itself (host names, users) goes to the log.
`/ready` and `/metrics` are for the orchestrator and Prometheus, not the public edge.
"""

import logging
import os
from functools import cache
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from redis.backoff import NoBackoff
from redis.retry import Retry
from storages.backends.s3 import S3Storage

from infra import redis as redis_clients
from jobs.ops import scrape
from jobs.transfer.storage import downloads_storage

CHECK_TIMEOUT_S = 2.0

logger = logging.getLogger(__name__)


@require_GET
@never_cache
def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _database_pool() -> dict[str, int] | None:
    """The web process's connection pool as psycopg counts it, or None without a pool."""
    pool = getattr(connection, "pool", None)
    if pool is None:
        return None
    stats = pool.get_stats()
    return {
        "max": stats.get("pool_max", 0),
        "open": stats.get("pool_size", 0),
        "idle": stats.get("pool_available", 0),
        "waiting": stats.get("requests_waiting", 0),
        "timeouts": stats.get("requests_errors", 0),  # since the process started
    }


def _database() -> None:
    pool = _database_pool()
    # Exhausted: every connection is in use and requests queue for one. Said at once,
    # rather than after the pool's timeout, so an orchestrator can route around it.
    if pool is not None and pool["idle"] == 0 and pool["open"] >= pool["max"] and pool["waiting"]:
        raise ConnectionError(f"connection pool exhausted: {pool['waiting']} request(s) waiting")
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _redis_urls() -> dict[str, str]:
    return {
        "redis_broker": settings.CELERY_BROKER_URL,
        "redis_state": settings.REDIS_STATE_URL,
        "redis_channels": settings.CHANNEL_LAYER_URL,
    }


def _redis(url: str) -> None:
    client = redis_clients.client(
        url,
        socket_connect_timeout=CHECK_TIMEOUT_S,
        socket_timeout=CHECK_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
    )
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


def _storage() -> None:
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


def _run(name: str, check: Any, *args: Any) -> str:
    try:
        check(*args)
    except Exception as error:
        logger.warning("Readiness check %s failed: %s: %s", name, type(error).__name__, error)
        return "failed"
    return "ok"


@require_GET
@never_cache
def ready(request: HttpRequest) -> JsonResponse:
    checks = {"database": _run("database", _database)}
    for name, url in _redis_urls().items():
        checks[name] = _run(name, _redis, url)
    checks["storage"] = _run("storage", _storage)
    failed = sorted(name for name, result in checks.items() if result != "ok")
    body: dict[str, Any] = {"status": "unavailable" if failed else "ok", "checks": checks}
    if failed:
        body["failed"] = failed
    if (pool := _database_pool()) is not None:
        body["database_pool"] = pool
    return JsonResponse(body, status=503 if failed else 200)


@require_GET
@never_cache
def metrics_view(request: HttpRequest) -> HttpResponse:
    body, content_type = scrape.exposition()
    return HttpResponse(body, content_type=content_type)
