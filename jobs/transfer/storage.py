"""The downloads storage, and the files written into it as they stream in.

Production uses django-storages' S3Storage (AWS S3, MinIO, R2): a file is written as an
S3 multipart upload (jobs/transfer/s3_multipart.py) and handed out as a presigned GET URL.
The embedded default uses `SignedFileSystemStorage` (jobs/transfer/links.py): a file is
written to a temporary name and renamed into place (jobs/transfer/local_files.py), and
handed out as a signed URL with an expiry. Both answer `url(name, parameters=...,
expire=...)` the same way, so callers never branch.

Nor do the callers here: `stored_files` tells the two storages apart once, and each of
its answers (`LocalFiles`, `S3Files`) writes, measures, hashes and deletes in its own way.
The S3 side, with boto3 and botocore, is imported only once the downloads storage is S3:
a process on local storage never loads them, and a Celery pool child loads them with its
first job rather than holding them from the start (see bench/README.md).
"""

import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from django.conf import settings
from django.core.files.storage import FileSystemStorage, Storage, storages

from jobs.parts import StoredPart
from jobs.transfer.deadline import Deadline
from jobs.transfer.local_files import LocalFiles

if TYPE_CHECKING:
    from storages.backends.s3 import S3Storage


_storage_lock = threading.Lock()


def downloads_storage() -> Storage:
    """The downloads storage, one per process. Asked for under a lock: Django's storage
    handler has none, and the hundreds of jobs a worker starts at once would each make one
    (and each its own boto3 session: tens of ms of CPU apiece)."""
    with _storage_lock:
        return storages["downloads"]


def _forget_lock_after_fork() -> None:
    """A forked child (Celery's prefork pool) has none of its parent's threads: a lock one
    of them held would never be let go."""
    global _storage_lock
    _storage_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_lock_after_fork)


def s3_storage(storage: Storage) -> "S3Storage | None":
    """`storage` if it is django-storages' S3Storage, else None. Local storage is told
    apart first, without importing the S3 backend (and boto3) at all."""
    if isinstance(storage, FileSystemStorage):
        return None
    from storages.backends.s3 import S3Storage

    return storage if isinstance(storage, S3Storage) else None


class StagedWrite(Protocol):
    """A file being written into storage; visible under its key only after `commit`.

    The file is stored in parts. `parts` lists those stored so far, always parts 1 to n
    with nothing missing: recorded by the job, they let a later attempt `resume` the same
    upload after its last part instead of starting again."""

    upload_id: str
    parts: list[StoredPart]

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


class StoredFiles(Protocol):
    """The files of one kind of storage: what the job's side asks of any of them."""

    def write_open(
        self,
        key: str,
        *,
        content_type: str,
        part_bytes: int,
        parts_in_flight: int,
        deadline: Deadline | None,
        bytes_expected: int | None,
    ) -> StagedWrite: ...

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
    ) -> StagedWrite | None: ...

    def sha256(self, key: str, *, chunk_bytes: int) -> str: ...

    def size(self, key: str) -> int | None: ...

    def delete(self, key: str, *, upload_id: str) -> None: ...


def stored_files() -> StoredFiles:
    """The files of the downloads storage, as its kind writes and reads them."""
    storage = downloads_storage()
    if isinstance(storage, FileSystemStorage):
        return LocalFiles(storage)
    if (s3 := s3_storage(storage)) is not None:
        from jobs.transfer.s3_multipart import S3Files

        return S3Files(s3)
    raise TypeError(f"Unsupported downloads storage {type(storage).__name__}")


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
    return stored_files().write_open(
        key,
        content_type=content_type,
        part_bytes=part_bytes,
        parts_in_flight=parts_in_flight or settings.STAGING_PARTS_IN_FLIGHT,
        deadline=deadline,
        bytes_expected=bytes_expected,
    )


def staged_write_resume(
    key: str,
    *,
    upload_id: str,
    parts: Sequence[StoredPart],
    part_bytes: int,
    parts_in_flight: int | None = None,
    deadline: Deadline | None = None,
    bytes_expected: int | None = None,
) -> StagedWrite | None:
    """The unfinished upload `upload_id` of `key`, to go on after `parts`; None if it
    cannot be resumed (gone, or not as recorded)."""
    return stored_files().write_resume(
        key,
        upload_id=upload_id,
        parts=parts,
        part_bytes=part_bytes,
        parts_in_flight=parts_in_flight or settings.STAGING_PARTS_IN_FLIGHT,
        deadline=deadline,
        bytes_expected=bytes_expected,
    )


def stored_file_sha256(key: str, *, chunk_bytes: int = 1024 * 1024) -> str:
    """Reads a stored file back to hash it: for a file whose first parts an earlier
    attempt wrote, whose hash state died with that attempt."""
    return stored_files().sha256(key, chunk_bytes=chunk_bytes)


def stored_file_size(key: str) -> int | None:
    """The size of the stored file `key`, or None if there is none."""
    return stored_files().size(key)


def stored_file_delete(key: str, *, upload_id: str = "") -> None:
    """Deletes a stored file and aborts its unfinished upload, if any. Idempotent. A store
    that cannot be reached is a STORAGE_ERROR (retryable)."""
    stored_files().delete(key, upload_id=upload_id)
