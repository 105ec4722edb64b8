"""The shipped Prometheus rules and Grafana dashboard as the tests read them, and a real
Prometheus server (the `prometheus` binary) scraping a test stack."""

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from devtools.servers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yml"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
DASHBOARD = ROOT / "deploy" / "grafana" / "downloads.json"

# A metric of the service (recording rules are named `downloads:...`, with a colon).
METRIC_NAME = re.compile(r"\bdownload_[a-z0-9_]+\b")
RECORDED_NAME = re.compile(r"\bdownloads:[a-z0-9_]+:[a-z0-9_]+\b")
# What prometheus-client adds to the name a metric is defined with.
SERIES_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")
# The dashboard's variables, as a query to Prometheus must spell them.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "${datasource}": ""}


def rules() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return loaded


def all_rules(document: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    for group in (document or rules())["groups"]:
        yield from group["rules"]


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in all_rules() if "alert" in rule}


def recorded_names() -> set[str]:
    return {rule["record"] for rule in all_rules() if "record" in rule}


def rule_exprs() -> list[str]:
    return [rule["expr"] for rule in all_rules()]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in dashboard_panels() for target in panel["targets"]]


def grafana_expanded(expr: str) -> str:
    """A dashboard query as Grafana sends it to Prometheus."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def metric_names(exprs: list[str]) -> set[str]:
    """The service's metrics that the expressions read, as exposed (with their suffixes)."""
    return {name for expr in exprs for name in METRIC_NAME.findall(expr)}


def base_name(series: str) -> str:
    """The name a metric is defined with, from the name of one of its series."""
    for suffix in SERIES_SUFFIXES:
        if series.endswith(suffix):
            return series.removesuffix(suffix)
    return series


def duration_s(text: str) -> float:
    """A Prometheus duration ("90s", "1m", "1h30m") in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(int(n) * units[u] for n, u in parts)


class PrometheusServer:
    """The real `prometheus` binary in a temporary directory: its own configuration (the
    given scrape jobs, every `interval_s`), rule files, TSDB and a free port."""

    def __init__(
        self, binary: str, *, jobs: dict[str, list[str]], rule_files: list[Path], interval_s: float = 1
    ):
        self.binary = binary
        self.jobs = jobs
        self.rule_files = rule_files
        self.interval_s = interval_s
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.directory = Path(tempfile.mkdtemp(prefix="prometheus-"))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, log: Path) -> "PrometheusServer":
        interval = f"{int(self.interval_s * 1000)}ms"
        config = {
            "global": {
                "scrape_interval": interval,
                "evaluation_interval": interval,
                "scrape_timeout": interval,
            },
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": targets}]}
                for job, targets in self.jobs.items()
            ],
        }
        config_path = self.directory / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={self.directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port(self.port, process=self.process)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.base_url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    def query_status(self, expr: str) -> tuple[int, dict[str, Any]]:
        """What /api/v1/query answers to `expr`: its HTTP status and body."""
        response = httpx.get(f"{self.base_url}/api/v1/query", params={"query": expr}, timeout=10)
        return response.status_code, response.json()

    def metric_names(self) -> set[str]:
        names: list[str] = self.api("label/__name__/values")
        return set(names)

    def targets_up(self) -> bool:
        active = self.api("targets", state="active")["activeTargets"]
        return bool(active) and all(target["health"] == "up" for target in active)

    def alert_states(self, name: str) -> set[str]:
        return {
            alert["state"] for alert in self.api("alerts")["alerts"] if alert["labels"]["alertname"] == name
        }
