"""Webhooks: checking a delivery's signature (`verify_webhook`), and the shapes of the
endpoints and deliveries the API lists.

A delivery follows the Standard Webhooks specification (https://www.standardwebhooks.com):
headers `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature` (one or
more `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, space-separated), signed with the
endpoint's secret `whsec_<base64 key>`. The check is written here, on the standard library,
rather than taken from the `standardwebhooks` package, so the client needs nothing more
to verify; the tests hold it to that package's own signatures.
"""

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Webhook", "WebhookDelivery", "WebhookVerificationError", "verify_webhook"]

SECRET_PREFIX = "whsec_"  # noqa: S105 (the prefix of every secret, not one)
TOLERANCE_S = 5 * 60


class WebhookVerificationError(ValueError):
    """The delivery is not proven to come from the service: a header missing, a timestamp
    too old or too new, or no signature that the secret makes. `reason` says which."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _key(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("bad_secret", "The secret is not whsec_ followed by base64") from None


def _header(headers: Mapping[str, str], name: str) -> str:
    lowered = {key.lower(): value for key, value in headers.items()}
    value = lowered.get(name)
    if not value:
        raise WebhookVerificationError("missing_header", f"The delivery has no {name} header")
    return value


def verify_webhook(
    body: bytes | str,
    headers: Mapping[str, str],
    secret: str | Sequence[str],
    *,
    tolerance_s: float = TOLERANCE_S,
    now: float | None = None,
) -> dict[str, Any]:
    """The delivery's JSON payload, once its signature is checked; raises
    WebhookVerificationError otherwise. `body` is the request's body exactly as received
    (not re-serialized JSON). `secret` may be several (while an endpoint's secret is being
    rotated, either signs). The timestamp must be within `tolerance_s` (5 min) of `now`."""
    raw = body.encode() if isinstance(body, str) else bytes(body)
    message_id = _header(headers, "webhook-id")
    timestamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookVerificationError(
            "bad_timestamp", f"webhook-timestamp is not a number: {timestamp!r}"
        ) from None
    current = time.time() if now is None else now
    if sent_at < current - tolerance_s:
        raise WebhookVerificationError("timestamp_too_old", "The delivery's timestamp is too old")
    if sent_at > current + tolerance_s:
        raise WebhookVerificationError("timestamp_too_new", "The delivery's timestamp is in the future")
    signed = message_id.encode() + b"." + timestamp.encode() + b"." + raw
    offered = [
        value for version, _, value in (item.partition(",") for item in signatures.split()) if version == "v1"
    ]
    secrets = [secret] if isinstance(secret, str) else list(secret)
    for key in map(_key, secrets):
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        if any(hmac.compare_digest(expected, candidate) for candidate in offered):
            try:
                payload: dict[str, Any] = json.loads(raw)
            except ValueError:
                raise WebhookVerificationError("bad_body", "The signed body is not JSON") from None
            return payload
    raise WebhookVerificationError("no_matching_signature", "No signature of the delivery matches the secret")


@dataclass(frozen=True)
class Webhook:
    """An endpoint (`secret` only in the answer that created it)."""

    id: str
    url: str
    events: list[str]
    description: str = ""
    created_at: str | None = None
    disabled: bool = False
    disabled_reason: str = ""
    secret: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> "Webhook":
        return cls(
            id=str(data["id"]),
            url=str(data["url"]),
            events=list(data.get("events") or []),
            description=str(data.get("description") or ""),
            created_at=data.get("created_at"),
            disabled=bool(data.get("disabled")),
            disabled_reason=str(data.get("disabled_reason") or ""),
            secret=data.get("secret"),
            raw=data,
        )


@dataclass(frozen=True)
class WebhookDelivery:
    """One delivery of an event to an endpoint: its `id` is the `webhook-id` of every try."""

    id: str
    event: str
    job_id: str
    status: str
    attempts: int
    last_status_code: int | None = None
    last_error: str = ""
    next_attempt_at: str | None = None
    delivered_at: str | None = None
    created_at: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> "WebhookDelivery":
        return cls(
            id=str(data["id"]),
            event=str(data["event"]),
            job_id=str(data["job_id"]),
            status=str(data["status"]),
            attempts=int(data.get("attempts") or 0),
            last_status_code=data.get("last_status_code"),
            last_error=str(data.get("last_error") or ""),
            next_attempt_at=data.get("next_attempt_at"),
            delivered_at=data.get("delivered_at"),
            created_at=data.get("created_at"),
            raw=data,
        )
