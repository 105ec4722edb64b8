"""Where files come from: the origin, its timeouts and redirects, its circuit breaker and
its limits (jobs/transfer/)."""

from django.core.exceptions import ImproperlyConfigured

from downloads_project.settings.celery import JOB_HARD_TIME_LIMIT_S, JOB_SOFT_TIME_LIMIT_S
from downloads_project.settings.environment import VAR_DIR, env, rate
from downloads_project.settings.jobs import JOB_HEARTBEAT_INTERVAL_S, JOB_HEARTBEAT_STALE_S

ORIGIN = env("ORIGIN", default="synthetic")  # synthetic | http | directory
ORIGIN_URL_TEMPLATE = env("ORIGIN_URL_TEMPLATE", default="")  # e.g. https://files.internal/{file_id}
ORIGIN_CONNECT_TIMEOUT_S = env.float("ORIGIN_CONNECT_TIMEOUT_S", default=10.0)
ORIGIN_READ_TIMEOUT_S = env.float("ORIGIN_READ_TIMEOUT_S", default=30.0)
if JOB_HEARTBEAT_STALE_S <= 2 * (ORIGIN_READ_TIMEOUT_S + JOB_HEARTBEAT_INTERVAL_S):
    raise ImproperlyConfigured(
        "JOB_HEARTBEAT_STALE_S must exceed twice ORIGIN_READ_TIMEOUT_S + JOB_HEARTBEAT_INTERVAL_S, "
        "or the reaper would restart live jobs"
    )
# The http origin connects to ORIGIN_URL_TEMPLATE's scheme, host and port, trusted as
# configured, and follows at most ORIGIN_MAX_REDIRECTS redirects, there or to these hosts
# only ("host" on its scheme's port, "host:port"), which must resolve to public addresses.
ORIGIN_ALLOWED_HOSTS = env.list("ORIGIN_ALLOWED_HOSTS", default=[])
ORIGIN_MAX_REDIRECTS = env.int("ORIGIN_MAX_REDIRECTS", default=5)
ORIGIN_DIRECTORY = env("ORIGIN_DIRECTORY", default=str(VAR_DIR / "origin"))
# Synthetic origin: deterministic bytes at a fixed rate, sized so a demo job takes ~20 s.
SYNTHETIC_FILE_BYTES = env.int("SYNTHETIC_FILE_BYTES", default=40 * 1024 * 1024)
SYNTHETIC_RATE_BPS = env.int("SYNTHETIC_RATE_BPS", default=2 * 1024 * 1024)  # 0 = unthrottled
# Circuit breaker per origin, shared by every process through hot-state Redis
# (jobs/transfer/breaker.py): it opens when failures / outcomes in the last WINDOW_S reach
# FAILURE_RATIO with at least MIN_CALLS outcomes, stays open OPEN_S, then lets one probe
# through. A probe whose outcome never comes (its worker died) frees the slot after
# PROBE_TIMEOUT_S: by default the soft time limit plus a margin, past the hard limit at
# which the worker is killed.
ORIGIN_BREAKER_WINDOW_S = env.int("ORIGIN_BREAKER_WINDOW_S", default=60)
ORIGIN_BREAKER_MIN_CALLS = env.int("ORIGIN_BREAKER_MIN_CALLS", default=5)
ORIGIN_BREAKER_FAILURE_RATIO = env.float("ORIGIN_BREAKER_FAILURE_RATIO", default=0.5)
ORIGIN_BREAKER_OPEN_S = env.float("ORIGIN_BREAKER_OPEN_S", default=30.0)
ORIGIN_BREAKER_PROBE_TIMEOUT_S = env.float(
    "ORIGIN_BREAKER_PROBE_TIMEOUT_S", default=float(max(JOB_SOFT_TIME_LIMIT_S, JOB_HARD_TIME_LIMIT_S) + 30)
)
if not 0 < ORIGIN_BREAKER_FAILURE_RATIO <= 1:
    raise ImproperlyConfigured("ORIGIN_BREAKER_FAILURE_RATIO must be above 0 and at most 1")
# Per-origin protection (jobs/transfer/origin_limits.py), per origin as its breaker is,
# shared by every worker through hot-state Redis. ORIGIN_MAX_IN_FLIGHT:
# attempts running against the origin at once (0: no limit). ORIGIN_START_RATE: how fast
# attempts may start against it, `<n>/<second|minute|hour|day>` such as 50/minute (empty:
# no limit). A job held back by either stays queued (ORIGIN_BUSY) and uses no attempt.
# Both off by default: a worker is meant to hold hundreds of jobs at once.
ORIGIN_MAX_IN_FLIGHT = env.int("ORIGIN_MAX_IN_FLIGHT", default=0)
if ORIGIN_MAX_IN_FLIGHT < 0:
    raise ImproperlyConfigured("ORIGIN_MAX_IN_FLIGHT must be 0 (no limit) or more")
ORIGIN_START_RATE = rate("ORIGIN_START_RATE", default="")
