"""What a file being written into storage is stored as: parts, numbered from 1.

A `StoredPart` crosses from the storage's writes (jobs/transfer/) through staging and the
running attempt to hot-state Redis, where the next attempt finds the parts to resume after.
It is turned into JSON only where it enters Redis (`jobs.hotstate.run_beat`) and back only
where it leaves it: everywhere else it is this type, not a dict whose keys each module
would have to know."""

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class StoredPart:
    """One part of an upload, stored: its `number` (1 to n), its `size` in bytes, and on
    S3 the `etag` S3 answered with and the `crc32` the commit names when the upload
    declared a checksum (both empty on local storage)."""

    number: int
    size: int
    etag: str = ""
    crc32: str = ""


def parts_size(parts: Iterable[StoredPart]) -> int:
    """The bytes the parts hold: where a resumed upload goes on from."""
    return sum(part.size for part in parts)
