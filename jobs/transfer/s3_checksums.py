"""The CRC32 checksums of an S3 multipart upload's parts.

An upload declares a checksum when it is created, as boto3's own `upload_fileobj` does:
each part is sent with its CRC32 (which S3 checks), the commit names each part's, and S3
combines them into the object's checksum instead of reading the object again. A resumed
upload must name at its commit the checksum of every part an earlier attempt stored.
"""

import base64
import zlib
from dataclasses import replace
from typing import Any

from jobs.parts import StoredPart

PART_CHECKSUM = "CRC32"


def crc32_base64(*chunks: bytes) -> str:
    """The CRC32 of a part (of its chunks, in order) as S3 writes it (`ChecksumCRC32`):
    4 bytes, big-endian, base64."""
    crc = 0
    for chunk in chunks:
        crc = zlib.crc32(chunk, crc)
    return base64.b64encode(crc.to_bytes(4, "big")).decode("ascii")


def resumed_checksum(
    recorded: list[StoredPart], stored: dict[int, dict[str, Any]], declared: str
) -> tuple[str, list[StoredPart]] | None:
    """The checksum algorithm of an upload being resumed ("CRC32" or "" for none) and its
    recorded parts, each with its `crc32` if the upload has one; None if the records and
    what S3 lists (`stored`, its parts by number) disagree, or the commit could not name
    every part's checksum.

    `declared` is the algorithm S3 lists for the upload ("" if it lists none: an upload of
    the service before it declared one, or a store that does not say, as moto)."""
    declared = declared.upper()
    if declared not in ("", PART_CHECKSUM) or not recorded:
        return None
    with_crc32 = sum(1 for part in recorded if part.crc32)
    if with_crc32 == len(recorded):
        # Recorded by this version: S3's own figure, where it lists one, must be the same.
        listed = (stored.get(part.number, {}).get("ChecksumCRC32") for part in recorded)
        if any(value not in (None, part.crc32) for value, part in zip(listed, recorded, strict=True)):
            return None
        return PART_CHECKSUM, recorded
    if with_crc32:
        return None  # some parts with a checksum and some without: not a record we write
    if not declared:
        return "", recorded  # an upload that declared no checksum: none is named at the commit
    # Declared, yet recorded without: only S3's listing can name them.
    filled = []
    for part in recorded:
        value = stored.get(part.number, {}).get("ChecksumCRC32")
        if not value:
            return None
        filled.append(replace(part, crc32=value))
    return PART_CHECKSUM, filled
