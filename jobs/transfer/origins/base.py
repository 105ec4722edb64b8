"""What every origin opens a file as, and the checks of what an origin says: names, types,
sizes."""

import mimetypes
import re
import unicodedata
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from django.conf import settings

from jobs.errors import ErrorCode, JobError
from jobs.transfer.deadline import Deadline

DEFAULT_CONTENT_TYPE = "application/octet-stream"
# The longest header value of the origin's that a job keeps: its columns `content_type`
# and `origin_validator` (jobs/models.py) hold 255 characters.
HEADER_VALUE_MAX_CHARS = 255


@dataclass
class OriginFile:
    name: str
    content_type: str
    size: int | None  # of the whole file
    chunks: Iterator[bytes]  # from `offset` to the end
    offset: int = 0
    # This version of the file, for a later request of the rest; empty: cannot resume.
    validator: str = ""


class Origin(Protocol):
    def open(
        self,
        file_id: int,
        *,
        chunk_bytes: int,
        offset: int = 0,
        validator: str = "",
        deadline: Deadline | None = None,
    ) -> AbstractContextManager[OriginFile]:
        """The file from `offset`. An origin whose one chunk could take unbounded time
        checks `deadline` while it builds the chunk; the caller checks it between chunks."""
        ...


_UNSAFE_NAME_CHARS = re.compile(r'[\x00-\x1f\x7f-\x9f/\\:*?"<>|]+')
# Invisible and control characters of Unicode: bidi overrides that disguise an extension
# ("invoice\u202efdp.exe" shows as "invoiceexe.pdf"), zero-width characters, line and
# paragraph separators, surrogates (undecodable bytes), private and unassigned ones.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
FILE_NAME_MAX_BYTES = 200  # of UTF-8: file systems count bytes (255 at most)


def _cut_utf8(text: str, max_bytes: int) -> str:
    return text.encode()[:max_bytes].decode("utf-8", "ignore")


def safe_file_name(name: str, *, fallback: str) -> str:
    """A file name fit for a Content-Disposition header and any file system: no path,
    no control or invisible characters, no leading dots, at most 200 bytes of UTF-8
    (the extension kept). Quotes and semicolons that remain are for the header's
    builder (`jobs.transfer.files.attachment_disposition`) to encode."""
    name = unicodedata.normalize("NFC", name)
    name = "".join("\x00" if unicodedata.category(char) in _INVISIBLE_CATEGORIES else char for char in name)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE_NAME_CHARS.sub("_", name).strip().lstrip(".")
    if len(name.encode()) > FILE_NAME_MAX_BYTES:
        stem, dot, ext = name.rpartition(".")
        if dot and len(ext.encode()) <= 16:
            name = _cut_utf8(stem, FILE_NAME_MAX_BYTES - len(ext.encode()) - 1) + dot + ext
        else:
            name = _cut_utf8(name, FILE_NAME_MAX_BYTES)
    return name or fallback


def default_name(file_id: int, content_type: str) -> str:
    ext = mimetypes.guess_extension(content_type.split(";")[0].strip()) or ".bin"
    return f"file_{file_id}{ext}"


def check_size(size: int | None) -> None:
    if size is not None and size > settings.JOB_MAX_FILE_BYTES:
        raise JobError(
            ErrorCode.FILE_TOO_LARGE,
            f"File is {size} bytes; the limit is {settings.JOB_MAX_FILE_BYTES} bytes",
        )


def read_size_check(bytes_read: int) -> None:
    """FILE_TOO_LARGE as soon as more bytes of a file arrived than the limit allows,
    whatever its origin announced: checked before the chunk that crosses it is used."""
    if bytes_read > settings.JOB_MAX_FILE_BYTES:
        raise JobError(
            ErrorCode.FILE_TOO_LARGE, f"File is larger than the limit of {settings.JOB_MAX_FILE_BYTES} bytes"
        )


# A media type (RFC 9110 8.3.1) in ASCII: type/subtype, then parameters whose values are
# tokens or quoted strings of printable characters.
_MEDIA_TYPE = re.compile(
    r"[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*(?:[ \t]*;[ \t]*[\w.+-]+=(?:[\w.+-]+|\"[ !#-\[\]-~]*\"))*",
    re.ASCII,
)


def media_type_or_default(value: str) -> str:
    """`value` if it is a well-formed media type short enough to be kept, else
    application/octet-stream. What a browser is then served is `storage.safe_content_type`'s
    decision."""
    if len(value) <= HEADER_VALUE_MAX_CHARS and _MEDIA_TYPE.fullmatch(value):
        return value
    return DEFAULT_CONTENT_TYPE
