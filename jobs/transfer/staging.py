"""Streams a file from its origin into storage, chunk by chunk.

On S3 a few parts (STAGING_PARTS_IN_FLIGHT) are uploaded at once while the origin is read;
memory stays bounded by those parts, one chunk and the part being filled, whatever the
file's size; the sha256 is computed on the way; between two chunks the caller may stop the work (cancel,
superseded attempt). An attempt after a crash or a retryable failure goes on from the last
part an earlier attempt stored, where the origin can send the rest of the file.
"""

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from django.conf import settings

from jobs.errors import ErrorCode, JobCancelled, JobError
from jobs.parts import StoredPart, parts_size
from jobs.transfer.deadline import Deadline
from jobs.transfer.origins import Origin, read_size_check
from jobs.transfer.storage import (
    StagedWrite,
    staged_write_open,
    staged_write_resume,
    stored_file_delete,
    stored_file_sha256,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StagedFile:
    key: str
    file_name: str
    content_type: str
    size: int
    sha256: str
    resumed_bytes: int = 0


@dataclass(frozen=True)
class StoredFileFacts:
    """What a committed upload holds, recorded before the commit: a later attempt that
    finds the file stored (its completion write was lost) completes with these."""

    size: int
    file_name: str
    content_type: str
    sha256: str  # empty for a resumed file, hashed by reading it back


@dataclass(frozen=True)
class Checkpoint:
    """Where an earlier attempt of the job left its upload: the parts it stored (as
    recorded by fenced writes) and the origin's validator of the file they came from."""

    upload_id: str
    parts: tuple[StoredPart, ...]
    validator: str

    @property
    def size(self) -> int:
        return parts_size(self.parts)


class StagingHooks(Protocol):
    def upload_opened(
        self,
        *,
        upload_id: str,
        parts: Sequence[StoredPart],
        bytes_total: int | None,
        resumed_bytes: int,
        validator: str,
    ) -> None:
        """Called once the origin answered and the upload exists (new or resumed)."""

    def part_stored(self, *, parts: Sequence[StoredPart]) -> None:
        """Called when more parts are stored (`parts` is always parts 1 to n, each
        stored); records them, or raises if the attempt no longer owns the job (then the
        upload is left to the attempt that does)."""

    def chunk_staged(self, *, bytes_done: int, bytes_total: int | None) -> None:
        """Called after every chunk; raises to stop the work."""

    def before_commit(self, *, file: "StoredFileFacts") -> None:
        """Called just before the upload is made visible, with what the stored file will
        be; raises if the attempt no longer owns the job."""


class NoHooks:
    """Staging outside any job (a benchmark, a test): no progress, no record, no cancel."""

    def upload_opened(self, **kwargs: Any) -> None:
        pass

    def part_stored(self, *, parts: Sequence[StoredPart]) -> None:
        pass

    def chunk_staged(self, *, bytes_done: int, bytes_total: int | None) -> None:
        pass

    def before_commit(self, *, file: StoredFileFacts) -> None:
        pass


def _resumed_write(key: str, checkpoint: Checkpoint | None, deadline: Deadline | None) -> StagedWrite | None:
    if checkpoint is None:
        return None
    write = None
    # Without a validator the origin could send the rest of another version of the file.
    if checkpoint.parts and checkpoint.validator:
        write = staged_write_resume(
            key,
            upload_id=checkpoint.upload_id,
            parts=checkpoint.parts,
            part_bytes=settings.STAGING_PART_BYTES,
            parts_in_flight=settings.STAGING_PARTS_IN_FLIGHT,
            deadline=deadline,
        )
    if write is None:
        logger.info("Upload of %s cannot be resumed; starting it again", key)
        stored_file_delete(key, upload_id=checkpoint.upload_id)
    return write


def _abort(write: StagedWrite, key: str) -> None:
    try:
        write.abort()
    except Exception:
        # The original failure matters more; a leftover upload is aborted by the bucket's
        # lifecycle rule.
        logger.exception("Could not abort the upload of %s", key)


def _settle(write: StagedWrite, key: str, hooks: StagingHooks) -> None:
    """After a failure that leaves the upload to a later attempt: the parts still being
    uploaded are waited for (none lands later) and recorded, for that attempt to resume
    after them; what the write held and had not stored is freed at once."""
    try:
        if write.settle():
            hooks.part_stored(parts=write.parts)
    except Exception:
        # The original failure matters more; a later attempt resumes after fewer parts.
        logger.warning("Could not record the last stored parts of %s", key, exc_info=True)
    finally:
        write.release()


def stage_file(
    *,
    origin: Origin,
    file_id: int,
    key: str,
    hooks: StagingHooks,
    checkpoint: Checkpoint | None = None,
    deadline: Deadline | None = None,
) -> StagedFile:
    """Streams the file into `key`. With a `checkpoint`, goes on with that upload from its
    last stored part if the origin can send the rest of the same file; otherwise starts
    over (and aborts the old upload).

    With a `deadline`, the work ends DOWNLOAD_TIMEOUT once it has passed: checked between
    chunks (and by the origin and the storage while they wait). It counts as the origin's
    fault when waiting for the origin's chunks took most of the time.

    What becomes of an unfinished upload when the work stops is the job's decision: a
    cancel aborts it here, and so does any failure before the job's row recorded the
    upload (no one else knows of it then); after any other failure it stays, for the next
    attempt to resume or for the service to abort when the job ends."""
    write = _resumed_write(key, checkpoint, deadline)
    offset = checkpoint.size if write is not None and checkpoint is not None else 0
    started_at = time.monotonic()
    with origin.open(
        file_id,
        chunk_bytes=settings.STAGING_CHUNK_BYTES,
        offset=offset,
        validator=checkpoint.validator if checkpoint else "",
        deadline=deadline,
    ) as source:
        if write is not None and source.offset != offset:
            logger.info("Origin sent %s from the start; its upload starts again", key)
            _abort(write, key)
            write = None
        if write is None:
            write = staged_write_open(
                key,
                content_type=source.content_type,
                part_bytes=settings.STAGING_PART_BYTES,
                parts_in_flight=settings.STAGING_PARTS_IN_FLIGHT,
                deadline=deadline,
                bytes_expected=source.size,
            )
        try:
            hooks.upload_opened(
                upload_id=write.upload_id,
                parts=write.parts,
                bytes_total=source.size,
                resumed_bytes=source.offset,
                validator=source.validator,
            )
        except BaseException:
            # Not recorded: cancelled or superseded while the origin had not answered yet.
            _abort(write, key)
            raise
        # How long the attempt has waited for the origin's chunks, and whether it waits for
        # one now: whose fault its deadline is.
        origin_wait_s, waited_from, waiting = 0.0, time.monotonic(), True
        try:
            # The hash of resumed bytes died with the attempt that read them: a resumed
            # file is hashed by reading it back once stored.
            digest = hashlib.sha256() if source.offset == 0 else None
            bytes_done = source.offset
            for chunk in source.chunks:
                origin_wait_s += time.monotonic() - waited_from
                waiting = False
                if deadline is not None:
                    deadline.check(origin_fault=False)  # blamed below
                bytes_done += len(chunk)
                # Whatever the origin announced (a file may grow while read), no byte past
                # the limit is stored.
                read_size_check(bytes_done)
                if digest is not None:
                    digest.update(chunk)
                if write.write(chunk):
                    hooks.part_stored(parts=write.parts)
                hooks.chunk_staged(bytes_done=bytes_done, bytes_total=source.size)
                # Not held while the next chunk is read: a worker runs hundreds of these loops.
                del chunk
                waited_from, waiting = time.monotonic(), True
            waiting = False
            facts = StoredFileFacts(
                size=bytes_done,
                file_name=source.name,
                content_type=source.content_type,
                sha256=digest.hexdigest() if digest is not None else "",
            )
            # The last parts handed over are recorded before the commit, as they are
            # during the transfer (the part being filled is stored by the commit).
            if write.settle():
                hooks.part_stored(parts=write.parts)
            hooks.before_commit(file=facts)
            write.commit()
        except JobCancelled:
            _abort(write, key)
            raise
        except BaseException as error:
            blamed = None
            if (
                deadline is not None
                and isinstance(error, JobError)
                and error.code == ErrorCode.DOWNLOAD_TIMEOUT
            ):
                # Whoever saw the deadline pass (this loop, the origin between two network
                # reads, the store while it waited for room), the origin is to blame only if
                # waiting for its chunks took most of the time.
                if waiting:
                    origin_wait_s += time.monotonic() - waited_from
                elapsed_s = time.monotonic() - started_at
                blamed = deadline.exceeded(origin_fault=origin_wait_s * 2 >= elapsed_s)
            _settle(write, key, hooks)
            if blamed is not None:
                raise blamed from error
            raise
    return StagedFile(
        key=key,
        file_name=facts.file_name,
        content_type=facts.content_type,
        size=facts.size,
        sha256=facts.sha256 or stored_file_sha256(key),
        resumed_bytes=source.offset,
    )
