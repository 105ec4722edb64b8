"""The Prometheus rules, their promtool unit tests, the example Prometheus and Alertmanager
configurations, the Kubernetes PrometheusRule and the Grafana dashboard
(deploy/prometheus/, deploy/k8s/prometheusrule.yaml, deploy/grafana/): checked by the
real `promtool` and `amtool` (Debian's prometheus and prometheus-alertmanager packages,
which .ci/run installs: without them these tests fail in CI and are skipped elsewhere).
tests/e2e/test_prometheus.py runs the rules and the dashboard's queries in a real
Prometheus against a real stack."""

import importlib.machinery
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.conf import settings

from jobs.ops.worker_heartbeat import LIFETIMES
from tests.support.prometheus import (
    DASHBOARD,
    PROMETHEUS_DIR,
    ROOT,
    RULE_TESTS,
    RULES,
    alerts,
    all_rules,
    base_name,
    dashboard,
    dashboard_exprs,
    dashboard_panels,
    duration_s,
    metric_names,
    recorded_names,
    rule_exprs,
    rules,
)

IN_CI = bool(os.environ.get("CI"))
PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
OPERATIONS = ROOT / "docs" / "operations.md"
PROMETHEUS_RULE = ROOT / "deploy" / "k8s" / "prometheusrule.yaml"
SEVERITIES = {"page", "ticket"}


def tool(path: str | None, package: str) -> str:
    if path is None:
        if IN_CI:
            pytest.fail(f"{package} is not installed; .ci/run installs it")
        pytest.skip(f"{package} is not installed (apt-get install {package}; .ci/run does)")
    return path


def run(argv: list[str], cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)


# --- the rules and promtool -------------------------------------------------------------------


def test_promtool_accepts_the_rules():
    result = run([tool(PROMTOOL, "prometheus"), "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(list(all_rules()))} rules found" in result.stdout


def test_promtool_refuses_a_broken_rule(tmp_path):
    broken = rules()
    broken["groups"][0]["rules"][0]["expr"] = "max by (priority (download_queue_depth)"
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(broken))

    result = run([tool(PROMTOOL, "prometheus"), "check", "rules", str(path)])

    assert result.returncode != 0
    assert "parse error" in result.stdout + result.stderr


def test_the_promtool_unit_tests_pass():
    result = run([tool(PROMTOOL, "prometheus"), "test", "rules", *map(str, RULE_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_a_unit_test_that_expects_the_wrong_alert_fails(tmp_path):
    """promtool's unit tests can fail: a test expecting a page that the series do not fire."""
    wrong = yaml.safe_load((PROMETHEUS_DIR / "tests" / "workers_and_queues.yml").read_text())
    wrong["rule_files"] = [str(RULES)]
    silent = next(
        case for case in wrong["tests"] for check in case["alert_rule_test"] if not check["exp_alerts"]
    )
    silent["alert_rule_test"][0]["exp_alerts"] = [{"exp_labels": {"severity": "page"}}]
    path = tmp_path / "wrong.yml"
    path.write_text(yaml.safe_dump(wrong))

    result = run([tool(PROMTOOL, "prometheus"), "test", "rules", str(path)])

    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr


def unit_test_cases() -> list[tuple[str, bool]]:
    """(alert, whether it is expected to fire) of every alert_rule_test check."""
    cases = []
    for path in RULE_TESTS:
        document = yaml.safe_load(path.read_text())
        assert document["rule_files"] == ["../rules.yml"], path
        for case in document["tests"]:
            for check in case.get("alert_rule_test", []):
                cases.append((check["alertname"], bool(check["exp_alerts"])))
    return cases


def test_every_alert_has_a_series_that_fires_it_and_one_that_does_not():
    cases = set(unit_test_cases())
    for name in alerts():
        assert (name, True) in cases, f"{name}: no unit test in which it fires"
        assert (name, False) in cases, f"{name}: no unit test in which it stays silent"
    assert {name for name, _ in cases} <= set(alerts())


# --- what each alert carries --------------------------------------------------------------------


def markdown_anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_every_alert_has_a_severity_a_summary_a_description_and_a_runbook():
    anchors = markdown_anchors(OPERATIONS.read_text())
    for name, alert in alerts().items():
        assert alert["labels"]["severity"] in SEVERITIES, name
        annotations = alert["annotations"]
        assert annotations["summary"].strip(), name
        assert annotations["description"].strip(), name
        assert "Look first" in annotations["description"], (
            f"{name}: the description says what to look at first"
        )
        assert annotations["runbook_url"] == f"docs/operations.md#runbook-{name.lower()}", name
        assert f"runbook-{name.lower()}" in anchors, f"{name}: no '### Runbook: {name}' in docs/operations.md"


def test_no_worker_fires_within_two_minutes_of_the_last_worker_dying():
    """The last worker's heartbeat key outlives it, then a scrape and an evaluation of the
    example configuration see it gone, then `for` passes: within 2 minutes in all."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())["global"]
    heartbeat_lives_s = settings.WORKER_HEARTBEAT_S * LIFETIMES
    for_s = duration_s(alerts()["DownloadsNoWorker"]["for"])
    worst_s = (
        heartbeat_lives_s
        + duration_s(config["scrape_interval"])
        + duration_s(config["evaluation_interval"])
        + for_s
    )
    assert for_s <= 60
    assert worst_s <= 120, worst_s


def test_the_slo_alerts_burn_at_the_workbook_rates():
    """The multiwindow, multi-burn-rate pairs of the SRE workbook (ch. 5) for both SLOs."""
    pairs = {
        "Fast": [("1h", "5m", "14.4 * "), ("6h", "30m", "6 * ")],
        "Slow": [("1d", "2h", "3 * "), ("3d", "6h", "")],
    }
    for slo, budget in (("job_success_errors", "0.01"), ("first_progress_slow", "0.05")):
        name = {"job_success_errors": "JobSuccess", "first_progress_slow": "FirstProgress"}[slo]
        for speed, windows in pairs.items():
            alert = alerts()[f"Downloads{name}BudgetBurn{speed}"]
            assert alert["labels"]["severity"] == ("page" if speed == "Fast" else "ticket")
            expr = " ".join(alert["expr"].split())
            for long, short, factor in windows:
                threshold = f"({factor}{budget})" if factor else budget
                pair = (
                    f"downloads:{slo}:ratio_rate{long} > {threshold}"
                    f" and downloads:{slo}:ratio_rate{short} > {threshold}"
                )
                assert pair in expr, (alert["alert"], long, short)
                assert f"downloads:{slo}:ratio_rate{long}" in recorded_names()
                assert f"downloads:{slo}:ratio_rate{short}" in recorded_names()


# --- names: the rules' and the dashboard's metrics are the code's ---------------------------------


def code_metric_names() -> set[str]:
    """Every metric name written as a string in the service's code."""
    names = set()
    for package in ("jobs", "infra", "edge", "realtime", "stack", "legacy", "downloads_project"):
        for path in (ROOT / package).rglob("*.py"):
            names.update(re.findall(r"[\"'](download_[a-z0-9_]+)[\"']", path.read_text()))
    return names


def test_every_metric_the_rules_and_the_dashboard_read_is_one_the_code_defines():
    defined = code_metric_names()
    used = metric_names(rule_exprs() + dashboard_exprs())
    unknown = sorted(name for name in used if name not in defined and base_name(name) not in defined)
    assert not unknown, f"not defined by the code: {unknown}"


def test_every_recorded_series_the_dashboard_and_alerts_read_is_recorded():
    from tests.support.prometheus import RECORDED_NAME

    read = {name for expr in rule_exprs() + dashboard_exprs() for name in RECORDED_NAME.findall(expr)}
    assert read <= recorded_names(), read - recorded_names()


# --- the example configurations ------------------------------------------------------------------


def test_the_example_prometheus_configuration_is_valid_and_scrapes_the_jobs_the_rules_name():
    result = run([tool(PROMTOOL, "prometheus"), "check", "config", "prometheus.yml"])
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == {"downloads-web", "downloads-worker"}
    named = set(re.findall(r'job="([^"]+)"', " ".join(rule_exprs())))
    assert named <= jobs
    assert config["rule_files"] == ["rules.yml"]


def amtool_route(*labels: str) -> str:
    result = run(
        [
            tool(AMTOOL, "prometheus-alertmanager"),
            "config",
            "routes",
            "test",
            "--config.file=alertmanager.yml",
            *labels,
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def test_alertmanager_configuration_is_valid():
    result = run([tool(AMTOOL, "prometheus-alertmanager"), "check-config", "alertmanager.yml"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_pages_for_page_and_tickets_the_rest():
    for name, alert in alerts().items():
        severity = alert["labels"]["severity"]
        assert amtool_route(f"alertname={name}", f"severity={severity}") == severity, name


def test_alertmanager_groups_by_alert_and_origin_and_its_inhibitions_name_real_alerts():
    config = yaml.safe_load((PROMETHEUS_DIR / "alertmanager.yml").read_text())
    assert config["route"]["group_by"] == ["alertname", "origin"]
    named = set()
    for rule in config["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            found = re.fullmatch(r'alertname=~?"([^"]+)"', matcher)
            assert found, matcher
            named.update(found.group(1).split("|"))
    assert named <= set(alerts()), named - set(alerts())
    no_worker = next(
        rule
        for rule in config["inhibit_rules"]
        if rule["source_matchers"] == ['alertname="DownloadsNoWorker"']
    )
    assert "DownloadsBacklogGrowing" in no_worker["target_matchers"][0]


# --- the Kubernetes PrometheusRule ---------------------------------------------------------------


def generator() -> Any:
    loader = importlib.machinery.SourceFileLoader("prometheusrule", str(ROOT / "scripts" / "prometheusrule"))
    spec = importlib.util.spec_from_loader("prometheusrule", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_the_prometheus_rule_is_generated_from_the_rules():
    """One source: deploy/k8s/prometheusrule.yaml is what scripts/prometheusrule writes from
    deploy/prometheus/rules.yml (run it after changing the rules)."""
    assert PROMETHEUS_RULE.read_text() == generator().rendered(), "run scripts/prometheusrule"
    document = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert (document["apiVersion"], document["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert document["spec"]["groups"] == rules()["groups"]


def test_promtool_accepts_the_prometheus_rule_groups(tmp_path):
    groups = tmp_path / "groups.yml"
    groups.write_text(
        yaml.safe_dump({"groups": yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]["groups"]})
    )
    result = run([tool(PROMTOOL, "prometheus"), "check", "rules", str(groups)])
    assert result.returncode == 0, result.stdout + result.stderr


# --- the Grafana dashboard -----------------------------------------------------------------------

# What the dashboard shows: a metric (or recorded series) each of these panels must read.
DASHBOARD_MUST_READ = {
    "download_jobs_created_total", "download_jobs_terminal_total", "download_jobs_in_flight",
    "download_queue_depth", "download_queue_oldest_age_seconds", "download_job_duration_seconds_bucket",
    "download_origin_circuit_state", "download_websocket_connections", "download_http_requests_total",
    "download_http_request_duration_seconds_bucket", "download_db_pool_requests_waiting",
    "download_redis_memory_used_bytes", "download_storage_held_bytes", "download_storage_budget_bytes",
    "download_workers_alive_total",
}  # fmt: skip


def test_the_dashboard_is_a_grafana_dashboard_on_a_chosen_prometheus():
    board = dashboard()
    assert board["schemaVersion"] >= 39
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_the_dashboard_panels_do_not_overlap():
    taken: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, panel["title"]
        taken |= cells


def test_the_dashboard_shows_what_operators_watch():
    read = metric_names(dashboard_exprs())
    assert read >= DASHBOARD_MUST_READ, DASHBOARD_MUST_READ - read
    exprs = " ".join(dashboard_exprs())
    for quantile in ("0.5", "0.95", "0.99"):
        assert (
            f"histogram_quantile({quantile}, sum by (le) (rate(download_job_duration_seconds_bucket" in exprs
        )
    assert "downloads:job_success:objective" in exprs  # the success ratio beside its objective
    assert "ratio_rate30d" in exprs  # the error budget left


def test_docs_list_every_panel_of_the_dashboard():
    text = OPERATIONS.read_text()
    for panel in dashboard_panels():
        assert f"| {panel['title']} |" in text, f"docs/operations.md: no row for the panel {panel['title']!r}"


def test_the_dashboard_file_is_what_the_docs_name():
    assert DASHBOARD.relative_to(ROOT).as_posix() in OPERATIONS.read_text()
