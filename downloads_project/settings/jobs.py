"""Download jobs: retries, limits and rates, reuse and retention, the estimate, hot state,
heartbeats and API keys."""

from django.core.exceptions import ImproperlyConfigured

from downloads_project.settings.environment import env, rate

JOB_MAX_ATTEMPTS = env.int("JOB_MAX_ATTEMPTS", default=3)
JOB_RETRY_BACKOFF_S = env.float("JOB_RETRY_BACKOFF_S", default=5.0)  # 5, 10, 20 ...
JOB_RETRY_BACKOFF_MAX_S = env.float("JOB_RETRY_BACKOFF_MAX_S", default=300.0)
JOB_RETRY_JITTER = env.float("JOB_RETRY_JITTER", default=0.2)  # +/- 20 %
JOB_MAX_ACTIVE_PER_USER = env.int("JOB_MAX_ACTIVE_PER_USER", default=5)
JOB_ACTIVE_LIMIT_RETRY_AFTER_S = env.int("JOB_ACTIVE_LIMIT_RETRY_AFTER_S", default=30)

# Initiate rates (`<n>/<second|minute|hour|day>`), counted in Redis so every API process
# shares them: per user, and per client IP (see CLIENT_IP_HEADER).
JOB_INITIATE_RATE = rate("JOB_INITIATE_RATE", default="10/minute")
# Well above the per-user rate: many users share one address behind a NAT or a proxy.
JOB_INITIATE_RATE_PER_IP = rate("JOB_INITIATE_RATE_PER_IP", default="100/minute")
# Behind a proxy, the client's address comes from this header (e.g. X-Forwarded-For or
# X-Real-IP), and only from it: the proxy must overwrite or append to it. Of a list, the
# entry CLIENT_IP_PROXY_COUNT from the right is taken (the one our own proxy appended).
# Empty: the socket's peer address (REMOTE_ADDR), as when clients connect directly.
CLIENT_IP_HEADER = env("CLIENT_IP_HEADER", default="")
CLIENT_IP_PROXY_COUNT = env.int("CLIENT_IP_PROXY_COUNT", default=1)
# A request for a file that a job staged and that is still retained completes at once
# from the stored object: `owner` reuses the user's own files, `any` anyone's (only where
# every user may read every file of the origin), `off` never.
JOB_REUSE = env("JOB_REUSE", default="owner")
if JOB_REUSE not in ("off", "owner", "any"):
    raise ImproperlyConfigured(f"JOB_REUSE is {JOB_REUSE!r}: use off, owner or any")
# A reused file is served only if it stays retained at least this long.
JOB_REUSE_MIN_REMAINING_S = env.int("JOB_REUSE_MIN_REMAINING_S", default=3600)
JOB_RETENTION_S = env.int("JOB_RETENTION_S", default=24 * 3600)
# Rows of ended jobs (failed, cancelled, expired) are deleted this long after their last
# change, by beat, in batches. Longer than the analytics window (7 days), which it keeps true.
JOB_AUDIT_RETENTION_DAYS = env.int("JOB_AUDIT_RETENTION_DAYS", default=90)
if JOB_AUDIT_RETENTION_DAYS <= 7:
    raise ImproperlyConfigured("JOB_AUDIT_RETENTION_DAYS must exceed the 7 days of the analytics")
# A new job's estimated_time: the jobs ahead of it over the rate at which jobs completed
# within the last JOB_ESTIMATE_WINDOW_S, plus their mean duration (jobs/selectors.py);
# JOB_DEFAULT_ESTIMATE_S while none completed in that window.
JOB_DEFAULT_ESTIMATE_S = env.int("JOB_DEFAULT_ESTIMATE_S", default=60)
JOB_ESTIMATE_WINDOW_S = env.int("JOB_ESTIMATE_WINDOW_S", default=120)
if not 10 <= JOB_ESTIMATE_WINDOW_S <= 3600:
    raise ImproperlyConfigured("JOB_ESTIMATE_WINDOW_S must be from 10 to 3600 (seconds)")
# A queued job's queue_position is read from a snapshot of the line in hot-state Redis
# (jobs/queue_line.py), read again from the database at most this often (0.5-60 s).
QUEUE_LINE_MAX_AGE_S = env.float("QUEUE_LINE_MAX_AGE_S", default=2.0)
if not 0.5 <= QUEUE_LINE_MAX_AGE_S <= 60:
    raise ImproperlyConfigured("QUEUE_LINE_MAX_AGE_S must be from 0.5 to 60 (seconds)")
JOB_POLLING_INTERVAL_MS = env.int("JOB_POLLING_INTERVAL_MS", default=2000)
JOB_METADATA_MAX_BYTES = 4096
JOB_MAX_FILE_BYTES = env.int("JOB_MAX_FILE_BYTES", default=10 * 1024**3)

PRESIGNED_URL_TTL_S = env.int("PRESIGNED_URL_TTL_S", default=15 * 60)

JOB_HEARTBEAT_INTERVAL_S = env.float("JOB_HEARTBEAT_INTERVAL_S", default=5.0)
HOT_STATE_TTL_S = env.int("HOT_STATE_TTL_S", default=3600)
# Polling reads a job's card (a copy of its row in hot-state Redis, replaced after each
# write of the row) and a token's user from the cache, not the database. A card unused
# this long is dropped; the next poll reads the row once and writes it again.
JOB_CARD_TTL_S = env.int("JOB_CARD_TTL_S", default=300)
# An API key's user, cached this long: a deleted key or a changed user is dropped from the
# cache by signal, and again on commit (jobs/api_keys.py).
TOKEN_CACHE_TTL_S = env.int("TOKEN_CACHE_TTL_S", default=60)
# API keys (jobs/api_keys.py) are django-rest-knox tokens in jobs.ApiKey: stored as a digest,
# sent as `Authorization: Token <key>`, valid until deleted (no expiry).
KNOX_TOKEN_MODEL = "jobs.ApiKey"  # noqa: S105 (a model, not a secret)
REST_KNOX = {"TOKEN_TTL": None, "TOKEN_PREFIX": "dlk_", "AUTH_HEADER_PREFIX": "Token"}
# knox's own model is swapped out for jobs.ApiKey, but its migrations would still make its
# table (unused, and holding a foreign key to users): they are not run.
MIGRATION_MODULES = {"knox": None}
# The reaper re-queues a processing job whose worker sent no heartbeat (to hot-state Redis,
# every JOB_HEARTBEAT_INTERVAL_S while chunks flow) for this long. A live attempt can
# wait up to ORIGIN_READ_TIMEOUT_S for one chunk, so the threshold must be well above both.
JOB_HEARTBEAT_STALE_S = env.float("JOB_HEARTBEAT_STALE_S", default=90.0)
# ... and sends again a queued job no worker took for this long (the broker lost it).
JOB_QUEUED_STALE_S = env.float("JOB_QUEUED_STALE_S", default=600.0)
