"""The service behind real nginx (Debian's package; `.ci/run` installs it), configured by
the shipped deploy/nginx/*.conf.template rendered as the official image renders it, in
front of two uvicorn processes and a Celery worker. nginx terminates TLS with a
certificate made here, so `X-Forwarded-Proto: https` is true; the app runs with the
settings of docker-compose.yml's proxy (TRUST_X_FORWARDED_PROTO, CLIENT_IP_HEADER=X-Real-IP).
Logs: test-artifacts/logs/nginx-*.log and the nginx directory of each test's tmp_path.
"""

import datetime
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
import redis
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.conf import settings
from django.core.files.base import ContentFile
from django.utils import timezone
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect
from websockets.typing import Origin

from devtools.servers import free_port, wait_for_port
from jobs.models import Status
from jobs.transfer.links import SignedFileSystemStorage
from tests.factories import api_key_for, make_job
from tests.support.origin_server import FileScript, OriginServer
from tests.support.stack import Stack, stack_env

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = [
    ROOT / "deploy" / "nginx" / "downloads.conf.template",
    ROOT / "deploy" / "nginx" / "s3.conf.template",
]
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx; .ci/run does)"),
]

MiB = 1024 * 1024
FILE_ID = 72000
NGINX_BROKER_DB = 13  # 0, 5-12: the other test stacks (see test_alerts)
APP_PER_IP_RATE = 3  # per minute: the app's own, finer limit
# The per-address limits as docker-compose.yml gives them to the nginx service.
SHIPPED_LIMITS = {
    name: str(value)
    for name, value in yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["nginx"][
        "environment"
    ].items()
    if name.endswith(("_RATE", "_BURST"))
}


# --- the stack behind nginx ------------------------------------------------------------------


@dataclass
class Backends:
    stack: Stack
    ports: tuple[int, int]


@pytest.fixture(scope="module")
def backends(django_db_setup: None, origin_server: OriginServer) -> Iterator[Backends]:
    """Two ASGI processes and a worker, configured as behind the TLS proxy."""
    redis.Redis.from_url(f"{settings.REDIS_URL}/{NGINX_BROKER_DB}").flushdb()
    env = stack_env(
        origin_server,
        {
            "TRUST_X_FORWARDED_PROTO": "true",
            "CLIENT_IP_HEADER": "X-Real-IP",
            "DJANGO_ALLOWED_HOSTS": "localhost,127.0.0.1",
            "JOB_INITIATE_RATE_PER_IP": f"{APP_PER_IP_RATE}/minute",
            "FILES_ACCEL_REDIRECT": "true",  # as docker-compose.yml: nginx sends local files
        },
        broker_db=NGINX_BROKER_DB,
    )
    stack = Stack("nginx", env).start()
    try:
        with stack.extra_web("nginx-web-2") as second:
            yield Backends(stack, (stack.port, int(second.rsplit(":", 1)[1])))
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost, as an operator's real one would be."""
    directory = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def static_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`collectstatic` as the Dockerfile runs it (a dummy key, a scratch VAR_DIR), plus a
    file that only nginx can serve."""
    var_dir = tmp_path_factory.mktemp("static-build")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST"))}
    env |= {"DJANGO_SECRET_KEY": "collectstatic-only", "VAR_DIR": str(var_dir)}
    env["DATABASE_URL"] = f"sqlite:///{var_dir / 'unused.sqlite3'}"
    result = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    root = var_dir / "staticfiles"
    (root / "nginx-only.txt").write_text("served by nginx\n")
    return root


# --- nginx ---------------------------------------------------------------------------------


def render(template: str, values: dict[str, str]) -> str:
    """What the official nginx image's envsubst step does with our `${NGINX_*}` names."""
    rendered = re.sub(r"\$\{(NGINX_[A-Z0-9_]+)\}", lambda m: values[m.group(1)], template)
    directives = "\n".join(line for line in rendered.splitlines() if not line.lstrip().startswith("#"))
    assert "${" not in directives, "a name left unrendered"
    return rendered


@dataclass
class Proxy:
    directory: Path
    https_port: int
    http_port: int
    ssl_context: ssl.SSLContext

    @property
    def base_url(self) -> str:
        return f"https://localhost:{self.https_port}"

    def client(self, token: str | None = None, **headers: str) -> httpx.Client:
        if token:
            headers["Authorization"] = f"Token {token}"
        return httpx.Client(base_url=self.base_url, verify=self.ssl_context, headers=headers, timeout=15)

    def access_log(self) -> list[str]:
        return (self.directory / "access.log").read_text().splitlines()

    def error_log(self) -> str:
        return (self.directory / "error.log").read_text()


@pytest.fixture
def start_proxy(
    backends: Backends, certificate: tuple[Path, Path], static_root: Path, tmp_path: Path
) -> Iterator[Callable[..., Proxy]]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(**limits: str) -> Proxy:
        """nginx with the shipped limits (docker-compose.yml's), but for `limits`
        (`NGINX_STATUS_RATE="1r/m"`, ...)."""
        directory = tmp_path / "nginx"
        directory.mkdir()
        https_port, http_port = free_port(), free_port()
        values = {
            "NGINX_UPSTREAM_SERVERS": " ".join(f"server 127.0.0.1:{port};" for port in backends.ports),
            "NGINX_SERVER_NAME": "localhost",
            "NGINX_HTTP_LISTEN": f"127.0.0.1:{http_port}",
            "NGINX_HTTPS_LISTEN": f"127.0.0.1:{https_port}",
            "NGINX_SSL_CERTIFICATE": str(certificate[0]),
            "NGINX_SSL_CERTIFICATE_KEY": str(certificate[1]),
            "NGINX_STATIC_ROOT": str(static_root),
            "NGINX_FILES_ROOT": str(Path(settings.VAR_DIR) / "media"),  # the stack's local storage
            "NGINX_ACCESS_LOG": str(directory / "access.log"),
            **SHIPPED_LIMITS,
            **limits,
            "NGINX_S3_LISTEN": f"127.0.0.1:{free_port()}",
            "NGINX_S3_SERVER_NAME": "s3.localhost",
            "NGINX_S3_UPSTREAM": "127.0.0.1:9",  # never asked here; the server must load
        }
        includes = []
        for template in TEMPLATES:
            conf = directory / template.name.removesuffix(".template")
            conf.write_text(render(template.read_text(), values))
            includes.append(f"include {conf};")
        temp_paths = "\n".join(
            f"{kind}_temp_path {directory / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        # The main file of the official image, with this test's paths. As root, the workers
        # stay root so that they can read pytest's private temporary directories.
        (directory / "nginx.conf").write_text(
            f"""{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} notice;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    {temp_paths}
    {" ".join(includes)}
}}
"""
        )
        assert NGINX is not None
        process = subprocess.Popen(
            [NGINX, "-p", str(directory), "-c", str(directory / "nginx.conf"), "-g", "daemon off;"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        processes.append(process)
        try:
            wait_for_port(https_port, process=process, timeout_s=10)
        except RuntimeError:
            raise AssertionError((process.stdout.read() if process.stdout else b"").decode()) from None
        context = ssl.create_default_context(cafile=str(certificate[0]))
        return Proxy(directory, https_port, http_port, context)

    yield start
    for process in processes:
        os.killpg(process.pid, signal.SIGQUIT)  # graceful: finishes the logs
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def proxy(start_proxy: Callable[..., Proxy]) -> Proxy:
    return start_proxy()


def new_token(django_user_model: Any) -> str:
    user = django_user_model.objects.create_user(f"nginx-{uuid4().hex[:12]}")
    return api_key_for(user)


def watch(url: str, context: ssl.SSLContext, *, timeout_s: float) -> list[dict[str, Any]]:
    """The socket's messages, opened as a page of the site opens it: with the site's https
    origin, which the app sees as its own through nginx's Host and X-Forwarded-Proto."""
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    origin = Origin("https://" + url.split("/")[2])
    with connect(url, ssl=context, origin=origin, open_timeout=10, close_timeout=5) as ws:
        try:
            while True:
                messages.append(json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
        except ConnectionClosedOK:
            pass
    return messages


# --- the tests -----------------------------------------------------------------------------


def test_a_job_runs_end_to_end_through_nginx(proxy, origin_server, django_user_model):
    token = new_token(django_user_model)
    script = origin_server.add(FILE_ID, FileScript(size=3 * MiB, rate_bps=2 * MiB))

    with proxy.client(token) as api, ThreadPoolExecutor(1) as pool:
        initiated = api.post("/v1/download/initiate", json={"file_id": FILE_ID})
        assert initiated.status_code == 200, initiated.text
        data = initiated.json()["data"]
        job_id = data["job_id"]
        # Scheme from nginx's X-Forwarded-Proto, host and port as the client wrote them; the
        # URL's own ticket opens the socket (no token in it).
        assert data["websocket_url"].startswith(
            f"wss://localhost:{proxy.https_port}/v1/download/subscribe/{job_id}?ticket="
        )
        watching = pool.submit(watch, data["websocket_url"], proxy.ssl_context, timeout_s=30)

        polled: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while not polled or polled[-1]["status"] not in {"completed", "failed", "cancelled"}:
            assert time.monotonic() < deadline, polled[-1:]
            reply = api.get(f"/v1/download/status/{job_id}")
            assert reply.status_code == 200, reply.text
            polled.append(reply.json()["data"])
            time.sleep(0.1)
        messages = watching.result(timeout=30)

        link = api.get(f"/v1/download/{job_id}")
        assert link.status_code == 200, link.text
        download_url = link.json()["data"]["download_url"]
        assert download_url.startswith(f"https://localhost:{proxy.https_port}/files/")
        with httpx.Client(verify=proxy.ssl_context, timeout=30) as browser:
            file_response = browser.get(download_url)

    assert polled[-1]["status"] == "completed", polled[-1]
    assert "processing" in {status["status"] for status in polled}
    types = [message["type"] for message in messages]
    assert types[0] == "snapshot", types
    assert "progress" in types, types
    assert types[-1] == "completed", types
    assert file_response.status_code == 200
    assert hashlib.sha256(file_response.content).hexdigest() == script.sha256(FILE_ID)
    assert link.json()["data"]["sha256"] == script.sha256(FILE_ID)
    # The access log keeps no secret: neither the socket's ticket nor the signed link.
    log = "\n".join(proxy.access_log())
    assert token not in log
    assert data["websocket_url"].split("?ticket=")[1] not in log
    assert "/files/[redacted]" in log
    assert download_url.split("/files/")[1] not in log


def test_requests_are_spread_over_both_web_processes(proxy, backends, django_user_model):
    with proxy.client(new_token(django_user_model)) as api:
        for _ in range(8):
            assert api.get("/v1/downloads").status_code == 200

    upstreams = {
        match.group(1)
        for line in proxy.access_log()
        if (match := re.search(r"upstream=127\.0\.0\.1:(\d+)", line))
    }
    assert upstreams == {str(port) for port in backends.ports}


def test_static_files_come_from_nginx(proxy):
    with proxy.client() as client:
        script = client.get("/static/downloads.js")
        only_nginx = client.get("/static/nginx-only.txt")
        metrics = client.get("/metrics")
        ready = client.get("/ready")

    assert script.status_code == 200
    assert script.content == (ROOT / "static" / "downloads.js").read_bytes()
    assert script.headers["Cache-Control"] == "max-age=3600, public"
    assert only_nginx.status_code == 200
    assert only_nginx.text == "served by nginx\n"
    assert metrics.status_code == 404  # not on the public side
    assert ready.status_code == 404  # for the orchestrator, which asks the web processes directly


def test_plain_http_is_sent_to_https(proxy):
    response = httpx.get(f"http://127.0.0.1:{proxy.http_port}/v1/downloads", headers={"Host": "localhost"})

    assert response.status_code == 301
    assert response.headers["Location"] == "https://localhost/v1/downloads"


def test_forwarded_headers_from_the_client_are_overwritten(proxy, django_user_model):
    """A client's own X-Forwarded-Proto and X-Real-IP do not get through: every initiate
    counts against the one real address, whatever each claims, and the app's per-IP limit
    (its JSON 429, finer than nginx's) refuses the one past it."""
    answers = []
    for n in range(APP_PER_IP_RATE + 1):
        spoofed = {
            "X-Forwarded-Proto": "http",
            "X-Real-IP": f"198.51.100.{n + 1}",
            "X-Forwarded-Host": "evil.test",
        }
        with proxy.client(new_token(django_user_model), **spoofed) as api:
            answers.append(api.post("/v1/download/initiate", json={"file_id": 999_999}))

    assert [a.status_code for a in answers] == [200] * APP_PER_IP_RATE + [429]
    for answer in answers[:-1]:
        assert answer.json()["data"]["websocket_url"].startswith(f"wss://localhost:{proxy.https_port}/")
    refused = answers[-1]
    assert refused.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert 'comment="ip"' in refused.headers["RateLimit-Policy"]  # the app's answer, not nginx's


def test_nginx_limits_initiate_per_address_with_429(start_proxy):
    proxy = start_proxy(NGINX_INITIATE_RATE="1r/m", NGINX_INITIATE_BURST="2")

    with proxy.client() as client:
        statuses = [client.post("/v1/download/initiate", json={"file_id": 1}) for _ in range(4)]

    assert [s.status_code for s in statuses] == [401, 401, 401, 429]  # 1 + burst reach the app
    limited = statuses[-1]
    assert limited.json() == {
        "success": False,
        "error": {"code": "RATE_LIMIT_EXCEEDED", "message": "Too many download requests", "retry_after": 60},
    }
    assert limited.headers["Retry-After"] == "60"
    assert "RateLimit-Policy" not in limited.headers  # the app never saw it
    assert "limiting requests" in proxy.error_log()


JOB_ID = "job_" + "0" * 32
WEBSOCKET_UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


@pytest.mark.parametrize(
    ("zone", "method", "path", "headers", "message", "retry_after"),
    [
        ("STATUS", "GET", f"/v1/download/status/{JOB_ID}", {}, "Too many status requests", 2),
        ("LINK", "GET", f"/v1/download/{JOB_ID}", {}, "Too many download requests", 10),
        ("LINK", "DELETE", f"/v1/download/{JOB_ID}", {}, "Too many download requests", 10),
        ("LINK", "GET", "/files/not-a-signed-token", {}, "Too many download requests", 10),
        ("SOCKET", "GET", f"/v1/download/subscribe/{JOB_ID}", WEBSOCKET_UPGRADE, "Too many connections", 10),
        ("LOGIN", "GET", "/accounts/login/", {}, "Too many sign-in requests", 60),
        ("LOGIN", "POST", "/accounts/login/", {}, "Too many sign-in requests", 60),
    ],
)
def test_nginx_limits_each_path_per_address_with_429(
    start_proxy, zone, method, path, headers, message, retry_after
):
    """Past its burst, each limit answers nginx's own 429 in the API's envelope; until then
    the app answers (whatever it says: 401, 403, 404)."""
    proxy = start_proxy(**{f"NGINX_{zone}_RATE": "1r/m", f"NGINX_{zone}_BURST": "2"})

    with proxy.client(**headers) as client:
        answers = [client.request(method, path) for _ in range(4)]

    assert [a.status_code != 429 for a in answers] == [True, True, True, False], [
        a.status_code for a in answers
    ]
    limited = answers[-1]
    assert limited.json() == {
        "success": False,
        "error": {"code": "RATE_LIMIT_EXCEEDED", "message": message, "retry_after": retry_after},
    }
    assert limited.headers["Retry-After"] == str(retry_after)
    assert limited.headers["Cache-Control"] == "no-store"
    assert "limiting requests" in proxy.error_log()


def test_the_limits_are_per_zone(start_proxy):
    """Polls past the status limit leave the download link and the sign-in page alone."""
    proxy = start_proxy(NGINX_STATUS_RATE="1r/m", NGINX_STATUS_BURST="1")

    with proxy.client() as client:
        polls = [client.get(f"/v1/download/status/{JOB_ID}").status_code for _ in range(3)]
        others = [
            client.get(f"/v1/download/{JOB_ID}").status_code,
            client.get("/accounts/login/").status_code,
        ]

    assert polls == [401, 401, 429]
    assert others == [401, 200]


def test_polling_at_the_documented_rate_from_one_address_is_not_limited(proxy):
    """Forty users behind one address each poll a job every 2 s (polling_interval), with the
    shipped limits: 20 polls a second for three rounds, none refused. The round's polls
    leave together, the way a crowd's timers line up after a page load or a network blip."""
    users, rounds, interval_s = 40, 3, 2.0
    statuses: list[int] = []
    with proxy.client() as client, ThreadPoolExecutor(8) as pool:
        for round_number in range(rounds):
            started = time.monotonic()
            polls = pool.map(lambda _: client.get(f"/v1/download/status/{JOB_ID}").status_code, range(users))
            statuses.extend(polls)
            if round_number < rounds - 1:
                time.sleep(max(0.0, interval_s - (time.monotonic() - started)))

    assert len(statuses) == users * rounds
    assert set(statuses) == {401}, sorted(set(statuses))  # the app's answer, never nginx's 429
    assert "limiting requests" not in proxy.error_log()


def test_http2_is_negotiated(proxy, certificate):
    """ALPN offers h2 and nginx takes it (curl with nghttp2); a client without it keeps
    HTTP/1.1, as the WebSocket of test_a_job_runs_end_to_end_through_nginx does."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    result = subprocess.run(
        [curl, "--http2", "--silent", "--show-error", "--cacert", str(certificate[0]),
         "--output", "/dev/null", "--write-out", "%{http_version} %{http_code}", f"{proxy.base_url}/health"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert result.stdout == "2 200"
    with proxy.client() as http1:
        assert http1.get("/health").http_version == "HTTP/1.1"


def test_a_client_bypassing_the_proxy_cannot_claim_https(local_stack, django_user_model):
    """uvicorn runs with --no-proxy-headers: its default would trust X-Forwarded-Proto from
    127.0.0.1 whatever the app's settings say (here TRUST_X_FORWARDED_PROTO is off)."""
    with local_stack.client(new_token(django_user_model)) as api:
        response = api.post(
            "/v1/download/initiate",
            json={"file_id": 999_998},
            headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"},
        )

    assert response.status_code == 200, response.text
    assert response.json()["data"]["websocket_url"].startswith(f"ws://127.0.0.1:{local_stack.port}/")


def test_the_probes_answer_a_pod_address_and_other_paths_refuse_it(backends):
    """A probe or a scrape reaches a process by its address (a pod's, an instance's), which
    DJANGO_ALLOWED_HOSTS does not list: `/health`, `/ready` and `/metrics` answer it, the
    image's HEALTHCHECK passes, and any other path still answers 400 to that Host."""
    base = f"http://127.0.0.1:{backends.ports[0]}"
    env = {**os.environ, "DJANGO_ALLOWED_HOSTS": "localhost,127.0.0.1"}

    healthy = subprocess.run([sys.executable, "-m", "stack.healthcheck", f"{base}/health"], env=env, cwd=ROOT)
    pod = {"Host": "10.1.2.3:8000"}

    assert healthy.returncode == 0
    assert httpx.get(f"{base}/health", headers=pod).status_code == 200
    assert httpx.get(f"{base}/metrics", headers=pod).status_code == 200
    assert httpx.get(f"{base}/accounts/login/", headers=pod).status_code == 400


def test_a_signed_link_is_sent_by_nginx_and_its_internal_location_is_not_reachable(proxy, django_user_model):
    """The app answers the link with headers and X-Accel-Redirect; nginx sends the file
    (its static module: ETag, byte ranges, which the app's own sender does not do)."""
    user = django_user_model.objects.create_user(f"nginx-{uuid4().hex[:12]}")
    content = os.urandom(3 * MiB)
    storage = SignedFileSystemStorage(location=str(Path(settings.VAR_DIR) / "media"), base_url="/files/")
    key = storage.save(f"downloads/{user.pk}/nginx-{uuid4().hex}-1", ContentFile(content))
    job = make_job(
        user, status=Status.COMPLETED, attempts=1, progress=100, storage_key=key, file_name="data.bin",
        file_size_bytes=len(content), content_type="application/octet-stream",
        sha256=hashlib.sha256(content).hexdigest(), completed_at=timezone.now(),
        expires_at=timezone.now() + timedelta(hours=1),
    )  # fmt: skip

    with proxy.client(api_key_for(user)) as api:
        link = api.get(f"/v1/download/{job.job_id}")
        assert link.status_code == 200, link.text
        url = link.json()["data"]["download_url"]
    with httpx.Client(verify=proxy.ssl_context, timeout=30) as browser:
        whole = browser.get(url)
        part = browser.get(url, headers={"Range": "bytes=10-19"})
        internal = browser.get(f"{proxy.base_url}/internal/files/{key}")
        spoofed = browser.get(
            f"{proxy.base_url}/health", headers={"X-Accel-Redirect": f"/internal/files/{key}"}
        )

    assert whole.status_code == 200
    assert whole.content == content
    assert whole.headers["Content-Type"] == "application/octet-stream"
    assert whole.headers["Content-Disposition"] == 'attachment; filename="data.bin"'
    assert whole.headers["Cache-Control"] == "private, no-store"
    assert whole.headers["X-Content-Type-Options"] == "nosniff"
    assert whole.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert "X-Accel-Redirect" not in whole.headers
    assert "ETag" in whole.headers  # nginx's static module
    assert part.status_code == 206
    assert part.content == content[10:20]
    assert internal.status_code == 404
    assert content[:64] not in internal.content
    assert spoofed.status_code == 200
    assert spoofed.json() == {"status": "ok"}
    log = "\n".join(proxy.access_log())
    assert key not in log
    assert url.split("/files/")[1] not in log
