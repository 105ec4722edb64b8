"""The memory an S3 upload's parts take, bounded for the whole worker process, and the
threads that upload them.

A part of an S3 multipart upload is filled chunk by chunk and uploaded while the next is
read. The parts of all the jobs a worker process runs share one budget (`part_budget`):
bytes in memory, then in temporary files (the spool), so that memory stays bounded however
many jobs run and however large their files.
"""

import io
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import IO

from django.conf import settings

from jobs.transfer.deadline import Deadline
from jobs.transfer.local_files import local_write_errors
from jobs.transfer.s3_checksums import crc32_base64


class PartBody(io.RawIOBase):
    """The chunks of one part, read as one file without being joined into one buffer:
    botocore reads it in blocks (to sign it over plain http, and to send it), and seeks
    back to its start to read it again (after signing, or to retry)."""

    def __init__(self, chunks: list[bytes]) -> None:
        super().__init__()
        self.chunks = chunks
        self.size = sum(len(chunk) for chunk in chunks)
        self._pos = 0
        self._index = 0  # the chunk holding `_pos`
        self._offset = 0  # `_pos` within that chunk

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        self._pos = min(max(0, base + offset), self.size)
        self._index, self._offset = 0, self._pos
        while self._index < len(self.chunks) and self._offset >= len(self.chunks[self._index]):
            self._offset -= len(self.chunks[self._index])
            self._index += 1
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        """`size` bytes, fewer only at the end (all that is left if negative). A read of one
        whole chunk hands out that chunk itself."""
        if size is None or size < 0:
            size = self.size - self._pos
        pieces: list[bytes] = []
        while size > 0 and self._index < len(self.chunks):
            chunk = self.chunks[self._index]
            end = min(len(chunk), self._offset + size)
            pieces.append(chunk if (self._offset, end) == (0, len(chunk)) else chunk[self._offset : end])
            size -= end - self._offset
            self._pos += end - self._offset
            self._index, self._offset = (self._index + 1, 0) if end == len(chunk) else (self._index, end)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


class PartBudget:
    """The bytes of S3 parts that a worker process holds at once, shared by all its jobs:
    up to `memory_bytes` in memory, then up to `spool_bytes` in temporary files (none with
    0). A part reserves its room whole before its first byte (`reserve`), so a part once
    begun always has room to finish, and jobs never hold partial parts that wait on each
    other; a part that finds no room waits for some (until its deadline) holding nothing. A
    part larger than the whole of either is let in once that is empty."""

    def __init__(self, *, memory_bytes: int, spool_bytes: int) -> None:
        self.memory_bytes = memory_bytes
        self.spool_bytes = spool_bytes
        self.memory_used = 0
        self.spool_used = 0
        self._changed = threading.Condition()

    def reserve(self, size: int, *, deadline: Deadline | None) -> str:
        """Reserves `size` bytes for one part: "memory" if memory has room, else "spool",
        waiting while neither has; DOWNLOAD_TIMEOUT at the deadline (not the origin's
        fault)."""
        with self._changed:
            while (place := self._room(size)) is None:
                remaining_s = None if deadline is None else deadline.remaining_s()
                if deadline is not None and remaining_s is not None and remaining_s <= 0:
                    raise deadline.exceeded(origin_fault=False)
                self._changed.wait(remaining_s)
            if place == "memory":
                self.memory_used += size
            else:
                self.spool_used += size
            return place

    def give(self, place: str, size: int) -> None:
        with self._changed:
            if place == "memory":
                self.memory_used -= size
            else:
                self.spool_used -= size
            self._changed.notify_all()

    def _room(self, size: int) -> str | None:
        if self.memory_used + size <= self.memory_bytes or self.memory_used == 0 == self.spool_bytes:
            return "memory"
        if self.spool_bytes and (self.spool_used + size <= self.spool_bytes or self.spool_used == 0):
            return "spool"
        return None


class PartBuffer:
    """One S3 part, filled chunk by chunk and then uploaded, with the room it reserved in
    the process's budget: its chunks in memory, or a temporary file in the spool. Its room
    goes back to the budget once it is uploaded or dropped (`release`)."""

    def __init__(
        self, budget: PartBudget, *, reserve: int, spool_dir: str | None, deadline: Deadline | None
    ) -> None:
        self.budget = budget
        self.reserved = 0
        self.chunks: list[bytes] = []
        self.file: IO[bytes] | None = None
        self.size = 0
        self.place = budget.reserve(reserve, deadline=deadline)
        self.reserved = reserve
        if self.place == "spool":
            self.file = tempfile.TemporaryFile(prefix="part-", dir=spool_dir)  # noqa: SIM115 (closed by release)

    def append(self, data: bytes) -> None:
        if self.file is None:
            self.chunks.append(data)
        else:
            with local_write_errors():
                self.file.write(data)
        self.size += len(data)

    def body(self) -> io.RawIOBase | IO[bytes]:
        """The part as a seekable file, from its start, for botocore to read (and read again
        to sign or retry it)."""
        if self.file is None:
            return PartBody(self.chunks)
        self.file.flush()
        self.file.seek(0)
        return self.file

    def crc32(self) -> str:
        body = self.body()
        return crc32_base64(*iter(lambda: body.read(1024 * 1024), b""))

    def __del__(self) -> None:
        # A part dropped without its release (an error on a path no one foresaw) must not
        # keep its room in the budget for the life of the process.
        self.release()

    def release(self) -> None:
        """Frees the part's bytes and gives its room back to the budget. Idempotent."""
        self.chunks = []
        if self.file is not None:
            self.file.close()
            self.file = None
        reserved, self.reserved = self.reserved, 0
        if reserved:
            self.budget.give(self.place, reserved)


# What a worker process shares between its jobs' S3 uploads: the budget for their parts and
# the threads that upload them (made on first use, and anew in a forked child, which has
# none of its parent's threads and holds none of its parts).
_shared_lock = threading.Lock()
_budget: PartBudget | None = None
_upload_pool: ThreadPoolExecutor | None = None


def part_budget() -> PartBudget:
    """The process's budget for its jobs' parts (STAGING_MEMORY_BYTES, STAGING_SPOOL_BYTES)."""
    global _budget
    with _shared_lock:
        if _budget is None:
            _budget = PartBudget(
                memory_bytes=settings.STAGING_MEMORY_BYTES, spool_bytes=settings.STAGING_SPOOL_BYTES
            )
        return _budget


def upload_threads() -> ThreadPoolExecutor:
    """The process's STAGING_UPLOAD_THREADS threads that upload its jobs' parts."""
    global _upload_pool
    with _shared_lock:
        if _upload_pool is None:
            _upload_pool = ThreadPoolExecutor(settings.STAGING_UPLOAD_THREADS, thread_name_prefix="s3-part")
        return _upload_pool


def _forget_shared_after_fork() -> None:
    global _shared_lock, _budget, _upload_pool
    _shared_lock = threading.Lock()
    _budget = None
    _upload_pool = None


os.register_at_fork(after_in_child=_forget_shared_after_fork)
