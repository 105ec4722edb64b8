"""The old synchronous POST /download/start, until its sunset."""

from datetime import datetime

from django.core.exceptions import ImproperlyConfigured

from downloads_project.settings.environment import aware_datetime, env

# The old synchronous POST /download/start (legacy/policy.py, docs/api.md "Migrating from
# POST /download/start"): it waits for its job at most LEGACY_WAIT_S without holding a
# thread (below common proxies' 30-60 s), answers LEGACY_ASYNC_PERCENT of users (stable
# per user) at once with the new flow's 202, and answers 410 once LEGACY_SUNSET_AT has
# passed or with LEGACY_ENABLED=false. Every answer says when it was deprecated and when it
# goes (Deprecation, Sunset) and links the successor and LEGACY_MIGRATION_URL.
LEGACY_ENABLED = env.bool("LEGACY_ENABLED", default=True)
LEGACY_WAIT_S = env.float("LEGACY_WAIT_S", default=20.0)
LEGACY_ASYNC_PERCENT = env.int("LEGACY_ASYNC_PERCENT", default=0)
if not 0 <= LEGACY_ASYNC_PERCENT <= 100:
    raise ImproperlyConfigured(f"LEGACY_ASYNC_PERCENT is {LEGACY_ASYNC_PERCENT}: 0 to 100")
# Waits at once: of one user across every web process (past it, the 202 at once), and of
# one web process (each a few KiB on its loop and a channel-layer subscription).
LEGACY_WAITS_PER_USER = env.int("LEGACY_WAITS_PER_USER", default=5)
LEGACY_WAITS_PER_PROCESS = env.int("LEGACY_WAITS_PER_PROCESS", default=500)
# Rows of "Legacy callers" per user: one per User-Agent up to this many, the rest counted
# together in one row of the agent "(other)".
LEGACY_CALLER_AGENTS_PER_USER = env.int("LEGACY_CALLER_AGENTS_PER_USER", default=10)
if LEGACY_CALLER_AGENTS_PER_USER < 1:
    raise ImproperlyConfigured("LEGACY_CALLER_AGENTS_PER_USER must be 1 or more")


_deprecated_at = aware_datetime("LEGACY_DEPRECATED_AT", "2026-12-01T00:00:00+00:00")
if _deprecated_at is None:
    raise ImproperlyConfigured("LEGACY_DEPRECATED_AT is empty: every answer of the old endpoint says it")
LEGACY_DEPRECATED_AT: datetime = _deprecated_at
LEGACY_SUNSET_AT = aware_datetime("LEGACY_SUNSET_AT", "2027-06-01T00:00:00+00:00")
LEGACY_MIGRATION_URL = env("LEGACY_MIGRATION_URL", default="/api/docs/")
