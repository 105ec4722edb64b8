"""Settings, read from the environment (see `.env.example` for every variable).

With no variable set the service runs on its embedded default: SQLite, the Redis that
`manage.py runstack` starts, local-filesystem storage with signed expiring URLs, and the
synthetic origin. Each production part is switched on by its variable.
"""

import os
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import environ
from botocore.config import Config as BotoConfig
from corsheaders.defaults import default_headers as cors_default_headers
from django.core.exceptions import ImproperlyConfigured
from django.utils.dateparse import parse_date, parse_datetime

from downloads_project import redis_servers, roles
from jobs.queues import DEFAULT_QUEUE, MAINTENANCE_QUEUE
from jobs.rates import rate_parse

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# parse_comments: the inline `# ...` notes of .env.example stay out of the values.
environ.Env.read_env(BASE_DIR / ".env", overwrite=False, parse_comments=True)

# Runtime files of the embedded default: SQLite database, local storage, Redis.
VAR_DIR = Path(env("VAR_DIR", default=str(BASE_DIR / "var")))

# --- Django core -------------------------------------------------------------------------

# Public, so only for the embedded default on 127.0.0.1; DJANGO_SECURE refuses it.
EMBEDDED_SECRET_KEY = "insecure-embedded-default-change-me"  # noqa: S105
SECRET_KEY = env("DJANGO_SECRET_KEY", default=EMBEDDED_SECRET_KEY)
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    # The table of the API keys before jobs.ApiKey: migration jobs 0009 moves its keys out
    # and empties it. Kept for one release so that migration can read it.
    "rest_framework.authtoken",
    "knox",
    "storages",
    "channels",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "jobs",
    "realtime",
    "legacy",  # the old endpoint and socket login: deleted with legacy/
    "axes",
    "corsheaders",
]

MIDDLEWARE = [
    # Outermost: `Cache-Control: no-store` on every API answer, whoever made it (jobs/api/cache_control.py).
    "jobs.api.cache_control.ApiNoStoreMiddleware",
    # Then: answers CORS preflights of /v1/ before any other middleware could (CORS_* below).
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: answers a sign-in attempt that the login protection refused (jobs/login_protection.py).
    "axes.middleware.AxesMiddleware",
]

# HTTP requests of a web process run on a pool of this many threads (downloads_project/
# asgi.py); a request beyond them waits for a free thread. Those that need the database
# borrow one of its DATABASE_POOL_MAX_SIZE connections; polling needs none.
WEB_THREADS = env.int("WEB_THREADS", default=20)

# What a slow or endless client may hold of a web process (docs/operations.md "What uvicorn
# itself bounds"). uvicorn's protocol (downloads_project/http_protocol.py): a request's line
# and headers must arrive within REQUEST_HEAD_TIMEOUT_S of a new connection or of the
# request's first byte (else 408 and closed; between requests, uvicorn's keep-alive) and fit in REQUEST_HEAD_MAX_BYTES (431), its URL in
# REQUEST_URL_MAX_BYTES (414). Before the thread pool (downloads_project/request_body.py):
# the whole body within REQUEST_BODY_TIMEOUT_S (408), at most REQUEST_BODY_MAX_BYTES (413).
# A client that takes nothing of an answer for SEND_IDLE_TIMEOUT_S loses its connection.
REQUEST_HEAD_TIMEOUT_S = env.float("REQUEST_HEAD_TIMEOUT_S", default=10.0)
REQUEST_HEAD_MAX_BYTES = env.int("REQUEST_HEAD_MAX_BYTES", default=64 * 1024)
REQUEST_URL_MAX_BYTES = env.int("REQUEST_URL_MAX_BYTES", default=8 * 1024)
REQUEST_BODY_TIMEOUT_S = env.float("REQUEST_BODY_TIMEOUT_S", default=10.0)
SEND_IDLE_TIMEOUT_S = env.float("SEND_IDLE_TIMEOUT_S", default=30.0)
# Django's own default (2.5 MB); Django's check of request.body and request.POST says the same.
REQUEST_BODY_MAX_BYTES = env.int("REQUEST_BODY_MAX_BYTES", default=2_621_440)
DATA_UPLOAD_MAX_MEMORY_SIZE = REQUEST_BODY_MAX_BYTES

ROOT_URLCONF = "downloads_project.urls"
WSGI_APPLICATION = "downloads_project.wsgi.application"
ASGI_APPLICATION = "downloads_project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_TZ = True
USE_I18N = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
# First: refuses a locked-out sign-in before any password is checked.
AUTHENTICATION_BACKENDS = [
    "jobs.web.login_protection.LoginProtectionBackend",
    "django.contrib.auth.backends.ModelBackend",
]

# Behind a TLS-terminating proxy that sets X-Forwarded-Proto. Only switch this on when
# the proxy strips the header from clients, or anyone can claim https.
if env.bool("TRUST_X_FORWARDED_PROTO", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
USE_X_FORWARDED_HOST = env.bool("USE_X_FORWARDED_HOST", default=False)

# One explicit switch, not a guess from DEBUG or the hosts: "this site is served to
# browsers over https only" (TLS at uvicorn, or at a proxy with TRUST_X_FORWARDED_PROTO).
# It makes the cookies Secure, redirects http to https and sends HSTS. Off by default,
# so the embedded default keeps working on http://127.0.0.1.
SECURE = env.bool("DJANGO_SECURE", default=False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = SECURE
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=SECURE)
# Probes of a load balancer or Kubernetes, and Prometheus, speak plain http to the pod.
SECURE_REDIRECT_EXEMPT = [r"^(health|ready|metrics)$"]
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=365 * 24 * 3600 if SECURE else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=SECURE)
# Hard to undo (browsers ship the list): an explicit choice; `check --deploy` warns until made.
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=False)
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# The page's script reads the csrftoken cookie to send X-CSRFToken (static/downloads.js);
# an HttpOnly CSRF cookie would break it and protect nothing (Django's CSRF docs).
CSRF_COOKIE_HTTPONLY = False
if SECURE and not DEBUG and SECRET_KEY == EMBEDDED_SECRET_KEY:
    raise ImproperlyConfigured("DJANGO_SECURE is on: set DJANGO_SECRET_KEY to a long random value")
# The public key signs sessions, CSRF tokens and download links: it may serve only this
# machine's own loopback names. The example files' placeholders are never a secret.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
if SECRET_KEY == EMBEDDED_SECRET_KEY and not set(ALLOWED_HOSTS) <= LOOPBACK_HOSTS:
    raise ImproperlyConfigured(
        "DJANGO_ALLOWED_HOSTS names hosts beyond this machine's loopback: "
        "set DJANGO_SECRET_KEY to a long random value (50+ characters)"
    )
if SECRET_KEY != EMBEDDED_SECRET_KEY and "change-me" in SECRET_KEY:
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY is an example file's placeholder: set it to a long random value (50+ characters)"
    )

# --- Database ----------------------------------------------------------------------------

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    # The web process and the worker write concurrently: WAL and a busy timeout keep
    # SQLite from answering "database is locked"; the test database is a file so that a
    # real worker process can open it too.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
else:
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # pg_stat_activity names each connection's role: web processes, or the others.
    DATABASES["default"].setdefault("OPTIONS", {})["application_name"] = env(
        "DATABASE_APPLICATION_NAME", default="downloads-web" if roles.is_web() else "downloads"
    )
    # Every process borrows its connections from psycopg's pool, at most
    # DATABASE_POOL_MAX_SIZE, whatever its threads: a web process runs each request in a
    # thread of its own, and a worker with the thread pool runs each job in one (200 by
    # default). A persistent connection per thread would be one per request or job until
    # PostgreSQL refused new ones. A job holds a connection only for each of its few writes
    # (jobs/services/attempt.py), so ten serve hundreds of jobs.
    # A thread that finds the pool busy waits DATABASE_POOL_TIMEOUT_S for a connection: a
    # web request then answers 503 (5 s by default); a worker's job waits longer (60 s by
    # default, past which PostgreSQL itself is in trouble and the job's database-fault path
    # takes over), never failing for the want of a free connection.
    DATABASE_POOL = env.bool("DATABASE_POOL", default=True)
    DATABASE_POOL_MIN_SIZE = env.int("DATABASE_POOL_MIN_SIZE", default=2 if roles.is_web() else 1)
    DATABASE_POOL_MAX_SIZE = env.int("DATABASE_POOL_MAX_SIZE", default=10)
    DATABASE_POOL_TIMEOUT_S = env.float("DATABASE_POOL_TIMEOUT_S", default=5.0 if roles.is_web() else 60.0)
    if DATABASE_POOL:
        if not 0 < DATABASE_POOL_MIN_SIZE <= DATABASE_POOL_MAX_SIZE:
            raise ImproperlyConfigured("DATABASE_POOL_MIN_SIZE must be from 1 to DATABASE_POOL_MAX_SIZE")
        DATABASES["default"]["CONN_MAX_AGE"] = 0
        DATABASES["default"]["OPTIONS"]["pool"] = {
            "min_size": DATABASE_POOL_MIN_SIZE,
            "max_size": DATABASE_POOL_MAX_SIZE,
            "timeout": DATABASE_POOL_TIMEOUT_S,
            "name": DATABASES["default"]["OPTIONS"]["application_name"],
        }
    else:
        DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
    # A web request's budget on the database: a statement of a web process (a lock wait
    # included) is cancelled after WEB_STATEMENT_TIMEOUT_MS, and the request answers 503
    # with Retry-After (jobs/api/errors.py), long before a proxy gives up on it (nginx: 60 s)
    # and while its thread would otherwise stay taken. Workers and `manage.py` (migrations,
    # maintenance in batches) keep no such bound. 0: none. Sent as a connection option;
    # behind pgbouncer, which refuses it, set the web role's own database user's
    # statement_timeout instead (ALTER ROLE ... SET statement_timeout).
    WEB_STATEMENT_TIMEOUT_MS = env.int("WEB_STATEMENT_TIMEOUT_MS", default=10_000)
    if roles.is_web() and WEB_STATEMENT_TIMEOUT_MS > 0:
        DATABASES["default"]["OPTIONS"]["options"] = f"-c statement_timeout={WEB_STATEMENT_TIMEOUT_MS}"
    # Behind pgbouncer in transaction mode a cursor cannot outlive its transaction.
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = env.bool(
        "DATABASE_DISABLE_SERVER_SIDE_CURSORS", default=False
    )

# --- Redis -------------------------------------------------------------------------------
# One server, separate logical databases: the broker must never be evicted, while hot job
# state and the channel layer are disposable. Point each at its own instance if needed.

REDIS_URL = env("REDIS_URL", default="redis://127.0.0.1:6379").rstrip("/")
if urlsplit(REDIS_URL).path.strip("/"):
    # The URLs below append their own database numbers: `/7/0` would stop beat deep in kombu.
    raise ImproperlyConfigured(
        f"REDIS_URL ends in a database number ({urlsplit(REDIS_URL).path}): give the server "
        "without a database number (redis://host:6379); "
        "the service uses its databases 0-3, or set CELERY_BROKER_URL, REDIS_STATE_URL, "
        "CHANNEL_LAYER_URL and REDIS_CACHE_URL one by one"
    )
# Redis Sentinel: with REDIS_SENTINELS (host:port,...) and REDIS_SENTINEL_MASTER, the
# broker, hot state, channel layer and cache all use databases 0-3 of whichever server the
# sentinels name master, and follow it through a failover (REDIS_URL and the URLs below
# then only name the databases).
REDIS_SENTINELS = redis_servers.sentinels_parse(env.list("REDIS_SENTINELS", default=[]))
REDIS_SENTINEL_MASTER = env("REDIS_SENTINEL_MASTER", default="")
if REDIS_SENTINELS and not REDIS_SENTINEL_MASTER:
    raise ImproperlyConfigured("REDIS_SENTINELS is set: set REDIS_SENTINEL_MASTER, the master's name too")
if REDIS_SENTINELS:
    REDIS_URL = f"redis://{REDIS_SENTINEL_MASTER}"
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=f"{REDIS_URL}/0")
if REDIS_SENTINELS:
    # kombu asks each sentinel in turn for the master (transport option master_name).
    _broker_db = redis_servers.database(CELERY_BROKER_URL)
    CELERY_BROKER_URL = ";".join(f"sentinel://{host}:{port}/{_broker_db}" for host, port in REDIS_SENTINELS)
REDIS_STATE_URL = env("REDIS_STATE_URL", default=f"{REDIS_URL}/1")
CHANNEL_LAYER_URL = env("CHANNEL_LAYER_URL", default=f"{REDIS_URL}/2")
REDIS_CACHE_URL = env("REDIS_CACHE_URL", default=f"{REDIS_URL}/3")  # may evict

# Hot state: connections per process at most, how long a thread waits for one, and how
# long a command may take before it counts as a fault of Redis. A web request asks hot
# state several times (its token, the rate limits, the card), each with a fallback when
# Redis fails: in a web process a command gets 1 s (Redis answers in well under a
# millisecond), so that a Redis that hangs costs a request a few seconds, not a minute.
REDIS_POOL_MAX_CONNECTIONS = env.int("REDIS_POOL_MAX_CONNECTIONS", default=50)
REDIS_POOL_TIMEOUT_S = env.float("REDIS_POOL_TIMEOUT_S", default=5.0)
REDIS_SOCKET_TIMEOUT_S = env.float("REDIS_SOCKET_TIMEOUT_S", default=1.0 if roles.is_web() else 5.0)

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_CACHE_URL,
        "OPTIONS": {
            "pool_class": "downloads_project.redis_servers.CachePool",
            # A cache that hangs costs a request no more than hot state's would.
            "socket_connect_timeout": REDIS_SOCKET_TIMEOUT_S,
            "socket_timeout": REDIS_SOCKET_TIMEOUT_S,
        },
    }
}

# The channel layer (realtime/, jobs/events.py), both channels-redis:
# - "pubsub" (RedisPubSubChannelLayer): a group send is one PUBLISH, and each web process
#   holds one subscription connection that Redis pushes its sockets' events down. No
#   per-channel capacity or expiry (a process that falls behind buffers in memory), and
#   what is published while a process is disconnected from Redis is lost: its sockets'
#   periodic resync (WEBSOCKET_RESYNC_S) reads a finished job's end from its row.
#   Pub/sub ignores the database number, so the prefix carries it.
# - "core" (RedisChannelLayer): per-process lists in Redis, popped one message per round
#   trip; a group send costs several commands and a Lua call per member's process, and
#   each process's inbox holds at most `capacity` messages (more are dropped).
CHANNEL_LAYER_BACKEND = env("CHANNEL_LAYER_BACKEND", default="pubsub")
_channel_layer_db = urlsplit(CHANNEL_LAYER_URL).path.strip("/") or "0"
if CHANNEL_LAYER_BACKEND == "pubsub":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {
                # Publishes and (un)subscribes take one connection at a time; the read of
                # the subscription passes its own timeout. The health check pings an idle
                # subscription, so a dead connection is found and subscribed again.
                "hosts": [{"address": CHANNEL_LAYER_URL, "socket_timeout": 30, "health_check_interval": 30}],
                "prefix": f"asgi.{_channel_layer_db}.",
            },
        }
    }
elif CHANNEL_LAYER_BACKEND == "core":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py 8 times out reads after 5 s by default, as long as channels_redis's
                # blocking receive waits: an idle consumer would die every 5 s. And its pool
                # fails instead of waiting when full, so a burst of handshakes needs room.
                "hosts": [{"address": CHANNEL_LAYER_URL, "socket_timeout": 30, "max_connections": 1000}],
                "capacity": 1000,
                "expiry": 30,
            },
        }
    }
else:
    raise ImproperlyConfigured(f"CHANNEL_LAYER_BACKEND is {CHANNEL_LAYER_BACKEND!r}: 'pubsub' or 'core'")

if REDIS_SENTINELS:
    # channels-redis finds the master through the sentinels itself.
    for _host in CHANNEL_LAYERS["default"]["CONFIG"]["hosts"]:  # type: ignore[index]
        _host.update(
            sentinels=REDIS_SENTINELS,
            master_name=REDIS_SENTINEL_MASTER,
            db=redis_servers.database(_host.pop("address")),
        )

# --- Celery ------------------------------------------------------------------------------

# A worker's own metrics endpoint (its host's counters, through PROMETHEUS_MULTIPROC_DIR):
# 0 = none. A host that runs only workers has no web process whose /metrics adds them up.
WORKER_METRICS_PORT = env.int("WORKER_METRICS_PORT", default=0)
WORKER_METRICS_ADDR = env("WORKER_METRICS_ADDR", default="0.0.0.0")  # noqa: S104 (a scrape port)

# The worker's pool. "threads" (the default): one process runs WORKER_CONCURRENCY jobs at
# once as threads. A job spends nearly all its time waiting on the origin and the store, so
# threads hold hundreds of jobs in one process; its database connections come from a pool
# (DATABASE_POOL_MAX_SIZE) and its S3 parts from a byte budget, whatever the concurrency.
# "prefork": WORKER_CONCURRENCY child processes, one job each (Celery's own time limits).
WORKER_POOL = env("WORKER_POOL", default="threads")
if WORKER_POOL not in ("threads", "prefork"):
    raise ImproperlyConfigured(f"WORKER_POOL is {WORKER_POOL!r}: threads or prefork")
WORKER_CONCURRENCY = env.int(
    "WORKER_CONCURRENCY", default=200 if WORKER_POOL == "threads" else max(2, os.cpu_count() or 2)
)
if WORKER_CONCURRENCY < 1:
    raise ImproperlyConfigured("WORKER_CONCURRENCY must be 1 or more")
# The worker's memory allocator keeps its chunk-sized buffers rather than fault them in
# anew for every chunk (downloads_project/celery.py, MALLOC_OPTIONS; glibc only).
WORKER_MALLOC_TUNE = env.bool("WORKER_MALLOC_TUNE", default=True)
CELERY_WORKER_POOL = WORKER_POOL
CELERY_WORKER_CONCURRENCY = WORKER_CONCURRENCY

JOB_SOFT_TIME_LIMIT_S = env.int("JOB_SOFT_TIME_LIMIT_S", default=150)
JOB_HARD_TIME_LIMIT_S = env.int("JOB_HARD_TIME_LIMIT_S", default=JOB_SOFT_TIME_LIMIT_S + 30)

CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # An unacknowledged message is redelivered after this long; it must exceed the hard
    # time limit plus the longest retry countdown, or a long job would run twice.
    "visibility_timeout": env.int(
        "CELERY_VISIBILITY_TIMEOUT_S", default=max(3600, 4 * JOB_HARD_TIME_LIMIT_S)
    ),
    # Serve downloads.high before downloads.normal before downloads.low.
    "queue_order_strategy": "priority",
    **({"master_name": REDIS_SENTINEL_MASTER} if REDIS_SENTINELS else {}),
}
CELERY_TASK_DEFAULT_QUEUE = DEFAULT_QUEUE
CELERY_TIMEZONE = TIME_ZONE

# Maintenance runs on downloads.high, which every worker serves first, so a backlog of
# downloads never holds it up. Each message expires after one period: runs missed while
# no worker was up do not pile up and run back to back.
JOB_EXPIRE_EVERY_S = env.float("JOB_EXPIRE_EVERY_S", default=300.0)
JOB_REAP_EVERY_S = env.float("JOB_REAP_EVERY_S", default=30.0)
JOB_PURGE_EVERY_S = env.float("JOB_PURGE_EVERY_S", default=3600.0)
ANALYTICS_REFRESH_EVERY_S = env.float("ANALYTICS_REFRESH_EVERY_S", default=60.0)
CELERY_BEAT_SCHEDULE = {
    "download-jobs-expire": {
        "task": "jobs.download_jobs_expire",
        "schedule": JOB_EXPIRE_EVERY_S,
        "options": {"queue": MAINTENANCE_QUEUE, "expires": JOB_EXPIRE_EVERY_S},
    },
    "download-jobs-reap": {
        "task": "jobs.download_jobs_reap",
        "schedule": JOB_REAP_EVERY_S,
        "options": {"queue": MAINTENANCE_QUEUE, "expires": JOB_REAP_EVERY_S},
    },
    "download-jobs-purge": {
        "task": "jobs.download_jobs_purge",
        "schedule": JOB_PURGE_EVERY_S,
        "options": {"queue": MAINTENANCE_QUEUE, "expires": JOB_PURGE_EVERY_S},
    },
    "download-analytics-refresh": {
        "task": "jobs.download_analytics_refresh",
        "schedule": ANALYTICS_REFRESH_EVERY_S,
        "options": {"queue": MAINTENANCE_QUEUE, "expires": ANALYTICS_REFRESH_EVERY_S},
    },
}

# --- Download jobs -----------------------------------------------------------------------

JOB_MAX_ATTEMPTS = env.int("JOB_MAX_ATTEMPTS", default=3)
JOB_RETRY_BACKOFF_S = env.float("JOB_RETRY_BACKOFF_S", default=5.0)  # 5, 10, 20 ...
JOB_RETRY_BACKOFF_MAX_S = env.float("JOB_RETRY_BACKOFF_MAX_S", default=300.0)
JOB_RETRY_JITTER = env.float("JOB_RETRY_JITTER", default=0.2)  # +/- 20 %
JOB_MAX_ACTIVE_PER_USER = env.int("JOB_MAX_ACTIVE_PER_USER", default=5)
JOB_ACTIVE_LIMIT_RETRY_AFTER_S = env.int("JOB_ACTIVE_LIMIT_RETRY_AFTER_S", default=30)


def _rate(name: str, default: str) -> str:
    """A rate setting (`<n>/<second|minute|hour|day>`, jobs/rates.py), checked now: a
    rate the limiter cannot read stops the start-up rather than the first request."""
    value = str(env(name, default=default))
    if value:
        try:
            amount = rate_parse(value).amount
        except ValueError:
            amount = 0
        if amount < 1:
            raise ImproperlyConfigured(f"{name} is {value!r}: a rate such as 50/minute")
    return value


# Initiate rates (`<n>/<second|minute|hour|day>`), counted in Redis so every API process
# shares them: per user, and per client IP (see CLIENT_IP_HEADER).
JOB_INITIATE_RATE = _rate("JOB_INITIATE_RATE", default="10/minute")
# Well above the per-user rate: many users share one address behind a NAT or a proxy.
JOB_INITIATE_RATE_PER_IP = _rate("JOB_INITIATE_RATE_PER_IP", default="100/minute")
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
JOB_POLLING_INTERVAL_MS = env.int("JOB_POLLING_INTERVAL_MS", default=2000)
JOB_METADATA_MAX_BYTES = 4096
JOB_MAX_FILE_BYTES = env.int("JOB_MAX_FILE_BYTES", default=10 * 1024**3)

PRESIGNED_URL_TTL_S = env.int("PRESIGNED_URL_TTL_S", default=15 * 60)
PROGRESS_PUSH_INTERVAL_S = env.float("PROGRESS_PUSH_INTERVAL_S", default=0.25)
# A job's socket hears from the server at least this often while the job is active, so
# proxies that close idle connections (nginx 60 s, ALB) keep it.
WEBSOCKET_HEARTBEAT_S = env.float("WEBSOCKET_HEARTBEAT_S", default=15.0)
# A socket with no event of its job for this long re-reads the job (a dropped terminal
# event must not leave it open) ...
WEBSOCKET_RESYNC_S = env.float("WEBSOCKET_RESYNC_S", default=60.0)
# ... and is closed (4408) after this long without one: 10 minutes.
WEBSOCKET_IDLE_TIMEOUT_S = env.float("WEBSOCKET_IDLE_TIMEOUT_S", default=600.0)
# Sockets one user may hold open at once, counted on every web process (hot-state Redis);
# one more is closed 4429. The page opens one per active job (JOB_MAX_ACTIVE_PER_USER).
WEBSOCKET_MAX_PER_USER = env.int("WEBSOCKET_MAX_PER_USER", default=20)
# A job's websocket_url carries a signed ticket, not a credential: it opens that job's
# socket, for its owner, this long after it was minted (initiate, or an active job's status).
WEBSOCKET_TICKET_TTL_S = env.int("WEBSOCKET_TICKET_TTL_S", default=300)
# `?token=<key>` on a socket, from clients written before tickets: deprecated (a URL ends
# up in proxy logs), each use logged, and refused from the sunset date on unless set.
WEBSOCKET_TOKEN_QUERY_SUNSET = date(2027, 6, 30)
WEBSOCKET_TOKEN_QUERY_ALLOWED = env.bool(
    "WEBSOCKET_TOKEN_QUERY_ALLOWED", default=date.today() < WEBSOCKET_TOKEN_QUERY_SUNSET
)
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


def _aware_datetime(name: str, default: str) -> datetime | None:
    value = env(name, default=default)
    if not value:
        return None
    parsed = parse_datetime(value) or (
        datetime.combine(parsed_date, time.min, tzinfo=UTC) if (parsed_date := parse_date(value)) else None
    )
    if parsed is None or parsed.tzinfo is None:
        raise ImproperlyConfigured(f"{name} is {value!r}: a date (2027-06-01) or an ISO time with its offset")
    return parsed


_deprecated_at = _aware_datetime("LEGACY_DEPRECATED_AT", "2026-12-01T00:00:00+00:00")
if _deprecated_at is None:
    raise ImproperlyConfigured("LEGACY_DEPRECATED_AT is empty: every answer of the old endpoint says it")
LEGACY_DEPRECATED_AT: datetime = _deprecated_at
LEGACY_SUNSET_AT = _aware_datetime("LEGACY_SUNSET_AT", "2027-06-01T00:00:00+00:00")
LEGACY_MIGRATION_URL = env("LEGACY_MIGRATION_URL", default="/api/docs/")

STAGING_CHUNK_BYTES = env.int("STAGING_CHUNK_BYTES", default=1024 * 1024)
# S3 needs parts of at least 5 MiB (but the last).
STAGING_PART_BYTES = env.int("STAGING_PART_BYTES", default=8 * 1024 * 1024)
# S3 parts of one job handed to the uploads at once while the origin is read (the job waits
# for one to finish before it hands over another).
STAGING_PARTS_IN_FLIGHT = env.int("STAGING_PARTS_IN_FLIGHT", default=4)
# A worker process's S3 parts, whatever its concurrency (jobs/transfer/storage.py): they are
# uploaded by STAGING_UPLOAD_THREADS threads shared by all its jobs, and held in memory up to
# STAGING_MEMORY_BYTES in all. Each part reserves its room whole before its first byte: a
# part that finds no room in memory is filled in a temporary file under STAGING_SPOOL_DIR
# instead, up to STAGING_SPOOL_BYTES in all; past that a job waits for room (within its
# deadline), holding none. STAGING_SPOOL_BYTES=0: parts never go to disk and jobs wait for
# room in memory. Local storage writes its files directly and uses neither.
STAGING_UPLOAD_THREADS = env.int("STAGING_UPLOAD_THREADS", default=16)
STAGING_MEMORY_BYTES = env.int("STAGING_MEMORY_BYTES", default=256 * 1024 * 1024)
STAGING_SPOOL_BYTES = env.int("STAGING_SPOOL_BYTES", default=4 * 1024**3)
STAGING_SPOOL_DIR = env("STAGING_SPOOL_DIR", default="") or None  # None: the system's temporary directory
if STAGING_UPLOAD_THREADS < 1 or STAGING_PARTS_IN_FLIGHT < 1:
    raise ImproperlyConfigured("STAGING_UPLOAD_THREADS and STAGING_PARTS_IN_FLIGHT must be 1 or more")
if max(STAGING_PART_BYTES, 5 * 1024 * 1024) > STAGING_MEMORY_BYTES + STAGING_SPOOL_BYTES:
    raise ImproperlyConfigured(
        "STAGING_MEMORY_BYTES + STAGING_SPOOL_BYTES must hold at least one part (STAGING_PART_BYTES)"
    )

# --- Login protection --------------------------------------------------------------------
# Failed sign-ins (the login page and the admin's) are counted in hot-state Redis, shared by
# every web process, through django-axes (jobs/login_protection.py): per username at a
# client address, and per address. LOGIN_FAILURE_LIMIT failures of one username from one
# address within LOGIN_LOCKOUT_S, or LOGIN_FAILURE_LIMIT_PER_IP of any usernames, refuse
# its sign-ins for LOGIN_LOCKOUT_S: a 429 login page that says when to try again.
LOGIN_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
LOGIN_FAILURE_LIMIT_PER_IP = env.int("LOGIN_FAILURE_LIMIT_PER_IP", default=20)
LOGIN_LOCKOUT_S = env.int("LOGIN_LOCKOUT_S", default=900)
if min(LOGIN_FAILURE_LIMIT, LOGIN_FAILURE_LIMIT_PER_IP, LOGIN_LOCKOUT_S) < 1:
    raise ImproperlyConfigured(
        "LOGIN_FAILURE_LIMIT, LOGIN_FAILURE_LIMIT_PER_IP and LOGIN_LOCKOUT_S must be 1 or more"
    )
AXES_HANDLER = "jobs.web.login_protection.LoginFailureHandler"
AXES_LOCKOUT_CALLABLE = "jobs.web.login_protection.login_lockout_response"
AXES_CLIENT_IP_CALLABLE = "jobs.api.ratelimits.client_ip"  # the rate limits' rule (CLIENT_IP_HEADER)
# What the handler counts (axes names it in its start-up log line).
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"], "ip_address"]
AXES_FAILURE_LIMIT = LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(seconds=LOGIN_LOCKOUT_S)
# A refused attempt tests no password: it is not counted and does not lengthen the wait.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_ENABLE_ADMIN = False  # its admin pages list database records; the counts are in Redis

# --- Alerts (docs/operations.md) ----------------------------------------------------------------------
# Beat's jobs.download_alerts_check logs a WARNING while one fires; /metrics exposes the
# figures and download_alert_firing{alert} as they are at each scrape (jobs/alerts.py).
ALERT_BACKLOG_THRESHOLD = env.int("ALERT_BACKLOG_THRESHOLD", default=1000)  # messages waiting
ALERT_SUCCESS_RATE_MIN = env.float("ALERT_SUCCESS_RATE_MIN", default=0.95)
ALERT_MIN_SAMPLES = env.int("ALERT_MIN_SAMPLES", default=20)  # fewer ended jobs: no verdict
ALERT_WINDOW_S = env.int("ALERT_WINDOW_S", default=3600)
ALERT_CHECK_EVERY_S = env.float("ALERT_CHECK_EVERY_S", default=60.0)
CELERY_BEAT_SCHEDULE["download-alerts-check"] = {
    "task": "jobs.download_alerts_check",
    "schedule": ALERT_CHECK_EVERY_S,
    "options": {"queue": MAINTENANCE_QUEUE, "expires": ALERT_CHECK_EVERY_S},
}

# --- Origins -----------------------------------------------------------------------------

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
# (jobs/breaker.py): it opens when failures / outcomes in the last WINDOW_S reach
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
ORIGIN_START_RATE = _rate("ORIGIN_START_RATE", default="")

# --- Storage -----------------------------------------------------------------------------

_web = roles.is_web()
AWS_STORAGE_BUCKET_NAME = env("AWS_STORAGE_BUCKET_NAME", default="")
DOWNLOADS_LOCATION = "downloads"
if AWS_STORAGE_BUCKET_NAME:
    _downloads_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": AWS_STORAGE_BUCKET_NAME,
            "endpoint_url": env("AWS_S3_ENDPOINT_URL", default=None),
            "region_name": env("AWS_S3_REGION_NAME", default=None),
            "access_key": env("AWS_ACCESS_KEY_ID", default=None),
            "secret_key": env("AWS_SECRET_ACCESS_KEY", default=None),
            "querystring_expire": PRESIGNED_URL_TTL_S,
            # An S3 outage of a few tens of seconds is ridden out inside the attempt: each
            # call is tried AWS_S3_MAX_ATTEMPTS times with botocore's standard backoff
            # (doubling, up to 20 s, jittered), before the attempt fails STORAGE_ERROR and
            # its retry resumes from the stored parts. A web process's few calls (the
            # reuse check of initiate, /ready) have a request's budget instead: 2 tries of
            # 3 s to connect and 5 s to read, well inside a proxy's 60 s.
            "client_config": BotoConfig(
                s3={
                    "addressing_style": env("AWS_S3_ADDRESSING_STYLE", default=None),
                    # botocore signs a part's bytes (SHA-256, as much CPU as our own hash)
                    # only over plain http: over https the part's CRC32, which S3 checks,
                    # stands for it. `false` drops it over http too (an endpoint on a private
                    # network), `true` keeps it over https; unset, botocore decides.
                    **(
                        {"payload_signing_enabled": env.bool("AWS_S3_PAYLOAD_SIGNING")}
                        if env("AWS_S3_PAYLOAD_SIGNING", default="")
                        else {}
                    ),
                },
                signature_version="s3v4",
                retries={
                    "mode": "standard",
                    "max_attempts": env.int("AWS_S3_MAX_ATTEMPTS", default=2 if _web else 10),
                },
                connect_timeout=env.float("AWS_S3_CONNECT_TIMEOUT_S", default=3.0 if _web else 10.0),
                read_timeout=env.float("AWS_S3_READ_TIMEOUT_S", default=5.0 if _web else 60.0),
                # A job's client (jobs/transfer/storage.py) serves its own calls and its
                # parts in flight at once.
                max_pool_connections=max(10, STAGING_PARTS_IN_FLIGHT + 2),
            ),
            "file_overwrite": True,
            "default_acl": None,
        },
    }
else:
    _downloads_storage = {
        "BACKEND": "jobs.transfer.storage.SignedFileSystemStorage",
        "OPTIONS": {"location": str(VAR_DIR / "media"), "base_url": "/files/"},
    }
# Local storage's signed links (jobs/web/files.py) name their file in X-Accel-Redirect.
# true: nginx sends it from its internal location (deploy/nginx/downloads.conf.template),
# and the web processes must be reachable only through that nginx. false: the web process
# sends it from its event loop (downloads_project/file_sender.py).
FILES_ACCEL_REDIRECT = env.bool("FILES_ACCEL_REDIRECT", default=False)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "downloads": _downloads_storage,
}

# --- CORS: browser apps of other origins (clients/react) ----------------------------------
# Pages of these origins (`scheme://host[:port]`, comma-separated) may call /v1/ from the
# browser and open the socket of a job's websocket_url (realtime/auth.py). None by default:
# no cross-origin access. Without credentials (cookies): such a page authenticates its calls
# with `Authorization: Token`, and its socket with the websocket_url's ticket.
CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", default=[])
CORS_URLS_REGEX = r"^/v1/"
CORS_ALLOW_HEADERS = (*cors_default_headers, "idempotency-key")
CORS_EXPOSE_HEADERS = [
    "Retry-After", "RateLimit-Policy", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"
]  # fmt: skip

# --- REST framework ----------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "jobs.api.authentication.CachedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["jobs.api.parsers.JSONParser"],  # DRF's, deep nesting a 400
    "EXCEPTION_HANDLER": "jobs.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # OPTIONS would describe the views outside the envelope; nothing here needs it (CORS
    # preflights are answered by CorsMiddleware before they reach a view).
    "DEFAULT_METADATA_CLASS": None,
}

# --- OpenAPI (drf-spectacular) -----------------------------------------------------------
# The schema at /api/schema/, Swagger UI at /api/docs/ with its assets served from
# drf-spectacular-sidecar (no CDN). The shapes of bodies and errors are in jobs/openapi.py.

SPECTACULAR_SETTINGS = {
    "TITLE": "Download service API",
    "VERSION": "1.0.0",
    "DESCRIPTION": (
        "Start, watch and collect file-preparation jobs. Every JSON response is the envelope "
        '`{"success": true, "data": ...}` or `{"success": false, "error": {"code": ..., '
        '"message": ...}}`. Authenticate with `Authorization: Token <key>` (API clients) or '
        "the session cookie of the login page (browser; unsafe methods need the CSRF token).\n\n"
        "Live progress is pushed on the WebSocket `/v1/download/subscribe/<job_id>` (the "
        "`websocket_url` that initiate returns, whose `?ticket=` opens it; or the session cookie "
        "of a page of this site), which OpenAPI does not describe: its first message is a "
        "`snapshot`, then `status_update`, "
        "`progress`, `heartbeat` and one of `completed`, `error`, `cancelled`."
    ),
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_GENERATE_CHOICE_DESCRIPTION": False,  # the values are their own labels
    # Names of the enums that several components share (jobs/openapi.py).
    "ENUM_NAME_OVERRIDES": {
        "SuccessTrueEnum": [(True, True)],
        "SuccessFalseEnum": [(False, False)],
        "JobStatusEnum": "jobs.models.Status",
        "NotReadyStatusEnum": ["failed", "cancelled"],
    },
}

# --- Logging -----------------------------------------------------------------------------

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    # Every handler redacts secrets (downloads_project/logging.py).
    "filters": {"redact_secrets": {"()": "downloads_project.logging.RedactSecrets"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact_secrets"]}
    },
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    # uvicorn's own handlers get the same filter when it loads the app (asgi.py).
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
