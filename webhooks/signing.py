"""Secrets and signatures of the Standard Webhooks specification, through its reference
library (`standardwebhooks`): a receiver verifying with `Webhook(secret).verify(body,
headers)` accepts what is signed here."""

import base64
import secrets
from datetime import datetime

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"  # noqa: S105 (the prefix, not a secret)
SECRET_BYTES = 32


def secret_new() -> str:
    """`whsec_` + base64 of 32 bytes from the OS CSPRNG."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def signature_header(signing_secrets: list[str], *, message_id: str, timestamp: datetime, body: str) -> str:
    """The `webhook-signature` value: one `v1,<base64 HMAC-SHA256>` per secret, space-separated
    (the new and the old one during a rotation's overlap)."""
    return " ".join(
        Webhook(secret).sign(msg_id=message_id, timestamp=timestamp, data=body) for secret in signing_secrets
    )
