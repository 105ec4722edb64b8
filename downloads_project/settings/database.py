"""The database: SQLite in the embedded default, PostgreSQL through psycopg's pool
otherwise, with a web request's budget on each statement."""

from django.core.exceptions import ImproperlyConfigured

from downloads_project.settings.environment import VAR_DIR, env
from infra import roles

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
