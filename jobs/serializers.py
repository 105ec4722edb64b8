"""Input validation of the API. Output is built by `selectors.download_job_status`."""

import json
import re
from typing import Any

from django.conf import settings
from rest_framework import serializers

from .models import Priority, Status

MAX_FILE_ID = 2**63 - 1
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer only: not a string of digits, a float or a boolean."""

    default_error_messages = {"invalid": "A JSON integer is required."}

    def to_internal_value(self, data: Any) -> int:
        if type(data) is not int:
            self.fail("invalid")
        return super().to_internal_value(data)


class DownloadJobInitiateSerializer(serializers.Serializer[dict[str, Any]]):
    file_id = StrictIntegerField(min_value=1, max_value=MAX_FILE_ID)
    priority = serializers.ChoiceField(choices=Priority.choices, default=Priority.NORMAL)
    metadata = serializers.DictField(required=False, default=dict)
    # Accepted for the seed's clients and ignored: a job belongs to the authenticated user.
    user_id = serializers.CharField(required=False, allow_blank=True, max_length=100)

    def validate_metadata(self, value: dict[str, Any]) -> dict[str, Any]:
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
        if size > settings.JOB_METADATA_MAX_BYTES:
            raise serializers.ValidationError(
                f"Metadata is {size} bytes serialized; at most {settings.JOB_METADATA_MAX_BYTES} are allowed."
            )
        return value


def idempotency_key_validate(value: str | None) -> str | None:
    if value is None:
        return None
    if not _IDEMPOTENCY_KEY.match(value):
        raise serializers.ValidationError(
            {"Idempotency-Key": ["At most 255 printable ASCII characters without spaces."]}
        )
    return value


class DownloadJobListFilterSerializer(serializers.Serializer[dict[str, Any]]):
    status = serializers.ChoiceField(choices=["active", *Status.values], required=False)
