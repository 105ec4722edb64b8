"""S3 in tests: the moto endpoint as the downloads storage, and a look into its bucket."""

from typing import Any


def s3_downloads_storage(s3: Any, *, bucket: str | None = None) -> dict[str, Any]:
    """The `downloads` entry of settings.STORAGES for the moto endpoint, as settings.py writes it."""
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
