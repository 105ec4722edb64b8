"""The shipped rules (deploy/prometheus/rules.yml) and the Grafana dashboard's queries in a
real Prometheus (the `prometheus` binary) scraping a real web process and a real worker,
as deploy/prometheus/prometheus.yml does: the web's /metrics (job `downloads-web`) and the
worker's own port (job `downloads-worker`), each host with its own
PROMETHEUS_MULTIPROC_DIR, every second.

- after a job completes (and one fails against its origin, opening the origin's breaker),
  every metric the rules and the dashboard read is among what Prometheus scraped, and
  every dashboard query is one Prometheus accepts;
- the worker killed with jobs queued: DownloadsNoWorker fires. The rules are a copy of the
  shipped file with the alerts' `for` removed; the expressions are the shipped ones.
"""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
import yaml
from django.contrib.auth.models import User
from django.db import connection

from devtools.servers import free_port, wait_for_port
from jobs.metrics import multiprocess_dir_reset
from tests.factories import api_key_for
from tests.support.flows import eventually, initiate, job_status
from tests.support.origin_server import FileScript, OriginServer
from tests.support.prometheus import (
    PrometheusServer,
    all_rules,
    dashboard_exprs,
    grafana_expanded,
    metric_names,
    recorded_names,
    rule_exprs,
    rules,
)
from tests.support.redis_servers import RedisServer
from tests.support.stack import ARTIFACTS, Stack, stack_env

PROMETHEUS = shutil.which("prometheus")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        PROMETHEUS is None and not os.environ.get("CI"),
        reason="prometheus is not installed (apt-get install prometheus; .ci/run does)",
    ),
]

# The database pool's series exist on PostgreSQL only (docs/operations.md).
ON_POSTGRES_ONLY = {
    "download_db_pool_connections", "download_db_pool_available", "download_db_pool_requests_waiting",
    "download_db_pool_timeouts_total", "download_db_pool_requests_total",
}  # fmt: skip
BREAKER_MIN_CALLS = 2


@pytest.fixture(scope="module")
def watched(
    django_db_setup: None, origin_server: OriginServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, PrometheusServer]]:
    assert PROMETHEUS is not None, "prometheus is not installed; .ci/run installs it"
    root = Path(tmp_path_factory.mktemp("prometheus-e2e"))
    broker = RedisServer(root / "broker").start()  # its queues and heartbeats are this test's alone
    env = stack_env(
        origin_server,
        {
            "PROMETHEUS_MULTIPROC_DIR": str(root / "web-host"),
            "CELERY_BROKER_URL": f"{broker.url}/0",
            # A worker's heartbeat key lives three periods: 3 s here, 30 s by default.
            "WORKER_HEARTBEAT_S": "1",
            # One failure in two calls opens an origin's breaker (one job completes, one fails).
            "ORIGIN_BREAKER_MIN_CALLS": str(BREAKER_MIN_CALLS),
            "ORIGIN_BREAKER_FAILURE_RATIO": "0.5",
        },
        broker_db=0,
    )
    stack = Stack("prometheus", env).start(worker=False)
    worker_port = free_port()
    multiprocess_dir_reset(root / "worker-host")
    worker_env = {
        "PROMETHEUS_MULTIPROC_DIR": str(root / "worker-host"),
        "WORKER_METRICS_PORT": str(worker_port),
    }
    # The shipped expressions, without the waits of `for`.
    quick = rules()
    for rule in all_rules(quick):
        rule.pop("for", None)
    quick_rules = root / "rules.yml"
    quick_rules.write_text(yaml.safe_dump(quick))
    prometheus = PrometheusServer(
        PROMETHEUS,
        jobs={"downloads-web": [f"127.0.0.1:{stack.port}"], "downloads-worker": [f"127.0.0.1:{worker_port}"]},
        rule_files=[quick_rules],
    )
    try:
        stack.start_worker(concurrency=2, env=worker_env)
        wait_for_port(worker_port, process=stack.worker)
        prometheus.start(log=ARTIFACTS / "logs" / "prometheus.log")
        eventually(
            prometheus.targets_up, timeout_s=20, what="Prometheus scrapes the web process and the worker"
        )
        yield stack, prometheus
    finally:
        prometheus.stop()
        stack.stop()
        broker.stop()


def test_prometheus_scrapes_every_metric_the_rules_and_the_dashboard_read(
    watched: tuple[Stack, PrometheusServer], origin: OriginServer
) -> None:
    stack, prometheus = watched
    token = api_key_for(User.objects.create_user(f"prom-{uuid4().hex[:12]}"))
    origin.add(77201, FileScript(size=64 * 1024))
    origin.add(77202, FileScript(size=64 * 1024, faults=["503"] * 50))
    with stack.client(token) as api:
        job_id = initiate(api, 77201)
        eventually(lambda: job_status(api, job_id)["status"] == "completed", timeout_s=30, what="the job")
        initiate(api, 77202)  # fails at its origin: the breaker opens

    needed = metric_names(rule_exprs() + dashboard_exprs())
    if connection.vendor != "postgresql":
        needed -= ON_POSTGRES_ONLY
    missing: set[str] = set(needed)

    def all_scraped() -> bool:
        missing.intersection_update(needed - prometheus.metric_names())
        return not missing

    try:
        eventually(all_scraped, timeout_s=20, what="every metric in Prometheus")
    except AssertionError:
        pytest.fail(f"Prometheus never scraped: {sorted(missing)}")
    # The recording rules ran on them.
    eventually(
        lambda: recorded_names() <= prometheus.metric_names(), timeout_s=10, what="every recorded series"
    )


def test_prometheus_accepts_every_dashboard_query(watched: tuple[Stack, PrometheusServer]) -> None:
    _, prometheus = watched
    refused = {}
    for expr in dashboard_exprs():
        status, body = prometheus.query_status(grafana_expanded(expr))
        if status != 200 or body["status"] != "success":
            refused[expr] = body.get("error")
    assert not refused


def test_no_worker_fires_when_the_last_worker_dies_with_jobs_queued(
    watched: tuple[Stack, PrometheusServer], origin: OriginServer
) -> None:
    stack, prometheus = watched
    assert stack.worker is not None
    assert stack.worker.poll() is None
    assert prometheus.alert_states("DownloadsNoWorker") == set()
    token = api_key_for(User.objects.create_user(f"prom-{uuid4().hex[:12]}"))
    origin.add(77203, FileScript(size=64 * 1024))

    stack.kill_worker()
    with stack.client(token) as api:
        job_id = initiate(api, 77203)
        eventually(
            lambda: prometheus.alert_states("DownloadsNoWorker") & {"pending", "firing"} != set(),
            timeout_s=30,
            what="DownloadsNoWorker in Prometheus's alerts",
        )
        assert job_status(api, job_id)["status"] == "queued"
