"""Files written into local storage (the embedded default): each written beside its final
name and renamed into place once whole, in parts made durable one by one so that a later
attempt goes on after the last of them."""

import errno
import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from django.core.files.storage import FileSystemStorage

from jobs.errors import ErrorCode, JobError
from jobs.parts import StoredPart, parts_size
from jobs.transfer.deadline import Deadline


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
        parts: Sequence[StoredPart] = (),
    ) -> None:
        self.final_path = Path(storage.path(key))
        self.final_path.parent.mkdir(parents=True, exist_ok=True)
        self.part_bytes = part_bytes
        self.parts: list[StoredPart] = list(parts)
        self.upload_id = upload_id or os.urandom(8).hex()
        self.part_path = _part_path(self.final_path, self.upload_id)
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
        parts: Sequence[StoredPart],
        part_bytes: int,
    ) -> "LocalWrite | None":
        part_path = _part_path(Path(storage.path(key)), upload_id)
        try:
            if part_path.stat().st_size < parts_size(parts):
                return None
        except FileNotFoundError:
            return None
        return cls(storage, key, part_bytes=part_bytes, upload_id=upload_id, parts=parts)

    def write(self, data: bytes) -> bool:
        try:
            with local_write_errors():
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
        self.parts.append(StoredPart(number=len(self.parts) + 1, size=self.unstored))
        self.unstored = 0
        return True

    def settle(self) -> bool:
        return False  # each part is stored by the `write` that fills it

    def commit(self) -> None:
        with local_write_errors():
            self.handle.close()  # writes out the last, partial part
            os.replace(self.part_path, self.final_path)

    def release(self) -> None:
        with suppress(OSError):
            self.handle.close()  # what it wrote stays, cut back to its parts by a resume

    def abort(self) -> None:
        self.handle.close()
        self.part_path.unlink(missing_ok=True)


class LocalFiles:
    """The downloads storage's files when it is local (`FileSystemStorage`)."""

    def __init__(self, storage: FileSystemStorage) -> None:
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
    ) -> LocalWrite:
        # One part at a time, written in this thread: nothing in flight, nothing to wait for.
        return LocalWrite(self.storage, key, part_bytes=part_bytes)

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
    ) -> LocalWrite | None:
        return LocalWrite.resume(self.storage, key, upload_id=upload_id, parts=parts, part_bytes=part_bytes)

    def sha256(self, key: str, *, chunk_bytes: int) -> str:
        digest = hashlib.sha256()
        with self.storage.open(key, "rb") as handle:
            while chunk := handle.read(chunk_bytes):
                digest.update(chunk)
        return digest.hexdigest()

    def size(self, key: str) -> int | None:
        return self.storage.size(key) if self.storage.exists(key) else None

    def delete(self, key: str, *, upload_id: str) -> None:
        if upload_id:
            _part_path(Path(self.storage.path(key)), upload_id).unlink(missing_ok=True)
        if key:
            self.storage.delete(key)


def _part_path(final_path: Path, upload_id: str) -> Path:
    return final_path.with_name(f"{final_path.name}.{upload_id}.part")


@contextmanager
def local_write_errors() -> Iterator[None]:
    """Turns a local write's OSError into STORAGE_FULL (not retried: another attempt would
    meet the same full disk) or STORAGE_ERROR (retryable)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise JobError(ErrorCode.STORAGE_FULL, "The storage is full") from exc
        raise JobError(ErrorCode.STORAGE_ERROR, "Could not write to storage") from exc
