"""Fixtures of the transfer tests."""

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.files.storage import Storage, storages
from storages.backends.s3 import S3Storage

from tests.support.origin_server import ReplyServer
from tests.support.s3 import Bucket, s3_downloads_storage

MiB = 1024 * 1024
PART = 5 * MiB  # S3's smallest part: a few MiB make several


@pytest.fixture(scope="module")
def bucket(s3: Any) -> Bucket:
    return Bucket(s3)


@pytest.fixture
def s3_key() -> str:
    """The moto bucket lives for the session: each test writes keys of its own."""
    return f"downloads/1/job_{uuid.uuid4().hex}-1"


@pytest.fixture
def s3_storage(settings: Any, s3: Any) -> Storage:
    """The downloads storage on the moto endpoint, in chunks of 1 MiB and parts of 5 MiB."""
    settings.STORAGES = {**settings.STORAGES, "downloads": s3_downloads_storage(s3)}
    settings.STAGING_CHUNK_BYTES = MiB
    settings.STAGING_PART_BYTES = PART
    settings.STAGING_PARTS_IN_FLIGHT = 4
    storage = storages["downloads"]
    assert isinstance(storage, S3Storage)
    return storage


@pytest.fixture(scope="module")
def reply_server_running() -> Iterator[ReplyServer]:
    server = ReplyServer().start()
    yield server
    server.stop()


@pytest.fixture
def reply_server(reply_server_running: ReplyServer) -> ReplyServer:
    reply_server_running.reset()
    return reply_server_running
