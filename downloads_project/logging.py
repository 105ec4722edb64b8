"""Keeps credentials out of the logs: `RedactSecrets`, a filter on every handler.

What it hides: `?token=` keys and `?ticket=` tickets (the WebSocket's auth, which uvicorn
logs with the path), `Authorization` values, API keys (and the DRF token keys before
them), the signature and credentials of S3 presigned URLs, the signed links of local
storage (`/files/<token>`: whoever holds one may download the file), passwords in URLs,
and the values of DJANGO_SECRET_KEY and AWS_SECRET_ACCESS_KEY wherever they appear.

A secret can sit across the format string and its arguments (`"token=%s", key`), so the
message is formatted first and then redacted; the record keeps its arguments only when
redacting them one by one gives the same text (uvicorn's access formatter reads them).
"""

import logging
import os
import re
from typing import Any

REDACTED = "[REDACTED]"
SECRET_ENV_NAMES = ("DJANGO_SECRET_KEY", "AWS_SECRET_ACCESS_KEY")
_MIN_SECRET_CHARS = 8  # a shorter "secret" would redact ordinary words

_QUERY_VALUE = r"[^&\s\"'<>#,;]+"
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # `Authorization: Token k`, `'HTTP_AUTHORIZATION': 'Bearer k'`, `authorization=Basic k`
    (
        re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?\s*(?:(?:token|bearer|basic)\s+)?)[^\s\"',}]+"),
        rf"\1{REDACTED}",
    ),
    # `Token k` / `Bearer k` without the header name: only key-like words, not prose.
    (re.compile(r"\b(Token|Bearer)\s+[A-Za-z0-9._~+/=-]{20,}"), rf"\1 {REDACTED}"),
    # `?token=`, `access_token=`, `X-Amz-Security-Token=`, `csrfmiddlewaretoken=`
    # (the look-behind starts a match only where a name starts: without it the search
    # tried every position of every word, the slowest step of redacting a log line)
    (re.compile(rf"(?i)(?<![\w-])([\w-]*token=){_QUERY_VALUE}"), rf"\1{REDACTED}"),
    # `?ticket=` of a job's websocket_url (jobs/tickets.py): short-lived, but it opens the socket.
    (re.compile(rf"(?i)(?<![\w-])(ticket=){_QUERY_VALUE}"), rf"\1{REDACTED}"),
    (
        re.compile(rf"(?i)((?:X-Amz-Signature|X-Amz-Credential|Signature|AWSAccessKeyId)=){_QUERY_VALUE}"),
        rf"\1{REDACTED}",
    ),
    (re.compile(rf"(?i)\b((?:sessionid|csrftoken)=){_QUERY_VALUE}"), rf"\1{REDACTED}"),
    # The local storage's signed download links (jobs/transfer/storage.py): the token is the link.
    # (signed tokens are long; a short segment such as an origin's `/files/70000` is not one)
    (re.compile(r"(/files/)[^/\s?#\"'<>]{30,}"), rf"\1{REDACTED}"),
    # scheme://user:password@host
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/\s@]*:)[^@\s/]+@"), rf"\1{REDACTED}@"),
    # API keys (jobs/api_keys.py): `dlk_` + 64 hex characters; those made before them (DRF's
    # tokens): 40 hex characters on their own (a sha256 is 64, a job id has `job_`).
    (re.compile(r"\bdlk_[0-9a-f]{64}\b"), REDACTED),
    (re.compile(r"\b[0-9a-f]{40}\b"), REDACTED),
]


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """Rewrites each record it passes so that no secret it knows of remains; drops none."""

    def __init__(self, name: str = "", secret_env_names: tuple[str, ...] = SECRET_ENV_NAMES) -> None:
        super().__init__(name)
        values = (os.environ.get(env_name, "") for env_name in secret_env_names)
        # Longest first, so a secret that contains another is replaced whole.
        self.secrets = tuple(
            sorted({v for v in values if len(v) >= _MIN_SECRET_CHARS}, key=len, reverse=True)
        )

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format: leave it to the handler's own error report
            return True
        redacted = redact(message, self.secrets)
        if redacted != message:
            self._rewrite(record, redacted)
        if record.exc_info and not record.exc_text:
            # Formatted once here, as the handler's formatter would, and cached on the record.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        return True

    def _rewrite(self, record: logging.LogRecord, redacted: str) -> None:
        if isinstance(record.args, tuple) and isinstance(record.msg, str):
            args = tuple(redact(a, self.secrets) if isinstance(a, str) else a for a in record.args)
            msg = redact(record.msg, self.secrets)
            try:
                if msg % args == redacted:
                    record.msg, record.args = msg, args
                    return
            except (TypeError, ValueError):
                pass
        record.msg, record.args = redacted, ()
        # uvicorn prefers a coloured copy of the message when a record carries one.
        record.__dict__.pop("color_message", None)


def redact_handlers(logger: Any, **kwargs: Any) -> None:
    """Adds the filter to a logger's handlers: for Celery, which replaces Django's root
    handlers with its own (connect to `after_setup_logger` / `after_setup_task_logger`)."""
    for handler in logger.handlers:
        if not any(isinstance(existing, RedactSecrets) for existing in handler.filters):
            handler.addFilter(RedactSecrets())
