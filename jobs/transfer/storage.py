"""The downloads storage and the two ways of writing a file into it as it streams in.

Production uses django-storages' S3Storage (AWS S3, MinIO, R2): a file is written as an
S3 multipart upload and handed out as a presigned GET URL. The embedded default uses
`SignedFileSystemStorage`: a file is written to a temporary name and renamed into place,
and handed out as a signed URL with an expiry, served by `jobs.web.files.file_download`. Both
answer `url(name, parameters=..., expire=...)` the same way, so callers never branch.

boto3 and botocore (django-storages' S3 backend) are imported only once the downloads
storage is S3: a process on local storage never loads them, and a Celery pool child loads
them with its first job rather than holding them from the start (see bench/README.md).
"""

import base64
import errno
import hashlib
import io
import os
import tempfile
import threading
import time
import weakref
import zlib
from collections.abc import Iterator
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, unquote

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.core import signing
from django.core.files.storage import FileSystemStorage, Storage, storages
from django.urls import reverse
from storages.utils import safe_join

from jobs.errors import ErrorCode, JobError
from jobs.transfer.deadline import Deadline
from jobs.transfer.files import safe_content_type

if TYPE_CHECKING:
    from storages.backends.s3 import S3Storage

# Kept as first named: links signed before the module moved stay valid.
_URL_SALT = "jobs.storage.download-url"
# Where a signed link's view sends the bytes to be served from (X-Accel-Redirect): an
# internal nginx location aliased to the storage's directory, or the web process's loop
# (edge/file_sender.py). Never a path a client can ask for.
INTERNAL_FILES_PREFIX = "/internal/files/"


_storage_lock = threading.Lock()


def downloads_storage() -> Storage:
    """The downloads storage, one per process. Asked for under a lock: Django's storage
    handler has none, and the hundreds of jobs a worker starts at once would each make one
    (and each its own boto3 session: tens of ms of CPU apiece)."""
    with _storage_lock:
        return storages["downloads"]


def s3_storage(storage: Storage) -> "S3Storage | None":
    """`storage` if it is django-storages' S3Storage, else None. Local storage is told
    apart first, without importing the S3 backend (and boto3) at all."""
    if isinstance(storage, FileSystemStorage):
        return None
    from storages.backends.s3 import S3Storage

    return storage if isinstance(storage, S3Storage) else None


def s3_object_key(storage: "S3Storage", name: str) -> str:
    """The bucket key of a storage name, as S3Storage makes it (under its `location`; a
    name that climbs out of it is refused)."""
    return str(safe_join(storage.location, name))


class SignedFileSystemStorage(FileSystemStorage):
    """Local files whose URLs are signed and expire, like S3 presigned URLs."""

    def url(
        self,
        name: str | None,
        parameters: dict[str, str] | None = None,
        expire: int | None = None,
    ) -> str:
        if name is None:
            raise ValueError("name is required")
        parameters = parameters or {}
        token = signing.dumps(
            {
                "key": name,
                "exp": int(time.time()) + (expire if expire is not None else 900),
                "cd": parameters.get("ResponseContentDisposition", ""),
                "ct": parameters.get("ResponseContentType", ""),
            },
            salt=_URL_SALT,
            compress=True,
        )
        return reverse("file-download", kwargs={"token": token})

    def internal_url(self, name: str) -> str:
        """The X-Accel-Redirect target that serves the file `name`."""
        return INTERNAL_FILES_PREFIX + quote(name)

    def internal_path(self, url: str) -> Path | None:
        """The file an `internal_url` names, or None if `url` is not one or its path
        leaves the storage's directory (names come from signed links: checked anyway)."""
        if not url.startswith(INTERNAL_FILES_PREFIX):
            return None
        root = Path(self.location).resolve()
        path = (root / unquote(url.removeprefix(INTERNAL_FILES_PREFIX))).resolve()
        return path if path.is_relative_to(root) and path != root else None

    @staticmethod
    def link_claims(token: str) -> dict[str, Any] | None:
        """What a signed link says (key, content disposition and type), or None if it is
        forged or expired."""
        try:
            claims: dict[str, Any] = signing.loads(token, salt=_URL_SALT)
        except signing.BadSignature:
            return None
        return claims if claims["exp"] >= time.time() else None


class StagedWrite(Protocol):
    """A file being written into storage; visible under its key only after `commit`.

    The file is stored in parts. `parts` lists those stored so far as JSON-able dicts
    (`n`, `size`; on S3 also `etag`, and `crc32` when the upload declared CRC32), always
    parts 1 to n with nothing missing: recorded by the job, they let a later attempt
    `resume` the same upload after its last part instead of starting again."""

    upload_id: str
    parts: list[dict[str, Any]]

    def write(self, data: bytes) -> bool:
        """Buffers `data`; returns True when `parts` grew."""
        ...

    def settle(self) -> bool:
        """Waits for the parts being stored, so none is left uploading (at the end of the
        file, or after a failure); returns True when `parts` grew since `write` or
        `settle` last said so."""
        ...

    def commit(self) -> None: ...
    def abort(self) -> None: ...

    def release(self) -> None:
        """Frees what the write holds and has not stored (the part being filled, an open
        file), after a failure: the upload itself stays, for a later attempt to resume."""
        ...


def parts_size(parts: list[dict[str, Any]]) -> int:
    return sum(int(part["size"]) for part in parts)


# The checksum an S3 upload declares when it is created, as boto3's own `upload_fileobj`
# does: each part is sent with its CRC32 (which S3 checks), the commit names each part's,
# and S3 combines them into the object's checksum instead of reading the object again.
PART_CHECKSUM = "CRC32"


def crc32_base64(*chunks: bytes) -> str:
    """The CRC32 of a part (of its chunks, in order) as S3 writes it (`ChecksumCRC32`):
    4 bytes, big-endian, base64."""
    crc = 0
    for chunk in chunks:
        crc = zlib.crc32(chunk, crc)
    return base64.b64encode(crc.to_bytes(4, "big")).decode("ascii")


def _resumed_checksum(
    recorded: list[dict[str, Any]], stored: dict[int, dict[str, Any]], declared: str
) -> tuple[str, list[dict[str, Any]]] | None:
    """The checksum algorithm of an upload being resumed ("CRC32" or "" for none) and its
    recorded parts, each with its `crc32` if the upload has one; None if the records and
    what S3 lists disagree, or the commit could not name every part's checksum.

    `declared` is the algorithm S3 lists for the upload ("" if it lists none: an upload of
    the service before it declared one, or a store that does not say, as moto)."""
    declared = declared.upper()
    if declared not in ("", PART_CHECKSUM) or not recorded:
        return None
    with_crc32 = sum(1 for part in recorded if part.get("crc32"))
    if with_crc32 == len(recorded):
        # Recorded by this version: S3's own figure, where it lists one, must be the same.
        listed = (stored.get(part["n"], {}).get("ChecksumCRC32") for part in recorded)
        if any(value not in (None, part["crc32"]) for value, part in zip(listed, recorded, strict=True)):
            return None
        return PART_CHECKSUM, recorded
    if with_crc32:
        return None  # some parts with a checksum and some without: not a record we write
    if not declared:
        return "", recorded  # an upload that declared no checksum: none is named at the commit
    # Declared, yet recorded without: only S3's listing can name them.
    filled = []
    for part in recorded:
        value = stored.get(part["n"], {}).get("ChecksumCRC32")
        if not value:
            return None
        filled.append({**part, "crc32": value})
    return PART_CHECKSUM, filled


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
            with _local_errors():
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
# the threads that upload them (made on first use, and anew in a forked child).
_shared_lock = threading.Lock()
_budget: PartBudget | None = None
_upload_pool: ThreadPoolExecutor | None = None
_s3_sessions: "weakref.WeakKeyDictionary[Storage, Any]" = weakref.WeakKeyDictionary()
_thread_clients = threading.local()


def part_budget() -> PartBudget:
    global _budget
    with _shared_lock:
        if _budget is None:
            _budget = PartBudget(
                memory_bytes=settings.STAGING_MEMORY_BYTES, spool_bytes=settings.STAGING_SPOOL_BYTES
            )
        return _budget


def _upload_threads() -> ThreadPoolExecutor:
    global _upload_pool
    with _shared_lock:
        if _upload_pool is None:
            _upload_pool = ThreadPoolExecutor(settings.STAGING_UPLOAD_THREADS, thread_name_prefix="s3-part")
        return _upload_pool


def s3_client(storage: "S3Storage") -> Any:
    """This thread's boto3 client of the storage's bucket, made from the process's one boto3
    session of it: its service models are loaded once, and a client then costs about 8 ms
    and 350 KiB, where django-storages makes a session and a resource in every thread (tens
    of ms and a few MiB each, times hundreds of job threads). A client per thread rather
    than one for all: botocore's retry quota is a client's, and each job keeps its retries
    to ride out a short outage of the store (AWS_S3_MAX_ATTEMPTS) however many others fail
    at once. A job's part uploads use its client (boto3 clients are thread-safe)."""
    clients = getattr(_thread_clients, "by_storage", None)
    if clients is None:
        clients = _thread_clients.by_storage = weakref.WeakKeyDictionary()
    client = clients.get(storage)
    if client is None:
        with _shared_lock:  # a boto3 session makes one client at a time
            session = _s3_sessions.get(storage)
            if session is None:
                session = _s3_sessions[storage] = storage._create_session()
            client = session.client(
                "s3",
                region_name=storage.region_name,
                use_ssl=storage.use_ssl,
                endpoint_url=storage.endpoint_url,
                config=storage.client_config,
                verify=storage.verify,
            )
        clients[storage] = client
    return client


def _forget_shared_after_fork() -> None:
    """A forked child (Celery's prefork pool) has none of its parent's threads, and must not
    share its parent's connections."""
    global _shared_lock, _storage_lock, _budget, _upload_pool, _thread_clients
    _shared_lock = threading.Lock()
    _storage_lock = threading.Lock()
    _budget = None
    _upload_pool = None
    _s3_sessions.clear()
    _thread_clients = threading.local()


os.register_at_fork(after_in_child=_forget_shared_after_fork)


class S3MultipartWrite:
    """Buffers up to one part (S3's 5 MiB minimum or more) and hands it to the process's
    upload threads, which upload it through this job's client (`s3_client`) while the next
    part is read: at most `parts_in_flight` parts of this write are handed over and not yet
    stored at once, and `write` waits for
    one of them to finish before it hands over another. The parts' bytes come from the
    process's `PartBudget`, so memory stays bounded however many jobs run. `parts` only
    lists a part once it and every part before it are stored.

    A new upload declares a CRC32 checksum (PART_CHECKSUM) unless the client computes
    checksums only when required (`request_checksum_calculation`, e.g.
    AWS_REQUEST_CHECKSUM_CALCULATION=when_required for a store that knows none): each
    part's CRC32 is computed by botocore on the part's upload thread and sent with it; S3
    answers with it, and the part is recorded with it for the commit to name."""

    def __init__(
        self,
        storage: "S3Storage",
        key: str,
        *,
        content_type: str,
        part_bytes: int,
        parts_in_flight: int = 1,
        upload_id: str = "",
        parts: list[dict[str, Any]] | None = None,
        checksum_algorithm: str | None = None,
        deadline: Deadline | None = None,
        bytes_expected: int | None = None,
    ) -> None:
        """A new upload of `key`, or with `upload_id` that upload after `parts`, whose
        `checksum_algorithm` ("CRC32" or "") `resume` found. `bytes_expected`, when known,
        is what this write will be given (its parts reserve no more room than that)."""
        self.client: Any = s3_client(storage)
        self.bucket = storage.bucket_name
        self.key = s3_object_key(storage, key)
        self.part_bytes = max(part_bytes, 5 * 1024 * 1024)
        self.deadline = deadline
        self.bytes_expected = bytes_expected
        self._handed_over = 0  # bytes of the parts handed to the upload threads
        self.budget = part_budget()
        self.buffer: PartBuffer | None = None  # the part being filled
        self.parts: list[dict[str, Any]] = list(parts or [])
        self.parts_in_flight = max(1, parts_in_flight)
        self.in_flight = 0  # parts handed over and not yet finished
        self._next_number = len(self.parts) + 1
        self._reported = len(self.parts)  # parts that write or settle have said are stored
        self._uploading: dict[int, Future[dict[str, Any]]] = {}
        self._slots = threading.Semaphore(self.parts_in_flight)
        self._lock = threading.Lock()
        if upload_id:
            self.upload_id = upload_id
            self.checksum_algorithm = checksum_algorithm or ""
            return
        if checksum_algorithm is None:
            computed = self.client.meta.config.request_checksum_calculation
            checksum_algorithm = PART_CHECKSUM if computed == "when_supported" else ""
        self.checksum_algorithm = checksum_algorithm
        declared = {"ChecksumAlgorithm": checksum_algorithm} if checksum_algorithm else {}
        with _storage_errors():
            created = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, ContentType=safe_content_type(content_type), **declared
            )
        self.upload_id = created["UploadId"]

    def _buffer_new(self) -> PartBuffer:
        """A new part, with its room reserved: a whole part, or what is left of the file when
        its size is known and smaller."""
        size = self.part_bytes
        if self.bytes_expected is not None:
            size = max(0, min(size, self.bytes_expected - self._handed_over))
        spool_dir = settings.STAGING_SPOOL_DIR
        return PartBuffer(self.budget, reserve=size, spool_dir=spool_dir, deadline=self.deadline)

    @property
    def buffered(self) -> int:
        return self.buffer.size if self.buffer is not None else 0

    @classmethod
    def resume(
        cls,
        storage: "S3Storage",
        key: str,
        *,
        upload_id: str,
        parts: list[dict[str, Any]],
        part_bytes: int,
        parts_in_flight: int = 1,
        deadline: Deadline | None = None,
        bytes_expected: int | None = None,
    ) -> "S3MultipartWrite | None":
        """The upload again, after `parts`, if S3 still holds each of them as recorded;
        None if the upload is gone, a part differs (a late writer replaced it), or its
        parts' checksums cannot be named at the commit (see `_resumed_checksum`): the
        caller then aborts it and starts over. Parts recorded without a checksum (before
        uploads declared one) resume as they were made, without."""
        client = s3_client(storage)
        stored: dict[int, dict[str, Any]] = {}
        declared = ""
        paginator = client.get_paginator("list_parts")
        try:
            pages = paginator.paginate(
                Bucket=storage.bucket_name, Key=s3_object_key(storage, key), UploadId=upload_id
            )
            for page in pages:
                declared = declared or page.get("ChecksumAlgorithm") or ""
                stored |= {part["PartNumber"]: part for part in page.get("Parts", [])}
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
                return None
            raise JobError(ErrorCode.STORAGE_ERROR, "Storage refused the upload") from exc
        except BotoCoreError as exc:
            raise JobError(ErrorCode.STORAGE_ERROR, "Storage refused the upload") from exc
        if any(stored.get(part["n"], {}).get("ETag") != part["etag"] for part in parts):
            return None
        resumed = _resumed_checksum(parts, stored, declared)
        if resumed is None:
            return None
        checksum_algorithm, parts = resumed
        return cls(
            storage,
            key,
            content_type="",
            part_bytes=part_bytes,
            parts_in_flight=parts_in_flight,
            upload_id=upload_id,
            parts=parts,
            checksum_algorithm=checksum_algorithm,
            deadline=deadline,
            bytes_expected=bytes_expected,
        )

    def _slot_take(self) -> None:
        """Waits while `parts_in_flight` parts of this write are being uploaded, at most
        until the deadline."""
        while not self._slots.acquire(timeout=1.0):
            if self.deadline is not None and self.deadline.passed():
                raise self.deadline.exceeded(origin_fault=False)

    def _hand_over(self) -> None:
        """Hands the part being filled to the upload threads; first waits, while
        `parts_in_flight` parts are being uploaded, for one of them to finish."""
        self._slot_take()
        try:
            self._raise_failed()
            buffer = self.buffer or self._buffer_new()
            self.buffer = None
            self._handed_over += buffer.size
            number = self._next_number
            with self._lock:
                self.in_flight += 1
            try:
                future = _upload_threads().submit(self._upload, number, buffer)
            except BaseException:
                with self._lock:
                    self.in_flight -= 1
                buffer.release()
                raise
            # A part dropped before its upload started (an abort) gives its bytes back.
            future.add_done_callback(lambda done: self._dropped(done, buffer))
            self._uploading[number] = future
            self._next_number += 1
        except BaseException:
            self._slots.release()
            raise

    def _dropped(self, future: "Future[dict[str, Any]]", buffer: PartBuffer) -> None:
        if future.cancelled():
            with self._lock:
                self.in_flight -= 1
            buffer.release()
            self._slots.release()

    def _upload(self, number: int, buffer: PartBuffer) -> dict[str, Any]:
        """One part, on an upload thread."""
        try:
            # As boto3's upload_fileobj: botocore computes the part's CRC32 (in a header over
            # http, in a trailer of the streamed body over https, then unsigned), S3 checks
            # it and answers with it. Given by us, it would make botocore sign the body
            # with SHA-256 even over https.
            checksum = {"ChecksumAlgorithm": PART_CHECKSUM} if self.checksum_algorithm else {}
            with _storage_errors():
                uploaded = self.client.upload_part(
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=self.upload_id,
                    PartNumber=number,
                    # A file, not bytes: botocore would copy bytes behind its headers to
                    # send them in one piece.
                    Body=buffer.body(),
                    **checksum,
                )
            part = {"n": number, "etag": uploaded["ETag"], "size": buffer.size}
            if self.checksum_algorithm:
                # A store that does not answer with it gets the one we compute.
                part["crc32"] = uploaded.get("ChecksumCRC32") or buffer.crc32()
            return part
        finally:
            buffer.release()
            with self._lock:
                self.in_flight -= 1
            self._slots.release()

    def _stored_prefix_grow(self) -> bool:
        """Moves the parts stored, in order with no gap, into `parts`; a part not stored
        (still uploading, failed) stops it there."""
        grown = False
        while (future := self._uploading.get(len(self.parts) + 1)) is not None and future.done():
            if future.cancelled() or future.exception() is not None:
                break
            self.parts.append(future.result())
            del self._uploading[len(self.parts)]
            grown = True
        return grown

    def _raise_failed(self) -> None:
        """A part that failed fails the write (STORAGE_ERROR) as soon as it is known."""
        for future in list(self._uploading.values()):
            if future.done() and not future.cancelled() and future.exception() is not None:
                future.result()

    def _wait_all(self) -> None:
        futures.wait(list(self._uploading.values()))

    def write(self, data: bytes) -> bool:
        if data:
            if self.buffer is None:
                self.buffer = self._buffer_new()
            self.buffer.append(bytes(data))  # no copy of bytes
        if self.buffered >= self.part_bytes:
            self._hand_over()
        self._stored_prefix_grow()
        self._raise_failed()
        return self._report()

    def settle(self) -> bool:
        self._wait_all()
        self._stored_prefix_grow()
        return self._report()

    def _report(self) -> bool:
        grown = len(self.parts) > self._reported
        self._reported = len(self.parts)
        return grown

    def commit(self) -> None:
        if self.buffered or self._next_number == 1:
            self._hand_over()
        self._wait_all()
        self._stored_prefix_grow()
        self._raise_failed()
        with _storage_errors():
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": [self._completed_part(part) for part in self.parts]},
            )

    def _completed_part(self, part: dict[str, Any]) -> dict[str, Any]:
        completed = {"PartNumber": part["n"], "ETag": part["etag"]}
        if self.checksum_algorithm:
            completed["ChecksumCRC32"] = part["crc32"]
        return completed

    def release(self) -> None:
        if self.buffer is not None:
            self.buffer.release()
            self.buffer = None

    def abort(self) -> None:
        # No part may land after the abort: those not started are dropped, the others
        # waited for.
        for future in self._uploading.values():
            future.cancel()
        self._wait_all()
        self.release()
        s3_multipart_abort(self.client, self.bucket, self.key, self.upload_id)


def s3_multipart_abort(client: Any, bucket: str, key: str, upload_id: str) -> None:
    try:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
            raise


class LocalWrite:
    """Writes `<key>.<upload_id>.part` beside the final name and renames it into place.
    A part is a stretch of `part_bytes` made durable (flushed and fsynced): a resumed
    attempt cuts the file back to the last recorded part and appends from there."""

    def __init__(
        self,
        storage: FileSystemStorage,
        key: str,
        *,
        part_bytes: int,
        upload_id: str = "",
        parts: list[dict[str, Any]] | None = None,
    ) -> None:
        self.final_path = Path(storage.path(key))
        self.final_path.parent.mkdir(parents=True, exist_ok=True)
        self.part_bytes = part_bytes
        self.parts: list[dict[str, Any]] = list(parts or [])
        self.upload_id = upload_id or os.urandom(8).hex()
        self.part_path = _local_part_path(self.final_path, self.upload_id)
        # A new upload makes its file; a resumed one cuts it back to the recorded parts.
        self.handle = self.part_path.open("r+b" if upload_id else "w+b")
        self.handle.truncate(parts_size(self.parts))
        self.handle.seek(0, os.SEEK_END)
        self.unstored = 0

    @classmethod
    def resume(
        cls,
        storage: FileSystemStorage,
        key: str,
        *,
        upload_id: str,
        parts: list[dict[str, Any]],
        part_bytes: int,
    ) -> "LocalWrite | None":
        part_path = _local_part_path(Path(storage.path(key)), upload_id)
        try:
            if part_path.stat().st_size < parts_size(parts):
                return None
        except FileNotFoundError:
            return None
        return cls(storage, key, part_bytes=part_bytes, upload_id=upload_id, parts=parts)

    def write(self, data: bytes) -> bool:
        try:
            with _local_errors():
                self.handle.write(data)
                self.unstored += len(data)
                if self.unstored < self.part_bytes:
                    return False
                self.handle.flush()
                os.fsync(self.handle.fileno())
        except JobError:
            # The attempt ends here: its file is closed now, not when the handle is
            # collected. On a full disk an open file keeps its space even once removed.
            with suppress(OSError):
                self.handle.close()
            raise
        self.parts.append({"n": len(self.parts) + 1, "size": self.unstored})
        self.unstored = 0
        return True

    def settle(self) -> bool:
        return False  # each part is stored by the `write` that fills it

    def commit(self) -> None:
        with _local_errors():
            self.handle.close()  # writes out the last, partial part
            os.replace(self.part_path, self.final_path)

    def release(self) -> None:
        with suppress(OSError):
            self.handle.close()  # what it wrote stays, cut back to its parts by a resume

    def abort(self) -> None:
        self.handle.close()
        self.part_path.unlink(missing_ok=True)


def _local_part_path(final_path: Path, upload_id: str) -> Path:
    return final_path.with_name(f"{final_path.name}.{upload_id}.part")


@contextmanager
def _local_errors() -> Iterator[None]:
    """Turns a local write's OSError into STORAGE_FULL (not retried: another attempt would
    meet the same full disk) or STORAGE_ERROR (retryable)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise JobError(ErrorCode.STORAGE_FULL, "The storage is full") from exc
        raise JobError(ErrorCode.STORAGE_ERROR, "Could not write to storage") from exc


@contextmanager
def _storage_errors() -> Iterator[None]:
    """Turns boto errors into STORAGE_ERROR (retryable) without their details."""
    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise JobError(ErrorCode.STORAGE_ERROR, "Storage refused the upload") from exc


def staged_write_open(
    key: str,
    *,
    content_type: str,
    part_bytes: int,
    parts_in_flight: int | None = None,
    deadline: Deadline | None = None,
    bytes_expected: int | None = None,
) -> StagedWrite:
    """A new upload of `key`; on S3 `parts_in_flight` (STAGING_PARTS_IN_FLIGHT) parts are
    uploaded at once, a wait for room ends at the `deadline`, and `bytes_expected` (the
    file's size, when the origin said it) bounds the room its parts reserve."""
    storage = downloads_storage()
    if (s3 := s3_storage(storage)) is not None:
        return S3MultipartWrite(
            s3,
            key,
            content_type=content_type,
            part_bytes=part_bytes,
            parts_in_flight=parts_in_flight or settings.STAGING_PARTS_IN_FLIGHT,
            deadline=deadline,
            bytes_expected=bytes_expected,
        )
    if isinstance(storage, FileSystemStorage):
        return LocalWrite(storage, key, part_bytes=part_bytes)
    raise TypeError(f"Unsupported downloads storage {type(storage).__name__}")


def staged_write_resume(
    key: str,
    *,
    upload_id: str,
    parts: list[dict[str, Any]],
    part_bytes: int,
    parts_in_flight: int | None = None,
    deadline: Deadline | None = None,
    bytes_expected: int | None = None,
) -> StagedWrite | None:
    """The unfinished upload `upload_id` of `key`, to go on after `parts`; None if it
    cannot be resumed (gone, or not as recorded)."""
    storage = downloads_storage()
    if (s3 := s3_storage(storage)) is not None:
        return S3MultipartWrite.resume(
            s3,
            key,
            upload_id=upload_id,
            parts=parts,
            part_bytes=part_bytes,
            parts_in_flight=parts_in_flight or settings.STAGING_PARTS_IN_FLIGHT,
            deadline=deadline,
            bytes_expected=bytes_expected,
        )
    if isinstance(storage, FileSystemStorage):
        return LocalWrite.resume(storage, key, upload_id=upload_id, parts=parts, part_bytes=part_bytes)
    raise TypeError(f"Unsupported downloads storage {type(storage).__name__}")


def stored_file_sha256(key: str, *, chunk_bytes: int = 1024 * 1024) -> str:
    """Reads a stored file back to hash it: for a file whose first parts an earlier
    attempt wrote, whose hash state died with that attempt."""
    digest = hashlib.sha256()
    storage = downloads_storage()
    with _storage_errors():
        if (s3 := s3_storage(storage)) is not None:
            body = s3_client(s3).get_object(Bucket=s3.bucket_name, Key=s3_object_key(s3, key))["Body"]
            for chunk in body.iter_chunks(chunk_bytes):
                digest.update(chunk)
        else:
            with storage.open(key, "rb") as handle:
                while chunk := handle.read(chunk_bytes):
                    digest.update(chunk)
    return digest.hexdigest()


def stored_file_size(key: str) -> int | None:
    """The size of the stored file `key`, or None if there is none."""
    storage = downloads_storage()
    if (s3 := s3_storage(storage)) is not None:
        try:
            head = s3_client(s3).head_object(Bucket=s3.bucket_name, Key=s3_object_key(s3, key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(head["ContentLength"])
    return storage.size(key) if storage.exists(key) else None


def stored_file_delete(key: str, *, upload_id: str = "") -> None:
    """Deletes a stored file and aborts its unfinished upload, if any. Idempotent. A store
    that cannot be reached is a STORAGE_ERROR (retryable)."""
    storage = downloads_storage()
    s3 = s3_storage(storage)
    if s3 is not None:
        with _storage_errors():
            if upload_id:
                s3_multipart_abort(s3_client(s3), s3.bucket_name, s3_object_key(s3, key), upload_id)
            if key:
                s3_client(s3).delete_object(Bucket=s3.bucket_name, Key=s3_object_key(s3, key))
        return
    if upload_id and isinstance(storage, FileSystemStorage):
        _local_part_path(Path(storage.path(key)), upload_id).unlink(missing_ok=True)
    if key:
        storage.delete(key)
