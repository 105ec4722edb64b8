"""What operators watch: a worker's own metrics endpoint and the alerts (docs/operations.md)."""

from downloads_project.settings.environment import env

# A worker's own metrics endpoint (its host's counters, through PROMETHEUS_MULTIPROC_DIR):
# 0 = none. A host that runs only workers has no web process whose /metrics adds them up.
WORKER_METRICS_PORT = env.int("WORKER_METRICS_PORT", default=0)
WORKER_METRICS_ADDR = env("WORKER_METRICS_ADDR", default="0.0.0.0")  # noqa: S104 (a scrape port)

# Beat's jobs.download_alerts_check logs a WARNING while one fires; /metrics exposes the
# figures and download_alert_firing{alert} as they are at each scrape (jobs/ops/alerts.py).
ALERT_BACKLOG_THRESHOLD = env.int("ALERT_BACKLOG_THRESHOLD", default=1000)  # messages waiting
ALERT_SUCCESS_RATE_MIN = env.float("ALERT_SUCCESS_RATE_MIN", default=0.95)
ALERT_MIN_SAMPLES = env.int("ALERT_MIN_SAMPLES", default=20)  # fewer ended jobs: no verdict
ALERT_WINDOW_S = env.int("ALERT_WINDOW_S", default=3600)
ALERT_CHECK_EVERY_S = env.float("ALERT_CHECK_EVERY_S", default=60.0)

# Each worker's main process writes a heartbeat to the broker's Redis this often, kept for
# three periods (jobs/ops/worker_heartbeat.py): /metrics lists the live workers from them.
# 0: none.
WORKER_HEARTBEAT_S = env.float("WORKER_HEARTBEAT_S", default=10.0)
# What the stored files may take in all, for the alerting rules against
# download_storage_held_bytes: /metrics exposes it as download_storage_budget_bytes.
STORAGE_BUDGET_BYTES = env.int("STORAGE_BUDGET_BYTES", default=50 * 1024**3)
