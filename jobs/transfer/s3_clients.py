"""The boto3 clients of an S3 downloads storage, and how its errors reach a job.

Imported only once the downloads storage is S3 (see jobs/transfer/storage.py): a process
on local storage never loads boto3 or botocore.
"""

import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError
from django.core.files.storage import Storage
from storages.utils import safe_join

from jobs.errors import ErrorCode, JobError

if TYPE_CHECKING:
    from storages.backends.s3 import S3Storage


_sessions_lock = threading.Lock()
_s3_sessions: "weakref.WeakKeyDictionary[Storage, Any]" = weakref.WeakKeyDictionary()
_thread_clients = threading.local()


def s3_object_key(storage: "S3Storage", name: str) -> str:
    """The bucket key of a storage name, as S3Storage makes it (under its `location`; a
    name that climbs out of it is refused)."""
    return str(safe_join(storage.location, name))


def s3_client(storage: "S3Storage") -> Any:
    """This thread's boto3 client of the storage's bucket, made from the process's one boto3
    session of it: its service models are loaded once, and a client then costs about 8 ms
    and 350 KiB, where django-storages makes a session and a resource in every thread (tens
    of ms and a few MiB each, times hundreds of job threads). A client per thread rather
    than one for all: botocore's retry quota is a client's, and each job keeps its retries
    to ride out a short outage of the store (AWS_S3_MAX_ATTEMPTS) however many others fail
    at once. A job's part uploads use its client (boto3 clients are thread-safe)."""
    clients = getattr(_thread_clients, "by_storage", None)
    if clients is None:
        clients = _thread_clients.by_storage = weakref.WeakKeyDictionary()
    client = clients.get(storage)
    if client is None:
        with _sessions_lock:  # a boto3 session makes one client at a time
            session = _s3_sessions.get(storage)
            if session is None:
                session = _s3_sessions[storage] = storage._create_session()
            client = session.client(
                "s3",
                region_name=storage.region_name,
                use_ssl=storage.use_ssl,
                endpoint_url=storage.endpoint_url,
                config=storage.client_config,
                verify=storage.verify,
            )
        clients[storage] = client
    return client


def _forget_clients_after_fork() -> None:
    """A forked child (Celery's prefork pool) must not share its parent's connections."""
    global _sessions_lock, _thread_clients
    _sessions_lock = threading.Lock()
    _s3_sessions.clear()
    _thread_clients = threading.local()


os.register_at_fork(after_in_child=_forget_clients_after_fork)


@contextmanager
def s3_errors() -> Iterator[None]:
    """Turns boto errors into STORAGE_ERROR (retryable) without their details."""
    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise JobError(ErrorCode.STORAGE_ERROR, "Storage refused the upload") from exc


def s3_error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def s3_multipart_abort(client: Any, bucket: str, key: str, upload_id: str) -> None:
    """Aborts the multipart upload; one already gone is not an error."""
    try:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except ClientError as exc:
        if s3_error_code(exc) != "NoSuchUpload":
            raise
