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
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.core import signing
from django.core.files.storage import FileSystemStorage, Storage, storages
from django.urls import reverse
from storages.utils import safe_join

from jobs.errors import ErrorCode, JobError
from jobs.transfer.files import safe_content_type

if TYPE_CHECKING:
    from storages.backends.s3 import S3Storage

# Kept as first named: links signed before the module moved stay valid.
_URL_SALT = "jobs.storage.download-url"


def downloads_storage() -> Storage:
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


class S3MultipartWrite:
    """Buffers up to one part (S3's 5 MiB minimum or more) and hands it to a few threads
    that upload it while the next part is read: at most `parts_in_flight` parts are being
    uploaded at once, and `write` waits for one of them to finish before it hands over
    another, so memory per job stays at about `parts_in_flight` + 1 parts whatever the
    file's size. `parts` only lists a part once it and every part before it are stored.

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
    ) -> None:
        """A new upload of `key`, or with `upload_id` that upload after `parts`, whose
        `checksum_algorithm` ("CRC32" or "") `resume` found."""
        # boto3 clients are thread-safe: the part uploads share the storage's.
        self.client: Any = storage.connection.meta.client
        self.bucket = storage.bucket_name
        self.key = s3_object_key(storage, key)
        self.part_bytes = max(part_bytes, 5 * 1024 * 1024)
        self.chunks: list[bytes] = []  # the part being filled
        self.buffered = 0
        self.parts: list[dict[str, Any]] = list(parts or [])
        self.parts_in_flight = max(1, parts_in_flight)
        self.in_flight = 0  # parts handed over and not yet finished
        self._next_number = len(self.parts) + 1
        self._reported = len(self.parts)  # parts that write or settle have said are stored
        self._uploading: dict[int, Future[dict[str, Any]]] = {}
        self._slots = threading.Semaphore(self.parts_in_flight)
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
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
    ) -> "S3MultipartWrite | None":
        """The upload again, after `parts`, if S3 still holds each of them as recorded;
        None if the upload is gone, a part differs (a late writer replaced it), or its
        parts' checksums cannot be named at the commit (see `_resumed_checksum`): the
        caller then aborts it and starts over. Parts recorded without a checksum (before
        uploads declared one) resume as they were made, without."""
        client = storage.connection.meta.client
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
        )

    def _hand_over(self) -> None:
        """Hands the buffered part to the upload threads; first waits, while
        `parts_in_flight` parts are being uploaded, for one of them to finish."""
        self._slots.acquire()
        try:
            self._raise_failed()
            body = PartBody(self.chunks)  # the chunks as they came: no copy of the part
            self.chunks, self.buffered = [], 0
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.parts_in_flight, thread_name_prefix="s3-part")
            number = self._next_number
            with self._lock:
                self.in_flight += 1
            try:
                # In a box the thread empties: the part's bytes are freed once uploaded.
                self._uploading[number] = self._pool.submit(self._upload, number, [body])
            except BaseException:
                with self._lock:
                    self.in_flight -= 1
                raise
            self._next_number += 1
        except BaseException:
            self._slots.release()
            raise

    def _upload(self, number: int, box: list[PartBody]) -> dict[str, Any]:
        """One part, on an upload thread."""
        try:
            body = box.pop()
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
                    Body=body,
                    **checksum,
                )
            part = {"n": number, "etag": uploaded["ETag"], "size": body.size}
            if self.checksum_algorithm:
                # A store that does not answer with it gets the one we compute.
                part["crc32"] = uploaded.get("ChecksumCRC32") or crc32_base64(*body.chunks)
            del body
            return part
        finally:
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

    def _shutdown(self, *, cancel: bool) -> None:
        """Ends the upload threads; they finish the part they are on first."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._pool = None

    def write(self, data: bytes) -> bool:
        if data:
            self.chunks.append(bytes(data))  # no copy of bytes
            self.buffered += len(data)
        if self.buffered >= self.part_bytes:
            self._hand_over()
        self._stored_prefix_grow()
        self._raise_failed()
        return self._report()

    def settle(self) -> bool:
        self._wait_all()
        self._shutdown(cancel=False)
        self._stored_prefix_grow()
        return self._report()

    def _report(self) -> bool:
        grown = len(self.parts) > self._reported
        self._reported = len(self.parts)
        return grown

    def commit(self) -> None:
        try:
            if self.buffered or self._next_number == 1:
                self._hand_over()
            self._wait_all()
            self._stored_prefix_grow()
            self._raise_failed()
        finally:
            self._shutdown(cancel=False)
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

    def abort(self) -> None:
        # No part may land after the abort: those not started are dropped, the others
        # waited for.
        self._shutdown(cancel=True)
        self.chunks, self.buffered = [], 0
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
    key: str, *, content_type: str, part_bytes: int, parts_in_flight: int | None = None
) -> StagedWrite:
    """A new upload of `key`; on S3 `parts_in_flight` (STAGING_PARTS_IN_FLIGHT) parts are
    uploaded at once."""
    storage = downloads_storage()
    if (s3 := s3_storage(storage)) is not None:
        return S3MultipartWrite(
            s3,
            key,
            content_type=content_type,
            part_bytes=part_bytes,
            parts_in_flight=parts_in_flight or settings.STAGING_PARTS_IN_FLIGHT,
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
            client = s3.connection.meta.client
            body = client.get_object(Bucket=s3.bucket_name, Key=s3_object_key(s3, key))["Body"]
            for chunk in body.iter_chunks(chunk_bytes):
                digest.update(chunk)
        else:
            with storage.open(key, "rb") as handle:
                while chunk := handle.read(chunk_bytes):
                    digest.update(chunk)
    return digest.hexdigest()


def stored_file_delete(key: str, *, upload_id: str = "") -> None:
    """Deletes a stored file and aborts its unfinished upload, if any. Idempotent."""
    storage = downloads_storage()
    s3 = s3_storage(storage)
    if upload_id and s3 is not None:
        client = s3.connection.meta.client
        s3_multipart_abort(client, s3.bucket_name, s3_object_key(s3, key), upload_id)
    elif upload_id and isinstance(storage, FileSystemStorage):
        _local_part_path(Path(storage.path(key)), upload_id).unlink(missing_ok=True)
    if key:
        storage.delete(key)
