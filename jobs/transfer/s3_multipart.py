"""Files written into S3 storage (AWS S3, MinIO, R2) as multipart uploads, a few parts in
flight at once, and the storage's other calls on the files it holds.

Imported only once the downloads storage is S3 (see jobs/transfer/storage.py).
"""

import hashlib
import threading
from collections.abc import Sequence
from concurrent import futures
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings

from jobs.errors import ErrorCode, JobError
from jobs.parts import StoredPart
from jobs.transfer.content_headers import safe_content_type
from jobs.transfer.deadline import Deadline
from jobs.transfer.part_buffers import PartBuffer, part_budget, upload_threads
from jobs.transfer.s3_checksums import PART_CHECKSUM, resumed_checksum
from jobs.transfer.s3_clients import s3_client, s3_error_code, s3_errors, s3_multipart_abort, s3_object_key

if TYPE_CHECKING:
    from storages.backends.s3 import S3Storage


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
        parts: Sequence[StoredPart] = (),
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
        self.parts: list[StoredPart] = list(parts)
        self.parts_in_flight = max(1, parts_in_flight)
        self.in_flight = 0  # parts handed over and not yet finished
        self._next_number = len(self.parts) + 1
        self._reported = len(self.parts)  # parts that write or settle have said are stored
        self._uploading: dict[int, Future[StoredPart]] = {}
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
        with s3_errors():
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
        parts: Sequence[StoredPart],
        part_bytes: int,
        parts_in_flight: int = 1,
        deadline: Deadline | None = None,
        bytes_expected: int | None = None,
    ) -> "S3MultipartWrite | None":
        """The upload again, after `parts`, if S3 still holds each of them as recorded;
        None if the upload is gone, a part differs (a late writer replaced it), or its
        parts' checksums cannot be named at the commit (see `resumed_checksum` in
        jobs/transfer/s3_checksums.py): the caller then aborts it and starts over. Parts
        recorded without a checksum (before uploads declared one) resume as they were
        made, without."""
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
            if s3_error_code(exc) == "NoSuchUpload":
                return None
            raise JobError(ErrorCode.STORAGE_ERROR, "Storage refused the upload") from exc
        except BotoCoreError as exc:
            raise JobError(ErrorCode.STORAGE_ERROR, "Storage refused the upload") from exc
        if any(stored.get(part.number, {}).get("ETag") != part.etag for part in parts):
            return None
        resumed = resumed_checksum(list(parts), stored, declared)
        if resumed is None:
            return None
        checksum_algorithm, checked = resumed
        return cls(
            storage,
            key,
            content_type="",
            part_bytes=part_bytes,
            parts_in_flight=parts_in_flight,
            upload_id=upload_id,
            parts=checked,
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
                future = upload_threads().submit(self._upload, number, buffer)
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

    def _dropped(self, future: "Future[StoredPart]", buffer: PartBuffer) -> None:
        if future.cancelled():
            with self._lock:
                self.in_flight -= 1
            buffer.release()
            self._slots.release()

    def _upload(self, number: int, buffer: PartBuffer) -> StoredPart:
        """One part, on an upload thread."""
        try:
            # As boto3's upload_fileobj: botocore computes the part's CRC32 (in a header over
            # http, in a trailer of the streamed body over https, then unsigned), S3 checks
            # it and answers with it. Given by us, it would make botocore sign the body
            # with SHA-256 even over https.
            checksum = {"ChecksumAlgorithm": PART_CHECKSUM} if self.checksum_algorithm else {}
            with s3_errors():
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
            # A store that does not answer with the part's checksum gets the one we compute.
            crc32 = (uploaded.get("ChecksumCRC32") or buffer.crc32()) if self.checksum_algorithm else ""
            return StoredPart(number=number, size=buffer.size, etag=uploaded["ETag"], crc32=crc32)
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
        with s3_errors():
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": [self._completed_part(part) for part in self.parts]},
            )

    def _completed_part(self, part: StoredPart) -> dict[str, Any]:
        completed = {"PartNumber": part.number, "ETag": part.etag}
        if self.checksum_algorithm:
            completed["ChecksumCRC32"] = part.crc32
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


class S3Files:
    """The downloads storage's files when it is S3 (django-storages' S3Storage), called
    through this thread's client of the bucket (`s3_client`)."""

    def __init__(self, storage: "S3Storage") -> None:
        self.storage = storage

    def write_open(
        self,
        key: str,
        *,
        content_type: str,
        part_bytes: int,
        parts_in_flight: int,
        deadline: Deadline | None,
        bytes_expected: int | None,
    ) -> S3MultipartWrite:
        return S3MultipartWrite(
            self.storage,
            key,
            content_type=content_type,
            part_bytes=part_bytes,
            parts_in_flight=parts_in_flight,
            deadline=deadline,
            bytes_expected=bytes_expected,
        )

    def write_resume(
        self,
        key: str,
        *,
        upload_id: str,
        parts: Sequence[StoredPart],
        part_bytes: int,
        parts_in_flight: int,
        deadline: Deadline | None,
        bytes_expected: int | None,
    ) -> S3MultipartWrite | None:
        return S3MultipartWrite.resume(
            self.storage,
            key,
            upload_id=upload_id,
            parts=parts,
            part_bytes=part_bytes,
            parts_in_flight=parts_in_flight,
            deadline=deadline,
            bytes_expected=bytes_expected,
        )

    def sha256(self, key: str, *, chunk_bytes: int) -> str:
        digest = hashlib.sha256()
        with s3_errors():
            body = self._client().get_object(Bucket=self.storage.bucket_name, Key=self._key(key))["Body"]
            for chunk in body.iter_chunks(chunk_bytes):
                digest.update(chunk)
        return digest.hexdigest()

    def size(self, key: str) -> int | None:
        try:
            head = self._client().head_object(Bucket=self.storage.bucket_name, Key=self._key(key))
        except ClientError as exc:
            if s3_error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(head["ContentLength"])

    def delete(self, key: str, *, upload_id: str) -> None:
        with s3_errors():
            if upload_id:
                s3_multipart_abort(self._client(), self.storage.bucket_name, self._key(key), upload_id)
            if key:
                self._client().delete_object(Bucket=self.storage.bucket_name, Key=self._key(key))

    def _client(self) -> Any:
        return s3_client(self.storage)

    def _key(self, name: str) -> str:
        return s3_object_key(self.storage, name)
