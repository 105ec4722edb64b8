"""The service's broker pointed elsewhere for a test: its settings and its cached client
(`jobs.ops.broker.broker_client`), made again on the way in and on the way out."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from jobs.ops.broker import broker_client


@contextmanager
def broker_at(settings: Any, url: str) -> Iterator[None]:
    """CELERY_BROKER_URL is `url` within the block (pytest-django's `settings` puts it back)."""
    settings.CELERY_BROKER_URL = url
    broker_client.cache_clear()
    try:
        yield
    finally:
        broker_client.cache_clear()


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
