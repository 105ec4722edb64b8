"""Fetching a completed job's file through its download link, resumably, and verifying it.

The bytes go to `<path>.part`, hashed on the way; the file takes its name only once its
size and sha256 are the API's. A connection that drops mid-file is resumed with `Range`
(and `If-Range`, so a changed object is sent whole) from the bytes already written. A
link that is refused (expired: S3 answers 403, the local storage 404) is replaced by a
fresh one from GET /v1/download/<id>, and the bytes written are kept. A server that
ignores `Range` (200 instead of 206) sends the file again from the start.
"""

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx

from . import errors
from .models import Link

logger = logging.getLogger("downloads_client")

CHUNK_BYTES = 256 * 1024
# Tries in a row that bring no new byte before giving up.
MAX_FRUITLESS_TRIES = 5
# Statuses of a link that may just have expired: a fresh one is asked for.
_LINK_REFUSED = frozenset({401, 403, 404, 410})
# A link this close to its expiry is replaced before it is used again.
LINK_MARGIN_S = 5.0


def _expiring(expires_at: datetime | None) -> bool:
    return expires_at is not None and expires_at.timestamp() - LINK_MARGIN_S <= time.time()


def part_path(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def fetch_file(
    http: httpx.Client,
    *,
    job_id: str,
    link: Link,
    fresh_link: Callable[[], Link],
    path: Path,
    on_bytes: Callable[[int, int | None], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[int, str]:
    """Saves the file of `link` at `path`; returns its size and sha256 once verified."""
    partial = part_path(path)
    total = link.file_size
    digest = hashlib.sha256()
    done = 0
    etag: str | None = None
    fruitless = 0
    failure: httpx.Response | httpx.TransportError | None = None
    try:
        with partial.open("wb") as out:

            def restart() -> None:
                nonlocal digest, done
                out.seek(0)
                out.truncate()
                digest = hashlib.sha256()
                done = 0

            while True:
                if fruitless >= MAX_FRUITLESS_TRIES:
                    raise _gave_up(job_id, fruitless, failure)
                if _expiring(link.expires_at):
                    link = fresh_link()
                headers = {}
                if done:
                    headers["Range"] = f"bytes={done}-"
                    if etag:
                        headers["If-Range"] = etag
                before = done
                try:
                    with http.stream("GET", link.download_url, headers=headers) as response:
                        status = response.status_code
                        if status in _LINK_REFUSED:
                            logger.info("The link of %s was refused (%s): a fresh one", job_id, status)
                            fruitless += 1
                            failure = response
                            link = fresh_link()
                            continue
                        if status == 416 and done and done == total:
                            break  # every byte was there already
                        if status == 206 and done and _range_start(response) == done:
                            pass  # the rest, after the bytes written
                        elif status == 200:
                            if done:
                                logger.info("The server ignored Range for %s: from the start again", job_id)
                                restart()
                        elif status == 206:
                            restart()  # not the range asked for: ask for the whole file
                            continue
                        else:
                            fruitless += 1
                            failure = response
                            logger.warning("The file's link answered %s; trying again", status)
                            sleep(_backoff_s(fruitless))
                            continue
                        etag = response.headers.get("ETag") or etag
                        if total is None:
                            total = _total_size(response, done)
                        for chunk in response.iter_raw(CHUNK_BYTES):
                            out.write(chunk)
                            digest.update(chunk)
                            done += len(chunk)
                            if on_bytes is not None:
                                on_bytes(done, total)
                    break  # the whole answer was read
                except httpx.TransportError as exc:
                    fruitless = 0 if done > before else fruitless + 1
                    failure = exc
                    logger.info("The download of %s dropped at %d bytes (%s); resuming", job_id, done, exc)
                    if done == before:
                        sleep(_backoff_s(fruitless))
            out.flush()
            os.fsync(out.fileno())
        sha256 = digest.hexdigest()
        if total is not None and done != total:
            raise errors.IntegrityError(
                "INTEGRITY_ERROR", f"Got {done} bytes of the file, expected {total}", job_id=job_id
            )
        if link.sha256 and sha256 != link.sha256:
            raise errors.IntegrityError(
                "INTEGRITY_ERROR",
                f"The file's sha256 is {sha256}, expected {link.sha256}",
                job_id=job_id,
            )
        partial.replace(path)
        return done, sha256
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise


def _gave_up(
    job_id: str, tries: int, failure: httpx.Response | httpx.TransportError | None
) -> errors.ApiError:
    if isinstance(failure, httpx.Response):
        status = failure.status_code
        cls = errors.ServerError if status >= 500 else errors.ApiError
        return cls(
            f"HTTP_{status}",
            f"The file's link answered {status} {failure.reason_phrase} {tries} times",
            status=status,
            job_id=job_id,
        )
    return errors.ConnectionFailed(
        "NETWORK_ERROR", f"The file could not be fetched in {tries} tries: {failure}", job_id=job_id
    )


def _backoff_s(tries: int) -> float:
    return float(min(8.0, 0.5 * 2**tries))


def _range_start(response: httpx.Response) -> int | None:
    """The first byte of a 206 answer (`Content-Range: bytes 100-199/200`)."""
    value = response.headers.get("Content-Range", "")
    unit, _, spec = value.partition(" ")
    start = spec.partition("-")[0]
    return int(start) if unit == "bytes" and start.isdigit() else None


def _total_size(response: httpx.Response, done: int) -> int | None:
    whole = response.headers.get("Content-Range", "").rpartition("/")[2]
    if whole.isdigit():
        return int(whole)
    length = response.headers.get("Content-Length", "")
    return done + int(length) if length.isdigit() else None
