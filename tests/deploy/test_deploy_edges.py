"""The edges shipped as files and checked here, without a cloud account: the AWS ALB's
CloudFormation template with cfn-lint (the resource specification's types, properties and
values) and against the settings and manifests it must agree with; the Cloudflare
rulesets in the Rulesets API's shape, against the app's paths and limits. nginx runs for
real in test_deploy_nginx.py."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.conf import settings
from django.urls import reverse

from jobs.rates import rate_parse

ROOT = Path(__file__).resolve().parents[2]
ALB = ROOT / "deploy" / "aws" / "alb.yaml"
CLOUDFLARE = ROOT / "deploy" / "cloudflare" / "ruleset.json"
WEB_MANIFEST = ROOT / "deploy" / "k8s" / "web.yaml"


def cfn_lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("cfn-lint")), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )


# --- the ALB --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alb() -> dict[str, Any]:
    return yaml.safe_load(ALB.read_text())  # long-form intrinsic functions: plain YAML


def resource(template: dict[str, Any], kind: str) -> dict[str, Any]:
    (found,) = [r["Properties"] for r in template["Resources"].values() if r["Type"] == kind]
    return found


def attributes(properties: list[dict[str, Any]]) -> dict[str, Any]:
    return {item["Key"]: item["Value"] for item in properties}


def web_pod() -> dict[str, Any]:
    (deployment,) = [d for d in yaml.safe_load_all(WEB_MANIFEST.read_text()) if d["kind"] == "Deployment"]
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def test_the_alb_template_passes_cfn_lint():
    result = cfn_lint(ALB)

    assert result.returncode == 0, result.stdout + result.stderr


def test_cfn_lint_catches_a_wrong_template(alb, tmp_path):
    """The check is strict enough to matter: a misspelt property and a bad value fail."""
    broken = json.loads(json.dumps(alb))
    broken["Resources"]["TargetGroup"]["Properties"]["HealthCheckPth"] = "/ready"
    broken["Resources"]["HttpListener"]["Properties"]["Protocol"] = "HTTQ"
    path = tmp_path / "alb.yaml"
    path.write_text(yaml.safe_dump(broken))

    result = cfn_lint(path)

    assert result.returncode != 0
    assert "HealthCheckPth" in result.stdout
    assert "HTTQ" in result.stdout


def test_the_alb_health_check_is_the_readiness_probe(alb):
    group = resource(alb, "AWS::ElasticLoadBalancingV2::TargetGroup")
    (container,) = web_pod()["containers"]

    assert group["HealthCheckPath"] == reverse("ready") == container["readinessProbe"]["httpGet"]["path"]
    assert group["Matcher"] == {"HttpCode": "200"}
    assert alb["Parameters"]["TargetPort"]["Default"] == container["ports"][0]["containerPort"]
    assert group["HealthCheckTimeoutSeconds"] < group["HealthCheckIntervalSeconds"]


def test_the_alb_idle_timeout_outlasts_the_websocket_heartbeat(alb):
    """Active sockets hear from the server every WEBSOCKET_HEARTBEAT_S: the ALB never cuts
    them, and a quiet one ends by the server's own idle timeout, as behind nginx."""
    idle = alb["Parameters"]["IdleTimeoutSeconds"]
    balancer = attributes(
        resource(alb, "AWS::ElasticLoadBalancingV2::LoadBalancer")["LoadBalancerAttributes"]
    )

    assert balancer["idle_timeout.timeout_seconds"] == {"Ref": "IdleTimeoutSeconds"}
    assert idle["MinValue"] >= 2 * settings.WEBSOCKET_HEARTBEAT_S
    assert idle["Default"] >= settings.WEBSOCKET_IDLE_TIMEOUT_S
    nginx = (ROOT / "deploy" / "nginx" / "downloads.conf.template").read_text()
    assert f"proxy_read_timeout {idle['Default']}s;" in nginx  # the socket location's


def test_the_deregistration_delay_fits_the_web_grace(alb):
    """A leaving target keeps its requests in flight through preStop and uvicorn's
    graceful shutdown, and the delay ends before Kubernetes kills the pod."""
    group = attributes(resource(alb, "AWS::ElasticLoadBalancingV2::TargetGroup")["TargetGroupAttributes"])
    pod = web_pod()
    (container,) = pod["containers"]
    command = container["command"]
    graceful_s = int(command[command.index("--timeout-graceful-shutdown") + 1])
    pre_stop_s = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])

    delay_s = int(group["deregistration_delay.timeout_seconds"])

    assert pre_stop_s + graceful_s <= delay_s < pod["terminationGracePeriodSeconds"]
    assert group["stickiness.enabled"] == "false"


def test_the_alb_redirects_http_keeps_private_paths_private_and_only_it_reaches_the_targets(alb):
    listeners = {
        props["Port"]: props
        for r in alb["Resources"].values()
        if r["Type"] == "AWS::ElasticLoadBalancingV2::Listener"
        for props in [r["Properties"]]
    }
    rule = resource(alb, "AWS::ElasticLoadBalancingV2::ListenerRule")
    targets = alb["Resources"]["TargetSecurityGroup"]

    assert listeners[80]["DefaultActions"][0]["RedirectConfig"]["Protocol"] == "HTTPS"
    assert listeners[443]["Certificates"] == [{"CertificateArn": {"Ref": "CertificateArn"}}]
    assert set(rule["Conditions"][0]["PathPatternConfig"]["Values"]) == {reverse("ready"), reverse("metrics")}
    assert rule["Actions"][0]["FixedResponseConfig"]["StatusCode"] == "404"
    (ingress,) = targets["Properties"]["SecurityGroupIngress"]
    assert ingress["SourceSecurityGroupId"] == {"Ref": "LoadBalancerSecurityGroup"}


# --- Cloudflare -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rulesets() -> dict[str, dict[str, Any]]:
    loaded = json.loads(CLOUDFLARE.read_text())
    return {ruleset["phase"]: ruleset for ruleset in loaded}


def test_the_cloudflare_rulesets_have_the_rulesets_api_shape(rulesets):
    assert set(rulesets) == {"http_ratelimit", "http_request_cache_settings"}
    for ruleset in rulesets.values():
        assert ruleset["kind"] == "zone"
        assert ruleset["name"]
        assert ruleset["description"]
        for rule in ruleset["rules"]:
            assert set(rule) <= {
                "description",
                "expression",
                "action",
                "action_parameters",
                "ratelimit",
                "enabled",
            }
            assert rule["expression"].count("(") == rule["expression"].count(")")
            assert rule["enabled"] is True


def test_the_cloudflare_rate_limit_is_on_initiate_and_above_the_apps_own(rulesets):
    (rule,) = rulesets["http_ratelimit"]["rules"]
    limit = rule["ratelimit"]
    edge_per_s = limit["requests_per_period"] / limit["period"]
    app_per_s = max(
        rate_parse(rate).amount / rate_parse(rate).get_expiry()
        for rate in (settings.JOB_INITIATE_RATE, settings.JOB_INITIATE_RATE_PER_IP)
    )

    assert f'http.request.uri.path eq "{reverse("download-job-initiate")}"' in rule["expression"]
    assert 'http.request.method eq "POST"' in rule["expression"]
    assert rule["action"] == "block"
    assert "ip.src" in limit["characteristics"]
    assert edge_per_s > app_per_s
    response = rule["action_parameters"]["response"]
    assert response["status_code"] == 429
    assert json.loads(response["content"])["error"]["code"] == "RATE_LIMIT_EXCEEDED"


def test_the_cloudflare_cache_rule_bypasses_the_api(rulesets):
    (rule,) = rulesets["http_request_cache_settings"]["rules"]

    assert rule["action"] == "set_cache_settings"
    assert rule["action_parameters"] == {"cache": False}
    for path in ("/v1/", "/download/start", "/files/", "/accounts/", "/admin/"):
        assert f'starts_with(http.request.uri.path, "{path}")' in rule["expression"], path
    assert reverse("download-job-list").startswith("/v1/")


def test_the_cloudflare_readme_says_websockets_must_be_on():
    readme = (CLOUDFLARE.parent / "README.md").read_text()

    assert "WebSockets must be on" in readme
    assert "settings/websockets" in readme
