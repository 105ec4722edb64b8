"""S3 in tests: the moto endpoint as the downloads storage, a look into its bucket, and a
watch on the storage's part uploads."""

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from storages.backends.s3 import S3Storage

from jobs.transfer.s3_clients import s3_client


def s3_downloads_storage(s3: Any, *, bucket: str | None = None) -> dict[str, Any]:
    """The `downloads` entry of settings.STORAGES for the moto endpoint, as
    downloads_project/settings/storage.py writes it."""
    return {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": bucket or s3.bucket,
            "endpoint_url": s3.endpoint_url,
            "region_name": s3.env["AWS_S3_REGION_NAME"],
            "access_key": s3.env["AWS_ACCESS_KEY_ID"],
            "secret_key": s3.env["AWS_SECRET_ACCESS_KEY"],
            "signature_version": "s3v4",
            "querystring_expire": 900,
            "file_overwrite": True,
            "default_acl": None,
        },
    }


class Bucket:
    """What is in the moto bucket under one test's key; one boto3 client for the module."""

    def __init__(self, s3: Any) -> None:
        self.name = s3.bucket
        self.client = s3.client()

    def has(self, key: str) -> bool:
        listed = self.client.list_objects_v2(Bucket=self.name, Prefix=key)
        return any(item["Key"] == key for item in listed.get("Contents", []))

    def read(self, key: str) -> dict[str, Any]:
        return self.client.get_object(Bucket=self.name, Key=key)

    def open_uploads(self, key: str) -> list[str]:
        uploads = self.client.list_multipart_uploads(Bucket=self.name, Prefix=key).get("Uploads", [])
        return [upload["UploadId"] for upload in uploads if upload["Key"] == key]


class UploadCalls:
    """Wraps the storage's client's `upload_part` (the client the writes share, this
    thread's) to record when each call starts and ends, how many run at once, and to
    delay a part or send it to an upload that does not exist (a real refusal by S3)."""

    def __init__(
        self,
        storage: S3Storage,
        monkeypatch: pytest.MonkeyPatch,
        *,
        delay_s: Callable[[int], float] = lambda n: 0.0,
        refused: frozenset[int] = frozenset(),
    ) -> None:
        self.client = s3_client(storage)
        self.calls: list[tuple[int, float, float]] = []  # part, start, end
        self.active = 0
        self.most_active = 0
        self.lock = threading.Lock()
        real = self.client.upload_part

        def upload_part(**kwargs: Any) -> Any:
            number = kwargs["PartNumber"]
            start = time.monotonic()
            with self.lock:
                self.active += 1
                self.most_active = max(self.most_active, self.active)
            try:
                time.sleep(delay_s(number))
                if number in refused:
                    kwargs = {**kwargs, "UploadId": "no-such-upload"}
                return real(**kwargs)
            finally:
                with self.lock:
                    self.active -= 1
                    self.calls.append((number, start, time.monotonic()))

        monkeypatch.setattr(self.client, "upload_part", upload_part)

    def ended(self, number: int) -> float:
        return next(end for part, _, end in self.calls if part == number)
