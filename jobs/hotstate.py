"""Hot job state in Redis: live progress, cancel flags, and each job's card.

The database row is the truth for status; Redis carries what changes too often to write
to the row (progress, several times a second), what a worker must see between two
chunks without a database query (the cancel flag), and a copy of the row's fields that
the status answer needs (the card), so that polling a job reads Redis, not the database.
Everything here expires on its own.
"""

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from django.conf import settings

from infra.redis import state_async_client, state_client, state_script
from jobs.parts import StoredPart

if TYPE_CHECKING:
    from jobs.models import DownloadJob


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
    pipe = state_client().pipeline(transaction=False)
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


def chunk_report(
    *, job_id: str, progress: HotProgress | None, publish: tuple[str, bytes] | None = None
) -> bool:
    """What a running attempt tells hot state after a chunk, in one round trip: whether
    its job was cancelled (returned), and, if not, its progress and the event that says
    so (`publish`: a channel and a message, when the channel layer's subscribers listen on
    this server). A cancelled job's attempt writes and announces nothing more."""
    fields: list[Any] = ["", "", "", ""] if progress is None else list(_progress_fields(progress).values())
    channel, message = publish if publish is not None else ("", b"")
    cancelled = state_script(_CHUNK_REPORT)(
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
    pipe = state_client().pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hgetall(_progress_key(job_id))
    found = {}
    for job_id, raw in zip(job_ids, pipe.execute(), strict=True):
        if (hot := _decode(raw)) is not None:
            found[job_id] = hot
    return found


def progress_clear(job_id: str) -> None:
    state_client().delete(_progress_key(job_id))


def cancel_flag_set(job_id: str) -> None:
    state_client().set(_cancel_key(job_id), 1, ex=settings.HOT_STATE_TTL_S)


def cancel_flag_is_set(job_id: str) -> bool:
    return bool(state_client().exists(_cancel_key(job_id)))


def cancel_flag_clear(job_id: str) -> None:
    state_client().delete(_cancel_key(job_id))


def first_progress_claim(job_id: str, *, ttl_s: int = 7 * 24 * 3600) -> bool:
    """True for the first attempt of the job to report bytes, False for every later one."""
    return bool(state_client().set(f"first-progress:{job_id}", 1, nx=True, ex=ttl_s))


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


def card_write(card: JobCard) -> bool:
    """Stores `card` unless a card of the same or a newer version is there; True if stored."""
    written = state_script(_CARD_WRITE)(
        keys=[_card_key(card.job_id)], args=[card.version, card.encode(), settings.JOB_CARD_TTL_S]
    )
    return bool(written)


def card_decode(raw: bytes | None) -> JobCard | None:
    return JobCard.decode(raw) if raw else None


async def card_read_async(job_id: str) -> JobCard | None:
    """The job's card, read on the running event loop (`state_async_client`)."""
    raw = await state_async_client().hget(_card_key(job_id), "card")
    return card_decode(cast("bytes | None", raw))  # the client does not decode answers


def card_forget(job_id: str) -> None:
    """Drops the card, before a write of the row commits: until the new card is written,
    a reader goes to the row."""
    state_client().delete(_card_key(job_id))


def card_read(job_id: str) -> tuple[JobCard | None, HotProgress | None]:
    """The job's card and its live progress, in one round trip."""
    pipe = state_client().pipeline(transaction=False)
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
    written = state_script(_RUN_WRITE)(
        keys=[_run_key(job_id)], args=[attempt, f"{time.time():.3f}", settings.HOT_STATE_TTL_S, encoded]
    )
    return bool(written)


def run_fence(job_id: str, *, attempt: int, stale_before: float | None = None) -> bool:
    """Fences the attempt off, keeping its parts: its next beat is refused. With
    `stale_before`, only if it last beat before then (the reaper's check and fence in one
    step). True if this call fenced it off."""
    stale = "" if stale_before is None else f"{stale_before:.3f}"
    return bool(state_script(_RUN_FENCE)(keys=[_run_key(job_id)], args=[attempt, stale]))


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
    raw: dict[bytes, bytes] = state_client().hgetall(_run_key(job_id))  # type: ignore[assignment]
    return _run_decode(raw)


def run_read_many(job_ids: list[str]) -> dict[str, RunState]:
    """The run state of each job that has one, in one round trip (the reaper's scan reads
    only the attempt and the beat)."""
    if not job_ids:
        return {}
    pipe = state_client().pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(_run_key(job_id), "attempt", "live", "beat")
    found = {}
    for job_id, (attempt, live, beat) in zip(job_ids, pipe.execute(), strict=True):
        if attempt is not None:
            found[job_id] = RunState(int(attempt), live == b"1", float(beat or 0), ())
    return found


def run_forget(job_id: str) -> None:
    """The job ended (completed, failed, cancelled) or starts over: no attempt resumes."""
    state_client().delete(_run_key(job_id))
