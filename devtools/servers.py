"""Running local servers for the tests and the benchmarks: free ports, waiting for a
server to listen, and an S3 endpoint (moto's standalone server, a real HTTP endpoint
speaking the S3 protocol, unless AWS_S3_ENDPOINT_URL names one)."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

# The one free_port, the embedded Redis's: the tests and benchmarks import it from here.
from stack.embedded import free_port as free_port


def wait_for_port(port: int, *, timeout_s: float = 30, process: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port}")


@dataclass
class S3Endpoint:
    endpoint_url: str
    bucket: str
    env: dict[str, str]
    server: subprocess.Popen[bytes] | None = None  # the moto server, when it is ours

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env["AWS_S3_REGION_NAME"],
        )

    def keys(self) -> list[str]:
        listed = self.client().list_objects_v2(Bucket=self.bucket)
        return [item["Key"] for item in listed.get("Contents", [])]

    def open_multipart_uploads(self) -> list[dict[str, Any]]:
        return self.client().list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])

    def empty_and_delete_bucket(self) -> None:
        client = self.client()
        for upload in self.open_multipart_uploads():
            client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=self.bucket, Key=item["Key"])
        client.delete_bucket(Bucket=self.bucket)


@contextmanager
def s3_endpoint(*, bucket_prefix: str) -> Iterator[S3Endpoint]:
    """The S3 endpoint of AWS_S3_ENDPOINT_URL, or a moto server of our own, with a fresh
    bucket that is removed afterwards. moto does not enforce presigned-URL expiry."""
    endpoint = os.environ.get("AWS_S3_ENDPOINT_URL")
    server = None
    if not endpoint:
        port = free_port()
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C must not stop it before the cleanup ran
        )
        wait_for_port(port, process=server)
        endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_S3_ENDPOINT_URL": endpoint,
        "AWS_STORAGE_BUCKET_NAME": f"{bucket_prefix}-{os.getpid()}",
        "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        "AWS_S3_REGION_NAME": os.environ.get("AWS_S3_REGION_NAME", "us-east-1"),
    }
    s3 = S3Endpoint(endpoint_url=endpoint, bucket=env["AWS_STORAGE_BUCKET_NAME"], env=env, server=server)
    try:
        s3.client().create_bucket(Bucket=s3.bucket)
        yield s3
        if server is None:
            s3.empty_and_delete_bucket()
    finally:
        if server is not None:
            with suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=10)
