"""`manage.py s3_lifecycle_install`: the retention rule as the bucket's own lifecycle.

Beat's `download_jobs_expire` deletes each file when its job expires; this rule is the
backstop that deletes whatever it missed (a failed delete, beat not running) and the
parts of multipart uploads that no worker finished or aborted. S3 counts lifecycle
expiry in whole days from the object's creation (and runs it about once a day), so the
rule keeps a file up to JOB_RETENTION_S rounded up to days, plus up to a day: later than
beat, never sooner. Other rules of the bucket are kept; ours is replaced by its ID.
"""

import json
import math
from typing import Any

from botocore.exceptions import ClientError
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from storages.backends.s3 import S3Storage

from jobs.transfer.s3_clients import s3_object_key
from jobs.transfer.storage import downloads_storage

RULE_ID = "downloads-retention"
SECONDS_PER_DAY = 86400


def retention_rule(storage: S3Storage) -> dict[str, Any]:
    prefix = s3_object_key(storage, settings.DOWNLOADS_LOCATION).rstrip("/") + "/"
    return {
        "ID": RULE_ID,
        "Filter": {"Prefix": prefix},
        "Status": "Enabled",
        "Expiration": {"Days": max(1, math.ceil(settings.JOB_RETENTION_S / SECONDS_PER_DAY))},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
    }


class Command(BaseCommand):
    help = "Install the downloads retention rule as the S3 bucket's lifecycle configuration."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--dry-run", action="store_true", help="print the configuration, change nothing")

    def handle(self, *args: Any, dry_run: bool, **options: Any) -> None:
        storage = downloads_storage()
        if not isinstance(storage, S3Storage):
            raise CommandError(
                f"The downloads storage is {type(storage).__name__}, not S3: set AWS_STORAGE_BUCKET_NAME "
                "(a local storage has no lifecycle; beat's download_jobs_expire deletes its files)"
            )
        client = storage.connection.meta.client
        bucket = storage.bucket_name
        try:
            current = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
                raise CommandError(f"Could not read the lifecycle of {bucket}: {exc}") from exc
            current = []
        configuration = {
            "Rules": [*(rule for rule in current if rule.get("ID") != RULE_ID), retention_rule(storage)]
        }
        if dry_run:
            self.stdout.write(json.dumps(configuration, indent=2))
            return
        try:
            client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=configuration)
        except ClientError as exc:
            raise CommandError(f"Could not set the lifecycle of {bucket}: {exc}") from exc
        days = configuration["Rules"][-1]["Expiration"]["Days"]
        self.stdout.write(f"Lifecycle of {bucket}: {RULE_ID} expires downloads after {days} day(s).")
