"""The process's PostgreSQL connection pool (psycopg_pool) as Prometheus metrics.

psycopg counts the pool's state and its requests since the process started; they are
copied into the process's `download_db_pool_*` metrics (jobs/metrics.py) here: levels set,
counters raised by what psycopg counted since the last copy. Through
PROMETHEUS_MULTIPROC_DIR a scrape sums them over the host's live processes. A web process
copies them at each scrape and, at most once a second, after a request; a worker from its
heartbeat thread (jobs/ops/worker_heartbeat.py) and after each job. Without a pool
(SQLite, DATABASE_POOL=false) there is nothing to copy and the metrics have no series.
"""

import logging
import threading
import time

from jobs import metrics
from jobs.ops.checks import database_pool

logger = logging.getLogger(__name__)

WEB, WORKER = "web", "worker"

_lock = threading.Lock()
_counted: dict[str, int] = {}  # psycopg's cumulative counts as last copied
_copied_at = 0.0


def db_pool_refresh(role: str, *, at_most_every_s: float = 0.0) -> bool:
    """Copies the pool's figures into the metrics of `role`; False if there is no pool, it
    could not be read, or it was copied less than `at_most_every_s` ago."""
    global _copied_at
    now = time.monotonic()
    if at_most_every_s and now - _copied_at < at_most_every_s:
        return False
    try:
        pool = database_pool(open_it=False)
    except Exception:
        logger.warning("metrics: could not read the database pool", exc_info=True)
        return False
    if pool is None:
        return False
    with _lock:
        _copied_at = now
        metrics.db_pool_connections.labels(role=role).set(pool["open"])
        metrics.db_pool_available.labels(role=role).set(pool["idle"])
        metrics.db_pool_requests_waiting.labels(role=role).set(pool["waiting"])
        for name, counter in (("timeouts", metrics.db_pool_timeouts), ("requests", metrics.db_pool_requests)):
            # psycopg's count starts again if the pool was made anew (a reset): count it whole.
            seen = _counted.get(name, 0)
            more = pool[name] - seen if pool[name] >= seen else pool[name]
            counter.labels(role=role).inc(more)  # made at 0 too: a rate needs the series
            _counted[name] = pool[name]
    return True
