"""What a running attempt tells hot-state Redis after each chunk, in one Lua call
(`hotstate.chunk_report`): whether its job was cancelled and, only if it was not, its
progress and the PUBLISH of the event that says so. Against the real hot-state Redis, with a
subscriber on the channel to see what was published."""

import secrets
import time
from collections.abc import Iterator

import pytest
import redis
from django.conf import settings

from infra.redis import state_client
from jobs import hotstate
from jobs.hotstate import HotProgress

CHANNEL = "test.chunk-report"


@pytest.fixture
def job_id() -> Iterator[str]:
    job_id = f"job_{secrets.token_hex(16)}"
    yield job_id
    state_client().delete(f"job:{job_id}:progress", f"job:{job_id}:cancel")


@pytest.fixture
def subscriber() -> Iterator[redis.client.PubSub]:
    """Subscribed to CHANNEL on hot state's server (pub/sub ignores the database number)."""
    pubsub = state_client().pubsub()
    pubsub.subscribe(CHANNEL)
    # The subscription is confirmed before the test publishes.
    confirmed = pubsub.get_message(timeout=2)
    assert confirmed is not None
    assert confirmed["type"] == "subscribe"
    yield pubsub
    pubsub.close()


def published(pubsub: redis.client.PubSub, *, wait_s: float = 0.3) -> list[bytes]:
    """Every message that reached the subscriber within `wait_s`."""
    messages = []
    deadline = time.monotonic() + wait_s
    while (remaining := deadline - time.monotonic()) > 0:
        message = pubsub.get_message(timeout=remaining)
        if message is not None and message["type"] == "message":
            messages.append(message["data"])
    return messages


def test_a_cancelled_job_is_told_so_and_nothing_is_written_or_published(job_id, subscriber):
    hotstate.cancel_flag_set(job_id)

    cancelled = hotstate.chunk_report(
        job_id=job_id, progress=HotProgress(1, 5_000, 10_000, 50), publish=(CHANNEL, b"an event")
    )

    assert cancelled is True
    assert state_client().exists(f"job:{job_id}:progress") == 0
    assert hotstate.progress_read_many([job_id]) == {}
    assert published(subscriber) == []


def test_a_running_job_writes_its_progress_with_its_ttl_and_publishes_once(job_id, subscriber):
    cancelled = hotstate.chunk_report(
        job_id=job_id, progress=HotProgress(2, 5_000, 10_000, 50), publish=(CHANNEL, b"an event")
    )

    assert cancelled is False
    assert hotstate.progress_read_many([job_id]) == {job_id: HotProgress(2, 5_000, 10_000, 50)}
    ttl_s = state_client().ttl(f"job:{job_id}:progress")
    assert settings.HOT_STATE_TTL_S - 5 <= ttl_s <= settings.HOT_STATE_TTL_S
    assert published(subscriber) == [b"an event"]


def test_an_unknown_total_is_written_as_unknown(job_id):
    assert hotstate.chunk_report(job_id=job_id, progress=HotProgress(1, 4_096, None, 0)) is False

    assert hotstate.progress_read_many([job_id]) == {job_id: HotProgress(1, 4_096, None, 0)}


def test_a_chunk_with_nothing_to_report_only_checks_the_cancel_flag(job_id, subscriber):
    assert hotstate.chunk_report(job_id=job_id, progress=None) is False
    assert state_client().exists(f"job:{job_id}:progress") == 0
    assert published(subscriber) == []

    hotstate.cancel_flag_set(job_id)
    assert hotstate.chunk_report(job_id=job_id, progress=None) is True
