"""Hot job state in Redis: live progress, cancel flags, and each job's card.

The database row is the truth for status; Redis carries what changes too often to write
to the row (progress, several times a second), what a worker must see between two
chunks without a database query (the cancel flag), and a copy of the row's fields that
the status answer needs (the card), so that polling a job reads Redis, not the database.
Everything here expires on its own.
"""

import asyncio
import json
import time
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any

import redis
from django.conf import settings

from downloads_project import redis_servers
from jobs.parts import StoredPart

if TYPE_CHECKING:
    from jobs.models import DownloadJob


@cache
def client() -> redis.Redis:
    """The process's client of hot-state Redis. Its pool is shared by every thread, and a
    web process runs each request in a thread of its own: a busy pool makes a thread wait
    for a connection (at most REDIS_POOL_TIMEOUT_S) rather than fail or open one more."""
    pool = redis_servers.pool(
        settings.REDIS_STATE_URL,
        blocking=True,
        max_connections=settings.REDIS_POOL_MAX_CONNECTIONS,
        timeout=settings.REDIS_POOL_TIMEOUT_S,
        socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT_S,
        socket_timeout=settings.REDIS_SOCKET_TIMEOUT_S,
        health_check_interval=30,
    )
    return redis.Redis(connection_pool=pool)


_async_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any]" = weakref.WeakKeyDictionary()


def async_client() -> Any:
    """The running event loop's asyncio client of hot-state Redis (`redis.asyncio.Redis`),
    for code on a web process's loop that must not take a thread to ask Redis: the job
    sockets' places, the legacy wait. One per loop, as a client's connections belong to the
    loop that opened them; a busy pool makes a task wait for a connection (at most
    REDIS_POOL_TIMEOUT_S) rather than fail."""
    loop = asyncio.get_running_loop()
    found = _async_clients.get(loop)
    if found is None:
        found = _async_clients[loop] = redis_servers.async_client(
            settings.REDIS_STATE_URL,
            max_connections=settings.REDIS_POOL_MAX_CONNECTIONS,
            timeout=settings.REDIS_POOL_TIMEOUT_S,
            socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT_S,
            socket_timeout=settings.REDIS_SOCKET_TIMEOUT_S,
            health_check_interval=30,
        )
    return found


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


def _progress_fields(progress: HotProgress) -> dict[str, int]:
    """The progress hash's fields, in the order `_CHUNK_REPORT` takes them."""
    return {
        "attempt": progress.attempt,
        "bytes_done": progress.bytes_done,
        "bytes_total": -1 if progress.bytes_total is None else progress.bytes_total,
        "progress": progress.progress,
    }


def progress_write(*, job_id: str, progress: HotProgress) -> None:
    key = _progress_key(job_id)
    pipe = client().pipeline(transaction=False)
    pipe.hset(key, mapping=_progress_fields(progress))  # type: ignore[arg-type]
    pipe.expire(key, settings.HOT_STATE_TTL_S)
    pipe.execute()


# KEYS: the cancel flag, the progress hash. ARGV: attempt, bytes_done, bytes_total, progress
# ("" for no progress to write), the hash's ttl, then a channel and a message to PUBLISH
# ("" for none). Returns 1, and writes nothing, if the job was cancelled.
_CHUNK_REPORT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
if ARGV[1] ~= '' then
  redis.call('HSET', KEYS[2], 'attempt', ARGV[1], 'bytes_done', ARGV[2], 'bytes_total', ARGV[3],
             'progress', ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
if ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[6], ARGV[7]) end
return 0
"""


@cache
def _chunk_report_script() -> Any:
    return client().register_script(_CHUNK_REPORT)


def chunk_report(
    *, job_id: str, progress: HotProgress | None, publish: tuple[str, bytes] | None = None
) -> bool:
    """What a running attempt tells hot state after a chunk, in one round trip: whether
    its job was cancelled (returned), and, if not, its progress and the event that says
    so (`publish`: a channel and a message, when the channel layer's subscribers listen on
    this server). A cancelled job's attempt writes and announces nothing more."""
    fields: list[Any] = ["", "", "", ""] if progress is None else list(_progress_fields(progress).values())
    channel, message = publish if publish is not None else ("", b"")
    cancelled = _chunk_report_script()(
        keys=[_cancel_key(job_id), _progress_key(job_id)],
        args=[*fields, settings.HOT_STATE_TTL_S, channel, message],
    )
    return bool(cancelled)


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


# --- the card: the row's fields that the status answer needs ------------------------------


@dataclass(frozen=True)
class JobCard:
    """A copy of a job row's fields that the status answer and the owner check need.

    Written by the services after each committed write of the row, read by the status
    API and the WebSocket snapshot. `version` is the row's: a copy replaces the stored one
    only if it is newer, so a late writer or reader cannot bring back an older state."""

    version: int
    owner_id: int
    job_id: str
    file_id: int
    priority: str
    status: str
    progress: int
    bytes_done: int
    bytes_total: int | None
    attempts: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    next_retry_at: datetime | None
    expires_at: datetime | None
    file_name: str
    file_size_bytes: int | None
    error_code: str
    error_message: str
    error_retryable: bool | None

    @classmethod
    def of(cls, job: "DownloadJob") -> "JobCard":
        return cls(**{name: getattr(job, name) for name in _CARD_FIELDS})

    def encode(self) -> str:
        return json.dumps(asdict(self), default=datetime.isoformat, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: bytes) -> "JobCard":
        values: dict[str, Any] = json.loads(raw)
        for name in _CARD_DATETIMES:
            if values[name] is not None:
                values[name] = datetime.fromisoformat(values[name])
        return cls(**values)


_CARD_FIELDS = tuple(field.name for field in fields(JobCard))
_CARD_DATETIMES = ("created_at", "updated_at", "started_at", "next_retry_at", "expires_at")


def card_fields() -> tuple[str, ...]:
    """The row's columns a card is made of (for `.only()` reads)."""
    return _CARD_FIELDS


def _card_key(job_id: str) -> str:
    return f"job:{job_id}:card"


# Replaces the card only with a newer version of the row; sets its lifetime either way.
_CARD_WRITE = """
local current = redis.call('HGET', KEYS[1], 'version')
if current and tonumber(current) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'card', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


@cache
def _card_write_script() -> Any:
    return client().register_script(_CARD_WRITE)


def card_write(card: JobCard) -> bool:
    """Stores `card` unless a card of the same or a newer version is there; True if stored."""
    written = _card_write_script()(
        keys=[_card_key(card.job_id)], args=[card.version, card.encode(), settings.JOB_CARD_TTL_S]
    )
    return bool(written)


def card_decode(raw: bytes | None) -> JobCard | None:
    return JobCard.decode(raw) if raw else None


async def card_read_async(job_id: str) -> JobCard | None:
    """The job's card, read on the running event loop (`async_client`)."""
    return card_decode(await async_client().hget(_card_key(job_id), "card"))


def card_forget(job_id: str) -> None:
    """Drops the card, before a write of the row commits: until the new card is written,
    a reader goes to the row."""
    client().delete(_card_key(job_id))


def card_read(job_id: str) -> tuple[JobCard | None, HotProgress | None]:
    """The job's card and its live progress, in one round trip."""
    pipe = client().pipeline(transaction=False)
    pipe.hget(_card_key(job_id), "card")
    pipe.hgetall(_progress_key(job_id))
    raw_card, raw_progress = pipe.execute()
    return card_decode(raw_card), _decode(raw_progress)


# --- the running attempt: its heartbeat and its stored parts -------------------------------
#
# A running attempt beats every JOB_HEARTBEAT_INTERVAL_S and records each stored part here,
# not on the job's row: the row is written a fixed number of times per job, whatever the
# file's size or the attempt's length. Every write is fenced by the attempt number, in Lua:
# once a newer attempt has claimed the job, or the reaper has fenced this one off, its
# writes are refused and it stops. If this state is lost (Redis restarted empty), a running
# attempt writes it again at its next beat, the reaper gives an attempt without state a
# fresh grace period, and the next attempt, finding no parts, restarts the file from zero.
#
#   attempt  the attempt holding the job (the row's `attempts` while it runs)
#   live     "1" while that attempt may write; "0" once it ended or was fenced off
#   beat     its last heartbeat (Unix time, seconds)
#   parts    the parts it stored, 1 to n (JSON), for the next attempt to resume after


def _run_key(job_id: str) -> str:
    return f"job:{job_id}:run"


# KEYS[1] the run key; ARGV: attempt, now, ttl, parts (JSON, or "" to keep them).
# Attempt numbers only grow, and the row decides who holds the job: the holder writes over
# an older attempt's state (its start, or a beat after the start's write was lost) and
# writes the state again if Redis lost it. An older attempt, or one fenced off, is refused.
# Returns 1 if written, 0 if the attempt is fenced off.
_RUN_WRITE = """
local current = redis.call('HGET', KEYS[1], 'attempt')
local mine = tonumber(ARGV[1])
if current and tonumber(current) > mine then return 0 end
if current and tonumber(current) == mine and redis.call('HGET', KEYS[1], 'live') == '0' then
  return 0
end
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'parts', ARGV[4])
elseif not current or tonumber(current) < mine then
  redis.call('HSET', KEYS[1], 'parts', '[]')
end
redis.call('HSET', KEYS[1], 'attempt', mine, 'live', '1', 'beat', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS[1] the run key; ARGV: attempt, stale_before (Unix time, or "" for any beat).
# Fences the attempt off (live = 0) if it holds the job and, with stale_before, beat last
# before it (an attempt fenced off already stays so). Its parts stay for the next attempt.
# Returns 1 if the attempt is fenced off.
_RUN_FENCE = """
local current = redis.call('HGET', KEYS[1], 'attempt')
if not current or tonumber(current) ~= tonumber(ARGV[1]) then return 0 end
if redis.call('HGET', KEYS[1], 'live') == '0' then return 1 end
if ARGV[2] ~= '' and tonumber(redis.call('HGET', KEYS[1], 'beat')) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], 'live', '0')
return 1
"""


@cache
def _run_write_script() -> Any:
    return client().register_script(_RUN_WRITE)


@cache
def _run_fence_script() -> Any:
    return client().register_script(_RUN_FENCE)


@dataclass(frozen=True)
class RunState:
    attempt: int
    live: bool
    beat: float
    parts: tuple[StoredPart, ...]


def _parts_encode(parts: Sequence[StoredPart]) -> str:
    """The parts as the run key holds them: `n` and `size`, with `etag` and `crc32` only
    where the storage gave them (a local part has neither). The keys are those the service
    has always written, so an attempt reads the parts an older version recorded."""
    records = []
    for part in parts:
        record: dict[str, Any] = {"n": part.number, "size": part.size}
        if part.etag:
            record["etag"] = part.etag
        if part.crc32:
            record["crc32"] = part.crc32
        records.append(record)
    return json.dumps(records, separators=(",", ":"))


def _parts_decode(raw: bytes) -> tuple[StoredPart, ...]:
    return tuple(
        StoredPart(
            number=int(record["n"]),
            size=int(record["size"]),
            etag=record.get("etag") or "",
            crc32=record.get("crc32") or "",
        )
        for record in json.loads(raw)
    )


def run_beat(job_id: str, *, attempt: int, parts: Sequence[StoredPart] | None = None) -> bool:
    """The attempt's heartbeat, with its stored parts (1 to n) when given. Its start (once
    its row write has committed) beats with the parts it resumes after. False if the
    attempt is fenced off: it must stop."""
    encoded = "" if parts is None else _parts_encode(parts)
    written = _run_write_script()(
        keys=[_run_key(job_id)], args=[attempt, f"{time.time():.3f}", settings.HOT_STATE_TTL_S, encoded]
    )
    return bool(written)


def run_fence(job_id: str, *, attempt: int, stale_before: float | None = None) -> bool:
    """Fences the attempt off, keeping its parts: its next beat is refused. With
    `stale_before`, only if it last beat before then (the reaper's check and fence in one
    step). True if this call fenced it off."""
    stale = "" if stale_before is None else f"{stale_before:.3f}"
    return bool(_run_fence_script()(keys=[_run_key(job_id)], args=[attempt, stale]))


def _run_decode(raw: dict[bytes, bytes]) -> RunState | None:
    if not raw or b"attempt" not in raw:
        return None
    return RunState(
        attempt=int(raw[b"attempt"]),
        live=raw.get(b"live") == b"1",
        beat=float(raw.get(b"beat", b"0")),
        parts=_parts_decode(raw.get(b"parts", b"[]")),
    )


def run_read(job_id: str) -> RunState | None:
    raw: dict[bytes, bytes] = client().hgetall(_run_key(job_id))  # type: ignore[assignment]
    return _run_decode(raw)


def run_read_many(job_ids: list[str]) -> dict[str, RunState]:
    """The run state of each job that has one, in one round trip (the reaper's scan reads
    only the attempt and the beat)."""
    if not job_ids:
        return {}
    pipe = client().pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(_run_key(job_id), "attempt", "live", "beat")
    found = {}
    for job_id, (attempt, live, beat) in zip(job_ids, pipe.execute(), strict=True):
        if attempt is not None:
            found[job_id] = RunState(int(attempt), live == b"1", float(beat or 0), ())
    return found


def run_forget(job_id: str) -> None:
    """The job ended (completed, failed, cancelled) or starts over: no attempt resumes."""
    client().delete(_run_key(job_id))


# --- recent completions: what the estimate of a new job's wait is made of -------------------
#
# Each staged completion adds itself, and its duration, to the bucket of COMPLETIONS_BUCKET_S
# in which it completed: `completions:<bucket>`, a hash of `n` (jobs) and `s` (their
# durations summed, seconds), expiring once it has left JOB_ESTIMATE_WINDOW_S. Reading the
# window is one round trip whatever the load, and a bucket holds two numbers however many
# jobs complete in it. Jobs completed at once from a stored file are not counted: they take
# no worker's time.

COMPLETIONS_BUCKET_S = 5


@dataclass(frozen=True)
class RecentCompletions:
    """The jobs completed within a window that ends now."""

    count: int
    seconds: float  # their durations, summed
    first_bucket_s: float | None  # the start of the oldest bucket that counted one (Unix time)


def _completions_key(bucket: int) -> str:
    return f"completions:{bucket}"


def completion_record(job: "DownloadJob") -> None:
    """Counts the job's completion (it has completed_at and duration_seconds) in its bucket."""
    if job.completed_at is None or job.duration_seconds is None:
        return
    key = _completions_key(int(job.completed_at.timestamp() // COMPLETIONS_BUCKET_S))
    pipe = client().pipeline(transaction=False)
    pipe.hincrby(key, "n", 1)
    pipe.hincrbyfloat(key, "s", job.duration_seconds)
    pipe.expire(key, settings.JOB_ESTIMATE_WINDOW_S + 2 * COMPLETIONS_BUCKET_S)
    pipe.execute()


def completions_read(*, now_s: float) -> RecentCompletions:
    """The completions of the buckets within JOB_ESTIMATE_WINDOW_S before `now_s`, the
    current bucket included, in one round trip."""
    last = int(now_s // COMPLETIONS_BUCKET_S)
    buckets = range(last - int(settings.JOB_ESTIMATE_WINDOW_S // COMPLETIONS_BUCKET_S) + 1, last + 1)
    pipe = client().pipeline(transaction=False)
    for bucket in buckets:
        pipe.hmget(_completions_key(bucket), "n", "s")
    count, seconds, first = 0, 0.0, None
    for bucket, (n, s) in zip(buckets, pipe.execute(), strict=True):
        if n is not None and int(n) > 0:
            count += int(n)
            seconds += float(s or 0)
            first = bucket * COMPLETIONS_BUCKET_S if first is None else first
    return RecentCompletions(count=count, seconds=seconds, first_bucket_s=first)


def completions_reset() -> None:
    """Forgets every recorded completion (tests start from none)."""
    keys = list(client().scan_iter(match="completions:*", count=1000))
    if keys:
        client().delete(*keys)
