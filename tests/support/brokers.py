"""The service's broker pointed elsewhere for a test: its settings and its client
(`infra.redis.broker_client`), made again on the way in and on the way out."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from infra.redis import reset as redis_clients_reset


@contextmanager
def broker_at(settings: Any, url: str) -> Iterator[None]:
    """CELERY_BROKER_URL is `url` within the block (pytest-django's `settings` puts it back)."""
    settings.CELERY_BROKER_URL = url
    redis_clients_reset()
    try:
        yield
    finally:
        redis_clients_reset()


@contextmanager
def empty_broker(settings: Any, url: str) -> Iterator[redis.Redis]:
    """`broker_at(url)`, with its database emptied before and after: a client of it."""
    with broker_at(settings, url):
        client = redis.Redis.from_url(url)
        client.flushdb()
        try:
            yield client
        finally:
            client.flushdb()
