"""Input validation of the API. Output is built by `selectors.download_job_status`."""

import json
import re
from typing import Any

from django.conf import settings
from rest_framework import serializers

from jobs.models import Priority, Status

MAX_FILE_ID = 2**63 - 1
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # whole value: fullmatch, not `$` (allows a final \n)
METADATA_MAX_DEPTH = 32
# The ways of being told of a job's end that `notify` may name (notices/ sends them).
NOTIFY_CHANNELS = ("email",)


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer only: not a string of digits, a float or a boolean."""

    default_error_messages = {"invalid": "A JSON integer is required."}  # noqa: RUF012 (DRF merges it)

    def to_internal_value(self, data: Any) -> int:
        if type(data) is not int:
            self.fail("invalid")
        return super().to_internal_value(data)


def choice_field(choices: list[str], **kwargs: Any) -> serializers.ChoiceField:
    """DRF's ChoiceField, whose refusal lists the choices (DRF's own says only that the
    value is not one of them)."""
    listed = ", ".join(choices)
    return serializers.ChoiceField(
        choices=choices,
        error_messages={"invalid_choice": f'"{{input}}" is not a valid choice: one of {listed}.'},
        **kwargs,
    )


class DownloadJobInitiateSerializer(serializers.Serializer[dict[str, Any]]):
    file_id = StrictIntegerField(min_value=1, max_value=MAX_FILE_ID)
    priority = choice_field(
        Priority.values, default=Priority.NORMAL, help_text="The job's queue: `normal` unless given."
    )
    metadata = serializers.DictField(
        required=False, default=dict, help_text="At most 4 KiB serialized and 32 levels deep; no U+0000."
    )
    notify = serializers.ListField(
        child=serializers.ChoiceField(choices=NOTIFY_CHANNELS),
        required=False,
        max_length=8,
        help_text=(
            'How to tell the user that the job completed or failed: ["email"] sends one e-mail '
            "to the account's address; [] none. Without it, the user's default (the page's box)."
        ),
    )
    webhook_id = serializers.CharField(
        required=False,
        default="",
        allow_blank=True,
        max_length=40,
        help_text="One of your webhook endpoints: the job's end is sent there only "
        "(without it, to every endpoint subscribed to the event).",
    )
    # Accepted for clients that send it, and ignored: a job belongs to the authenticated user.
    user_id = serializers.CharField(required=False, allow_blank=True, max_length=100)

    def validate_metadata(self, value: dict[str, Any]) -> dict[str, Any]:
        if problem := _metadata_problem(value):
            raise serializers.ValidationError(problem)
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
        if size > settings.JOB_METADATA_MAX_BYTES:
            raise serializers.ValidationError(
                f"Metadata is {size} bytes serialized; at most {settings.JOB_METADATA_MAX_BYTES} are allowed."
            )
        return value


def _metadata_problem(value: Any) -> str | None:
    """What makes metadata unstorable, found without recursion (a deep body must not
    exhaust the stack here, nor later in `json.dumps`): nesting past METADATA_MAX_DEPTH,
    or U+0000, which PostgreSQL's jsonb refuses (a 500 on insert, were it let through)."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "Metadata may not contain the NUL character (U+0000)."
            continue
        if not isinstance(item, dict | list):
            continue
        if depth > METADATA_MAX_DEPTH:
            return f"Metadata may nest objects and arrays at most {METADATA_MAX_DEPTH} levels deep."
        if isinstance(item, dict):
            pending.extend((key, depth) for key in item)
            pending.extend((child, depth + 1) for child in item.values())
        else:
            pending.extend((child, depth + 1) for child in item)
    return None


def idempotency_key_validate(value: str | None) -> str | None:
    if value is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(value):
        raise serializers.ValidationError(
            {"Idempotency-Key": ["At most 255 printable ASCII characters without spaces."]}
        )
    return value


class DownloadJobListFilterSerializer(serializers.Serializer[dict[str, Any]]):
    status = choice_field(
        ["active", *Status.values],
        required=False,
        help_text="`active`: the queued and processing jobs; a status: the jobs in it.",
    )
