"""Streams a file from its origin into storage, chunk by chunk.

Memory stays bounded by one chunk plus one multipart part, whatever the file's size; the
sha256 is computed on the way; between two chunks the caller may stop the work (cancel,
superseded attempt), and whatever stops it, the unfinished upload is aborted.
"""

import hashlib
import logging
from dataclasses import dataclass
from typing import Protocol

from django.conf import settings

from .origins import Origin
from .storage import staged_write_open

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StagedFile:
    key: str
    file_name: str
    content_type: str
    size: int
    sha256: str


class StagingHooks(Protocol):
    def upload_opened(self, *, upload_id: str, bytes_total: int | None) -> None:
        """Called once the origin answered and the upload exists."""

    def chunk_staged(self, *, bytes_done: int, bytes_total: int | None) -> None:
        """Called after every chunk; raises to stop the work."""


def stage_file(*, origin: Origin, file_id: int, key: str, hooks: StagingHooks) -> StagedFile:
    with origin.open(file_id, chunk_bytes=settings.STAGING_CHUNK_BYTES) as source:
        write = staged_write_open(
            key, content_type=source.content_type, part_bytes=settings.STAGING_PART_BYTES
        )
        try:
            hooks.upload_opened(upload_id=write.upload_id, bytes_total=source.size)
            digest = hashlib.sha256()
            bytes_done = 0
            for chunk in source.chunks:
                digest.update(chunk)
                write.write(chunk)
                bytes_done += len(chunk)
                hooks.chunk_staged(bytes_done=bytes_done, bytes_total=source.size)
            write.commit()
        except BaseException:
            try:
                write.abort()
            except Exception:
                # The original failure matters more; a leftover upload is aborted by the
                # bucket's lifecycle rule or the next attempt.
                logger.exception("Could not abort the upload of %s", key)
            raise
    return StagedFile(
        key=key,
        file_name=source.name,
        content_type=source.content_type,
        size=bytes_done,
        sha256=digest.hexdigest(),
    )
