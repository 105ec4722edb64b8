"""Where files come from. `file_id` names a file at the origin chosen by `ORIGIN`.

Every origin opens a file as an `OriginFile`: its name, type and size (when known) and an
iterator of byte chunks. Failures are raised as `JobError` with a code from `errors.py`,
never as the transport's own exceptions.

An attempt that resumes asks for the file from an offset, with the validator the first
attempt was given (an HTTP `Range` with `If-Range`). The origin starts there only if it
can and the file is still the same version; otherwise it sends the whole file, and says
so by `OriginFile.offset`, which is where its chunks start.

Whatever an origin announces, no more bytes are read than it announced nor than
JOB_MAX_FILE_BYTES allows; its type and validator are kept only if they are well formed
and fit the job's columns.
"""

import functools
import os

from django.conf import settings

from infra.addresses import address_is_public
from jobs.transfer.origins.base import (
    DEFAULT_CONTENT_TYPE,
    HEADER_VALUE_MAX_CHARS,
    Origin,
    OriginFile,
    media_type_or_default,
    read_size_check,
    safe_file_name,
)
from jobs.transfer.origins.http import HttpOrigin
from jobs.transfer.origins.local import DirectoryOrigin, SyntheticOrigin, synthetic_chunks

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "HEADER_VALUE_MAX_CHARS",
    "DirectoryOrigin",
    "HttpOrigin",
    "Origin",
    "OriginFile",
    "SyntheticOrigin",
    "address_is_public",
    "get_origin",
    "media_type_or_default",
    "read_size_check",
    "safe_file_name",
    "synthetic_chunks",
]


def get_origin() -> Origin:
    """The configured origin. The http origin is made once per process and configuration:
    it holds the connections its jobs share."""
    kind = settings.ORIGIN
    if kind == "http":
        return _http_origin(
            settings.ORIGIN_URL_TEMPLATE,
            settings.ORIGIN_CONNECT_TIMEOUT_S,
            settings.ORIGIN_READ_TIMEOUT_S,
            tuple(settings.ORIGIN_ALLOWED_HOSTS),
            settings.ORIGIN_MAX_REDIRECTS,
        )
    if kind == "directory":
        return DirectoryOrigin(root=settings.ORIGIN_DIRECTORY)
    if kind == "synthetic":
        return SyntheticOrigin(size_bytes=settings.SYNTHETIC_FILE_BYTES, rate_bps=settings.SYNTHETIC_RATE_BPS)
    raise ValueError(f"Unknown ORIGIN {kind!r}: use http, directory or synthetic")


@functools.lru_cache(maxsize=8)
def _http_origin(
    url_template: str,
    connect_timeout_s: float,
    read_timeout_s: float,
    allowed_hosts: tuple[str, ...],
    max_redirects: int,
) -> HttpOrigin:
    return HttpOrigin(
        url_template=url_template,
        connect_timeout_s=connect_timeout_s,
        read_timeout_s=read_timeout_s,
        allowed_hosts=allowed_hosts,
        max_redirects=max_redirects,
    )


# A forked child (Celery's prefork pool) must not share its parent's connections.
os.register_at_fork(after_in_child=_http_origin.cache_clear)
