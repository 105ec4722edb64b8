"""Hot job state in Redis: live progress and cancel flags.

The database row is the truth for status; Redis carries what changes too often to write
to the row (progress, several times a second) and what a worker must see between two
chunks without a database query (the cancel flag). Everything here expires on its own.
"""

from dataclasses import dataclass
from functools import cache

import redis
from django.conf import settings


@cache
def client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_STATE_URL, health_check_interval=30)


def _progress_key(job_id: str) -> str:
    return f"job:{job_id}:progress"


def _cancel_key(job_id: str) -> str:
    return f"job:{job_id}:cancel"


@dataclass(frozen=True)
class HotProgress:
    attempt: int
    bytes_done: int
    bytes_total: int | None
    progress: int


def progress_write(*, job_id: str, progress: HotProgress) -> None:
    key = _progress_key(job_id)
    pipe = client().pipeline(transaction=False)
    pipe.hset(
        key,
        mapping={
            "attempt": progress.attempt,
            "bytes_done": progress.bytes_done,
            "bytes_total": -1 if progress.bytes_total is None else progress.bytes_total,
            "progress": progress.progress,
        },
    )
    pipe.expire(key, settings.HOT_STATE_TTL_S)
    pipe.execute()


def _decode(raw: dict[bytes, bytes]) -> HotProgress | None:
    if not raw:
        return None
    total = int(raw[b"bytes_total"])
    return HotProgress(
        attempt=int(raw[b"attempt"]),
        bytes_done=int(raw[b"bytes_done"]),
        bytes_total=None if total < 0 else total,
        progress=int(raw[b"progress"]),
    )


def progress_read_many(job_ids: list[str]) -> dict[str, HotProgress]:
    if not job_ids:
        return {}
    pipe = client().pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hgetall(_progress_key(job_id))
    found = {}
    for job_id, raw in zip(job_ids, pipe.execute(), strict=True):
        if (hot := _decode(raw)) is not None:
            found[job_id] = hot
    return found


def progress_clear(job_id: str) -> None:
    client().delete(_progress_key(job_id))


def cancel_flag_set(job_id: str) -> None:
    client().set(_cancel_key(job_id), 1, ex=settings.HOT_STATE_TTL_S)


def cancel_flag_is_set(job_id: str) -> bool:
    return bool(client().exists(_cancel_key(job_id)))


def cancel_flag_clear(job_id: str) -> None:
    client().delete(_cancel_key(job_id))
