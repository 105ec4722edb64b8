"""How the settings read the environment: `env` (django-environ, with the `.env` file of
the checkout if there is one), the checkout's and the runtime files' folders, and the
readers of values that are checked as they are read (rates, dates), so that a value the
service cannot use stops the start-up rather than the first request that needs it."""

from datetime import UTC, datetime, time
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured
from django.utils.dateparse import parse_date, parse_datetime

from jobs.rates import rate_parse

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = environ.Env()
# parse_comments: the inline `# ...` notes of .env.example stay out of the values.
environ.Env.read_env(BASE_DIR / ".env", overwrite=False, parse_comments=True)

# Runtime files of the embedded default: SQLite database, local storage, Redis.
VAR_DIR = Path(env("VAR_DIR", default=str(BASE_DIR / "var")))


def rate(name: str, default: str) -> str:
    """A rate setting (`<n>/<second|minute|hour|day>`, jobs/rates.py), checked now."""
    value = str(env(name, default=default))
    if value:
        try:
            amount = rate_parse(value).amount
        except ValueError:
            amount = 0
        if amount < 1:
            raise ImproperlyConfigured(f"{name} is {value!r}: a rate such as 50/minute")
    return value


def aware_datetime(name: str, default: str) -> datetime | None:
    """A date (midnight UTC) or an ISO time with its offset; None if empty."""
    value = env(name, default=default)
    if not value:
        return None
    parsed = parse_datetime(value) or (
        datetime.combine(parsed_date, time.min, tzinfo=UTC) if (parsed_date := parse_date(value)) else None
    )
    if parsed is None or parsed.tzinfo is None:
        raise ImproperlyConfigured(f"{name} is {value!r}: a date (2027-06-01) or an ISO time with its offset")
    return parsed
