"""The downloads storage and the two ways of writing a file into it as it streams in.

Production uses django-storages' S3Storage (AWS S3, MinIO, R2): a file is written as an
S3 multipart upload and handed out as a presigned GET URL. The embedded default uses
`SignedFileSystemStorage`: a file is written to a temporary name and renamed into place,
and handed out as a signed URL with an expiry, served by `file_download` below. Both
answer `url(name, parameters=..., expire=...)` the same way, so callers never branch.
"""

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError
from django.core import signing
from django.core.files.storage import FileSystemStorage, Storage, storages
from django.http import FileResponse, Http404, HttpRequest
from django.urls import reverse
from storages.backends.s3 import S3Storage

from .errors import ErrorCode, JobError

_URL_SALT = "jobs.storage.download-url"


def downloads_storage() -> Storage:
    return storages["downloads"]


class SignedFileSystemStorage(FileSystemStorage):
    """Local files whose URLs are signed and expire, like S3 presigned URLs."""

    def url(
        self,
        name: str | None,
        parameters: dict[str, str] | None = None,
        expire: int | None = None,
    ) -> str:
        if name is None:
            raise ValueError("name is required")
        parameters = parameters or {}
        token = signing.dumps(
            {
                "key": name,
                "exp": int(time.time()) + (expire if expire is not None else 900),
                "cd": parameters.get("ResponseContentDisposition", ""),
                "ct": parameters.get("ResponseContentType", ""),
            },
            salt=_URL_SALT,
            compress=True,
        )
        return reverse("file-download", kwargs={"token": token})


def file_download(request: HttpRequest, token: str) -> FileResponse:
    """Serves a file of SignedFileSystemStorage to whoever holds an unexpired signed URL.
    A bad or expired token answers 404, as an expired S3 URL answers 403: nothing leaks."""
    try:
        claims = signing.loads(token, salt=_URL_SALT)
    except signing.BadSignature:
        raise Http404("Invalid link") from None
    if claims["exp"] < time.time():
        raise Http404("Link expired")
    storage = downloads_storage()
    if not isinstance(storage, SignedFileSystemStorage) or not storage.exists(claims["key"]):
        raise Http404("No such file")
    response = FileResponse(storage.open(claims["key"], "rb"))
    response["Content-Type"] = claims["ct"] or "application/octet-stream"
    if claims["cd"]:
        response["Content-Disposition"] = claims["cd"]
    response["Cache-Control"] = "private, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response


class StagedWrite(Protocol):
    """A file being written into storage; visible under its key only after `commit`."""

    upload_id: str

    def write(self, data: bytes) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


class S3MultipartWrite:
    """Buffers up to one part (S3's 5 MiB minimum or more) and uploads it; memory per job
    stays at about one part whatever the file's size."""

    def __init__(self, storage: S3Storage, key: str, *, content_type: str, part_bytes: int) -> None:
        self.client: Any = storage.connection.meta.client
        self.bucket = storage.bucket_name
        self.key = storage._normalize_name(key)
        self.part_bytes = max(part_bytes, 5 * 1024 * 1024)
        self.buffer = bytearray()
        self.parts: list[dict[str, Any]] = []
        with _storage_errors():
            created = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, ContentType=content_type
            )
        self.upload_id: str = created["UploadId"]

    def _flush(self) -> None:
        number = len(self.parts) + 1
        with _storage_errors():
            uploaded = self.client.upload_part(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                PartNumber=number,
                Body=bytes(self.buffer),
            )
        self.parts.append({"PartNumber": number, "ETag": uploaded["ETag"]})
        self.buffer.clear()

    def write(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= self.part_bytes:
            self._flush()

    def commit(self) -> None:
        if self.buffer or not self.parts:
            self._flush()
        with _storage_errors():
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},
            )

    def abort(self) -> None:
        s3_multipart_abort(self.client, self.bucket, self.key, self.upload_id)


def s3_multipart_abort(client: Any, bucket: str, key: str, upload_id: str) -> None:
    try:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
            raise


class LocalWrite:
    """Writes `<key>.<upload_id>.part` beside the final name and renames it into place."""

    def __init__(self, storage: FileSystemStorage, key: str) -> None:
        self.final_path = Path(storage.path(key))
        self.final_path.parent.mkdir(parents=True, exist_ok=True)
        self.upload_id = os.urandom(8).hex()
        self.part_path = self.final_path.with_name(f"{self.final_path.name}.{self.upload_id}.part")
        self.handle = self.part_path.open("wb")

    def write(self, data: bytes) -> None:
        try:
            self.handle.write(data)
        except OSError as exc:
            raise JobError(ErrorCode.STORAGE_ERROR, "Could not write to storage") from exc

    def commit(self) -> None:
        self.handle.close()
        os.replace(self.part_path, self.final_path)

    def abort(self) -> None:
        self.handle.close()
        self.part_path.unlink(missing_ok=True)


@contextmanager
def _storage_errors() -> Iterator[None]:
    """Turns boto errors into STORAGE_ERROR (retryable) without their details."""
    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise JobError(ErrorCode.STORAGE_ERROR, "Storage refused the upload") from exc


def staged_write_open(key: str, *, content_type: str, part_bytes: int) -> StagedWrite:
    storage = downloads_storage()
    if isinstance(storage, S3Storage):
        return S3MultipartWrite(storage, key, content_type=content_type, part_bytes=part_bytes)
    if isinstance(storage, FileSystemStorage):
        return LocalWrite(storage, key)
    raise TypeError(f"Unsupported downloads storage {type(storage).__name__}")


def stored_file_delete(key: str, *, upload_id: str = "") -> None:
    """Deletes a stored file and aborts its unfinished upload, if any. Idempotent."""
    storage = downloads_storage()
    if upload_id and isinstance(storage, S3Storage):
        client = storage.connection.meta.client
        s3_multipart_abort(client, storage.bucket_name, storage._normalize_name(key), upload_id)
    elif upload_id and isinstance(storage, FileSystemStorage):
        final = Path(storage.path(key))
        final.with_name(f"{final.name}.{upload_id}.part").unlink(missing_ok=True)
    if key:
        storage.delete(key)
