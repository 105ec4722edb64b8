"""Security: TLS settings (`check --deploy`, Secure cookies, HSTS, the https redirect),
CSRF on the page's session requests, secrets kept out of logs (the filter, and a real
uvicorn's output), hostile file names in Content-Disposition (local and S3 links), and
owner-only access on every endpoint and the socket."""

import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.storage import Storage, storages
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient
from uvicorn.logging import AccessFormatter
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as websocket_connect

from devtools.servers import free_port, wait_for_port
from downloads_project.asgi import application
from downloads_project.logging import REDACTED, RedactSecrets, redact, redact_handlers
from jobs.models import DownloadJob, Status, new_job_id
from jobs.transfer.content_headers import attachment_disposition
from jobs.transfer.origins import safe_file_name
from stack import processes
from tests.factories import api_key_for, make_job
from tests.support.files import served_bytes
from tests.support.s3 import s3_downloads_storage
from tests.support.stack import database_url, manage

ROOT = Path(__file__).resolve().parents[2]
INITIATE = "/v1/download/initiate"
LIST = "/v1/downloads"
HSTS_YEAR = "max-age=31536000; includeSubDomains"


def error(code: str, message: str) -> dict[str, Any]:
    return {"success": False, "error": {"code": code, "message": message}}


# --- settings: check --deploy and the embedded default -------------------------------------


@pytest.fixture
def production_env(clean_env: dict[str, str]) -> dict[str, str]:
    return clean_env | {
        "DJANGO_SECURE": "true",
        "DJANGO_SECURE_HSTS_PRELOAD": "true",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "downloads.example.com",
        "DJANGO_CSRF_TRUSTED_ORIGINS": "https://downloads.example.com",
        "TRUST_X_FORWARDED_PROTO": "true",
    }


def test_check_deploy_passes_with_production_settings(production_env):
    result = manage(["check", "--deploy", "--fail-level", "WARNING"], production_env)

    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_fails_without_the_secure_switch(production_env):
    del production_env["DJANGO_SECURE"]

    result = manage(["check", "--deploy", "--fail-level", "WARNING"], production_env)

    assert result.returncode != 0
    warned = set(re.findall(r"\(security\.(W\d+)\)", result.stderr))
    assert warned == {"W004", "W008", "W012", "W016"}  # HSTS, redirect, both cookies


def test_check_deploy_warns_while_hsts_preload_is_off(production_env):
    del production_env["DJANGO_SECURE_HSTS_PRELOAD"]

    result = manage(["check", "--deploy", "--fail-level", "WARNING"], production_env)

    assert result.returncode != 0
    assert set(re.findall(r"\(security\.(W\d+)\)", result.stderr)) == {"W021"}


def test_secure_switch_refuses_the_embedded_secret_key(production_env):
    del production_env["DJANGO_SECRET_KEY"]

    result = manage(["check"], production_env)

    assert result.returncode != 0
    assert "ImproperlyConfigured: DJANGO_SECURE is on: set DJANGO_SECRET_KEY" in result.stderr


def test_embedded_default_is_plain_http_with_the_always_on_headers(clean_env):
    names = [
        "SECURE", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS",
        "SESSION_COOKIE_HTTPONLY", "CSRF_COOKIE_HTTPONLY", "SECURE_CONTENT_TYPE_NOSNIFF",
        "SECURE_REFERRER_POLICY", "X_FRAME_OPTIONS",
    ]  # fmt: skip
    code = f"from django.conf import settings; print([getattr(settings, n) for n in {names!r}])"
    result = manage(["shell", "-c", code], clean_env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(
        [False, False, False, False, 0, True, False, True, "same-origin", "DENY"]
    )


def test_embedded_default_serves_the_login_page_over_http(db):
    response = Client().get("/accounts/login/")

    assert response.status_code == 200
    assert "Strict-Transport-Security" not in response
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert not response.cookies["csrftoken"]["secure"]


# --- behind TLS: Secure cookies, HSTS, the redirect -----------------------------------------


@pytest.fixture
def secure_settings(settings: Any) -> Any:
    """What DJANGO_SECURE=true sets (the middleware reads them when a client first asks)."""
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = True
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_HSTS_PRELOAD = False
    settings.SECURE_PROXY_SSL_HEADER = None
    return settings


def test_cookies_are_secure_and_the_session_cookie_httponly_over_https(secure_settings, user):
    client = Client(enforce_csrf_checks=True)
    page = client.get("/accounts/login/", secure=True)
    csrf = page.cookies["csrftoken"]

    login = client.post(
        "/accounts/login/",
        {"username": "alice", "password": "alice-password", "csrfmiddlewaretoken": csrf.value},
        secure=True,
        HTTP_REFERER="https://testserver/accounts/login/",
    )

    assert login.status_code == 302
    session = login.cookies["sessionid"]
    assert (session["secure"], session["httponly"], session["samesite"]) == (True, True, "Lax")
    assert (csrf["secure"], csrf["httponly"]) == (True, "")  # the page's script reads it


def test_https_responses_carry_hsts(secure_settings, db):
    response = Client().get("/accounts/login/", secure=True)

    assert response.status_code == 200
    assert response["Strict-Transport-Security"] == HSTS_YEAR


@pytest.mark.parametrize(
    "path", ["/", "/accounts/login/?next=/", LIST, "/v1/download/status/job_1", "/files/x"]
)
def test_http_is_redirected_to_https(secure_settings, db, path):
    response = Client().get(path)

    assert response.status_code == 301
    assert response["Location"] == f"https://testserver{path}"
    assert "Strict-Transport-Security" not in response


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics"])
def test_probes_are_answered_over_plain_http(secure_settings, db, path):
    response = Client().get(path)

    assert response.status_code in (200, 503)  # /ready may find a part missing here
    assert "Strict-Transport-Security" not in response


def test_x_forwarded_proto_counts_only_when_trusted(secure_settings, db):
    claimed = Client().get("/accounts/login/", HTTP_X_FORWARDED_PROTO="https")
    secure_settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    trusted = Client().get("/accounts/login/", HTTP_X_FORWARDED_PROTO="https")

    assert claimed.status_code == 301
    assert trusted.status_code == 200
    assert trusted["Strict-Transport-Security"] == HSTS_YEAR
    assert trusted.cookies["csrftoken"]["secure"]


# --- CSRF on the page's session requests ------------------------------------------------------


@pytest.fixture
def page(user: User) -> tuple[Client, str]:
    """A signed-in browser that loaded the page, which sets the CSRF cookie its script reads."""
    client = Client(enforce_csrf_checks=True)
    assert client.login(username="alice", password="alice-password")
    assert client.get("/").status_code == 200
    return client, client.cookies["csrftoken"].value


def test_page_initiate_without_the_csrf_token_is_refused(page, dispatched):
    client, _token = page

    response = client.post(INITIATE, {"file_id": 70000}, content_type="application/json")

    assert response.status_code == 403
    assert response.json() == error("PERMISSION_DENIED", "CSRF Failed: CSRF token missing.")
    assert DownloadJob.objects.count() == 0


def test_page_initiate_with_a_wrong_csrf_token_is_refused(page, dispatched):
    client, _token = page

    response = client.post(
        INITIATE, {"file_id": 70000}, content_type="application/json", HTTP_X_CSRFTOKEN="x" * 64
    )

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "PERMISSION_DENIED"
    assert DownloadJob.objects.count() == 0


def test_page_initiate_with_the_csrf_token_works(page, user, dispatched):
    client, token = page

    response = client.post(
        INITIATE, {"file_id": 70000}, content_type="application/json", HTTP_X_CSRFTOKEN=token
    )

    assert response.status_code == 200
    assert DownloadJob.objects.get().owner == user


def test_page_cancel_needs_the_csrf_token(page, user):
    client, token = page
    job = make_job(user)

    refused = client.delete(f"/v1/download/{job.job_id}")
    job.refresh_from_db()
    status_after_refusal = job.status
    cancelled = client.delete(f"/v1/download/{job.job_id}", HTTP_X_CSRFTOKEN=token)

    assert refused.status_code == 403
    assert refused.json() == error("PERMISSION_DENIED", "CSRF Failed: CSRF token missing.")
    assert status_after_refusal == Status.QUEUED
    assert cancelled.status_code == 200
    assert cancelled.json() == {"success": True, "message": "Job cancelled successfully"}


def test_page_requests_over_https_need_a_same_site_origin(secure_settings, user, dispatched):
    client = Client(enforce_csrf_checks=True)
    assert client.login(username="alice", password="alice-password")
    token = client.get("/", secure=True).cookies["csrftoken"].value
    headers = {"content_type": "application/json", "HTTP_X_CSRFTOKEN": token, "secure": True}

    foreign = client.post(INITIATE, {"file_id": 1}, HTTP_ORIGIN="https://evil.example", **headers)
    same = client.post(INITIATE, {"file_id": 1}, HTTP_ORIGIN="https://testserver", **headers)

    assert foreign.status_code == 403
    assert foreign.json()["error"]["code"] == "PERMISSION_DENIED"
    assert same.status_code == 200


def test_token_clients_need_no_csrf_token(user, dispatched):
    client = APIClient(enforce_csrf_checks=True)
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_key_for(user)}")

    assert client.post(INITIATE, {"file_id": 1}, format="json").status_code == 200


def test_login_form_without_the_csrf_token_is_refused(user):
    client = Client(enforce_csrf_checks=True)
    token = client.get("/accounts/login/").cookies["csrftoken"].value
    credentials = {"username": "alice", "password": "alice-password"}

    refused = client.post("/accounts/login/", credentials)
    accepted = client.post("/accounts/login/", {**credentials, "csrfmiddlewaretoken": token})

    assert refused.status_code == 403
    assert "sessionid" not in refused.cookies
    assert accepted.status_code == 302


# --- secrets kept out of logs -----------------------------------------------------------------

DRF_KEY = "9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b"


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        (
            '127.0.0.1:5000 - "WebSocket /v1/download/subscribe/job_1?token=SECRET123&x=1" [accepted]',
            f'127.0.0.1:5000 - "WebSocket /v1/download/subscribe/job_1?token={REDACTED}&x=1" [accepted]',
        ),
        (
            '127.0.0.1:5000 - "WebSocket /v1/download/subscribe/job_1?ticket=eyJ1IjoxfQ:1tX:Q2lS-_x" 403',
            f'127.0.0.1:5000 - "WebSocket /v1/download/subscribe/job_1?ticket={REDACTED}" 403',
        ),
        ("Authorization: Token SECRET456", f"Authorization: Token {REDACTED}"),
        ("Authorization: Bearer eyJhbGciOi.x.y", f"Authorization: Bearer {REDACTED}"),
        ("{'HTTP_AUTHORIZATION': 'Token SECRET456'}", f"{{'HTTP_AUTHORIZATION': 'Token {REDACTED}'}}"),
        (f"created token {DRF_KEY} for demo", f"created token {REDACTED} for demo"),
        (f"sent Token {DRF_KEY}", f"sent Token {REDACTED}"),
        ("new key dlk_" + "0a" * 32 + " for demo", f"new key {REDACTED} for demo"),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F2024"
            "&X-Amz-Security-Token=IQoJb3&X-Amz-Signature=abcdef0123&X-Amz-Expires=900",
            f"https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={REDACTED}"
            f"&X-Amz-Security-Token={REDACTED}&X-Amz-Signature={REDACTED}&X-Amz-Expires=900",
        ),
        (
            '"GET /files/.eJxVjMsKgjAQRf9l1i5KbVKXfYAQ:1tX:Q2lS HTTP/1.1" 200',
            f'"GET /files/{REDACTED} HTTP/1.1" 200',
        ),
        ("redis://:hunter2pass@cache:6379/0", f"redis://:{REDACTED}@cache:6379/0"),
        ("postgres://app:pw0rd@db/downloads", f"postgres://app:{REDACTED}@db/downloads"),
        ("Cookie: sessionid=abc123; csrftoken=def456", f"Cookie: sessionid={REDACTED}; csrftoken={REDACTED}"),
        # What must stay: ids, hashes, prose.
        ("job job_0123456789abcdef0123456789abcdef done", "job job_0123456789abcdef0123456789abcdef done"),
        ("sha256 " + "ab" * 32, "sha256 " + "ab" * 32),
        ("Token authentication failed", "Token authentication failed"),
    ],
)
def test_redact(text, redacted):
    assert redact(text) == redacted


def record(msg: str, *args: Any, name: str = "test", exc_info: Any = None) -> logging.LogRecord:
    return logging.LogRecord(name, logging.INFO, __file__, 1, msg, args or None, exc_info)


def test_the_filter_formats_then_redacts_a_secret_split_across_msg_and_args():
    entry = record("auth %s %s", "Authorization:", "Token SECRET456")

    assert RedactSecrets().filter(entry) is True
    assert entry.getMessage() == f"auth Authorization: Token {REDACTED}"


def test_the_filter_keeps_the_args_that_uvicorn_access_formatter_reads():
    entry = record('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", "/health?token=SECRET123", "1.1", 200)

    RedactSecrets().filter(entry)

    assert entry.args == ("127.0.0.1:1", "GET", f"/health?token={REDACTED}", "1.1", 200)
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False).format(
        entry
    )
    assert line == f'127.0.0.1:1 - "GET /health?token={REDACTED} HTTP/1.1" 200 OK'


def test_the_filter_redacts_tracebacks_and_the_configured_secrets(monkeypatch):
    monkeypatch.setenv("DJANGO_SECRET_KEY", "the-secret-key-of-this-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG")
    try:
        raise ValueError(
            "GET /files/.eJxVjMsKgjAQRf9l1i5KbVKXfYAQ:1tX:Q2lS?token=SECRET123 with wJalrXUtnFEMI/K7MDENG"
        )
    except ValueError:
        entry = record("failed with %s", "the-secret-key-of-this-test", exc_info=sys.exc_info())

    RedactSecrets().filter(entry)
    text = logging.Formatter().format(entry)

    assert "Traceback" in text
    for secret in (
        "the-secret-key-of-this-test",
        "wJalrXUtnFEMI",
        "SECRET123",
        "eJxVjMsKgjAQRf9l1i5KbVKXfYAQ",
    ):
        assert secret not in text


def test_every_logging_handler_has_the_filter(settings):
    handlers = settings.LOGGING["handlers"]

    assert handlers
    assert all("redact_secrets" in handler.get("filters", []) for handler in handlers.values())
    assert settings.LOGGING["filters"]["redact_secrets"]["()"] == "downloads_project.logging.RedactSecrets"


def test_celery_handlers_get_the_filter_once():
    logger = logging.getLogger("test_security.celery")
    handler = logging.StreamHandler()
    logger.addHandler(handler)
    try:
        redact_handlers(logger=logger)
        redact_handlers(logger=logger)
        assert [type(f) for f in handler.filters] == [RedactSecrets]
    finally:
        logger.removeHandler(handler)


@pytest.mark.e2e
def test_uvicorn_access_log_is_on_and_shows_no_secret(transactional_db, user):
    """A real uvicorn as runstack and the test stacks start it (access log on)."""
    key = api_key_for(user)
    job = make_job(user)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "AWS_"))}
    env |= {
        "DJANGO_SETTINGS_MODULE": "downloads_project.settings",
        "DATABASE_URL": database_url(),
        "REDIS_URL": django_settings.REDIS_URL,
        "VAR_DIR": str(django_settings.VAR_DIR),
    }
    server = subprocess.Popen(
        processes.web_argv(port=port),
        cwd=ROOT, env=env, text=True, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_port(port, process=server)
        base = f"127.0.0.1:{port}"
        with httpx.Client(base_url=f"http://{base}", timeout=10) as http:
            assert http.get("/health?token=SECRET123").status_code == 200
            assert http.get(LIST, headers={"Authorization": "Token SECRET456"}).status_code == 401
            assert (
                http.get(f"{LIST}?token={key}", headers={"Authorization": f"Token {key}"}).status_code == 200
            )
        subscribe = f"ws://{base}/v1/download/subscribe/{job.job_id}?token="
        with websocket_connect(subscribe + "SECRET123") as ws, pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4401
        with websocket_connect(subscribe + key) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "snapshot"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        output, _ = server.communicate(timeout=15)

    assert f'"GET /health?token={REDACTED} HTTP/1.1" 200' in output  # the access log is on
    assert f"/v1/download/subscribe/{job.job_id}?token={REDACTED}" in output  # the handshake line
    for secret in ("SECRET123", "SECRET456", key):
        assert secret not in output


# --- Content-Disposition of hostile file names ---------------------------------------------

HOSTILE_NAMES = [
    "../../etc/passwd",
    'a"; filename=evil.exe',
    "x\r\nSet-Cookie: a=b",
    "résumé 2024.pdf",
    "報告書.pdf",
    "invoice\u202efdp.exe",  # right-to-left override: would show as "invoiceexe.pdf"
    "zero\u200bwidth\u2028line.txt",
    "C:\\Windows\\system32\\x.dll",
    "%2e%2e%2fpercent.txt",
    "x" * 250 + ".pdf",  # the column holds 255 characters; the header gets at most 200 bytes
    "é" * 250 + ".pdf",
    "",
]
# RFC 6266: attachment, a quoted ASCII filename with nothing to escape, and the exact name
# as RFC 5987 ext-value when the ASCII one is not it.
DISPOSITION = re.compile(
    r"attachment; filename=\"(?P<plain>[A-Za-z0-9 !#$&'()+,\-.=@\[\]^_`{}~]+)\""
    r"(?:; filename\*=UTF-8''(?P<encoded>[A-Za-z0-9%\-._~]+))?"
)


def saved_name(header: str) -> str:
    """The name a browser saves: `filename*` when sent, else `filename`."""
    match = DISPOSITION.fullmatch(header)
    assert match, header
    return unquote(match["encoded"], errors="strict") if match["encoded"] else match["plain"]


def check_saved_name(name: str) -> None:
    assert name
    assert name == name.strip()
    assert not name.startswith(".")
    assert not set(name) & set('/\\"\r\n\x00:*?<>|')
    assert all(char.isprintable() for char in name)
    assert len(name.encode()) <= 200


@pytest.mark.parametrize("file_name", HOSTILE_NAMES)
def test_attachment_disposition_of_hostile_names(file_name):
    header = attachment_disposition(file_name)

    name = saved_name(header)
    check_saved_name(name)
    assert name == safe_file_name(file_name, fallback="download")


def test_safe_file_name_keeps_an_extension_within_200_bytes_of_utf8():
    assert safe_file_name("é" * 300 + ".pdf", fallback="f") == "é" * 98 + ".pdf"
    assert safe_file_name("invoice\u202efdp.exe", fallback="f") == "invoice_fdp.exe"
    assert safe_file_name("e\u0301te\u0301.txt", fallback="f") == "été.txt"  # NFC


def completed_job(owner: User, storage: Storage, file_name: str) -> DownloadJob:
    key = f"downloads/{owner.pk}/{new_job_id()}-1"
    storage.save(key, ContentFile(b"data"))
    return make_job(
        owner,
        status=Status.COMPLETED,
        attempts=1,
        storage_key=key,
        file_name=file_name,  # as stored: the header must be safe even if the row is not
        file_size_bytes=4,
        content_type="text/html\r\nX-Injected: 1",
        completed_at=timezone.now(),
        expires_at=timezone.now() + timedelta(hours=24),
    )


@pytest.mark.parametrize("file_name", HOSTILE_NAMES)
def test_local_file_link_of_a_hostile_name(api_client, user, local_storage, file_name):
    job = completed_job(user, local_storage, file_name)

    link = api_client.get(f"/v1/download/{job.job_id}").json()["data"]
    response = Client().get(urlsplit(link["download_url"]).path)

    assert response.status_code == 200
    assert served_bytes(response) == b"data"
    assert saved_name(response["Content-Disposition"]) == safe_file_name(file_name, fallback="download")
    assert response["Content-Type"] == "application/octet-stream"
    assert "X-Injected" not in response
    assert response["Content-Security-Policy"] == "default-src 'none'; sandbox"


@pytest.fixture
def s3_storage(settings: Any, s3: Any) -> Storage:
    settings.STORAGES = {**settings.STORAGES, "downloads": s3_downloads_storage(s3)}
    return storages["downloads"]


@pytest.mark.parametrize("file_name", HOSTILE_NAMES[:6])
def test_s3_presigned_link_of_a_hostile_name(api_client, user, s3_storage, file_name):
    job = completed_job(user, s3_storage, file_name)

    link = api_client.get(f"/v1/download/{job.job_id}").json()["data"]
    query = {name: values[0] for name, values in parse_qs(urlsplit(link["download_url"]).query).items()}
    response = httpx.get(link["download_url"])  # moto serves the overrides as S3 does

    assert query["response-content-disposition"] == attachment_disposition(file_name)
    assert saved_name(query["response-content-disposition"]) == safe_file_name(file_name, fallback="download")
    assert query["response-content-type"] == "application/octet-stream"
    assert response.status_code == 200
    assert response.headers["content-disposition"] == query["response-content-disposition"]
    assert "x-injected" not in response.headers


# --- owner-only, unguessable ids ------------------------------------------------------------


def test_job_ids_carry_128_random_bits():
    ids = {new_job_id() for _ in range(1000)}

    assert len(ids) == 1000
    assert all(re.fullmatch(r"job_[0-9a-f]{32}", job_id) for job_id in ids)


ENDPOINTS = [
    ("get", "/v1/download/status/{}"),
    ("get", "/v1/download/{}"),
    ("delete", "/v1/download/{}"),
]


@pytest.mark.parametrize("status", list(Status))
@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_another_users_job_is_not_found_in_every_status(
    api_client, other_user, local_storage, method, url, status
):
    """Whatever the state of the job (a completed one has a link to give, a finished one
    would answer 409 to its owner), another user learns nothing but 404."""
    foreign = make_job(other_user, status=status, storage_key=f"downloads/{other_user.pk}/x")
    local_storage.save(foreign.storage_key, ContentFile(b"theirs"))

    response = getattr(api_client, method)(url.format(foreign.job_id))

    assert response.status_code == 404
    assert response.json() == error("JOB_NOT_FOUND", "Job not found")
    foreign.refresh_from_db()
    assert foreign.status == status


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_another_users_job_is_not_found_through_the_session_either(other_user, user, method, url):
    foreign = make_job(other_user)
    client = Client()
    assert client.login(username="alice", password="alice-password")

    response = getattr(client, method)(url.format(foreign.job_id))

    assert response.status_code == 404
    assert response.json() == error("JOB_NOT_FOUND", "Job not found")


@pytest.mark.parametrize(("method", "url"), [*ENDPOINTS, ("get", LIST)])
def test_anonymous_requests_for_a_real_job_are_401(user, method, url):
    job = make_job(user, status=Status.COMPLETED)

    response = getattr(APIClient(), method)(url.format(job.job_id))

    assert response.status_code == 401
    assert response.json() == error("UNAUTHENTICATED", "Authentication credentials were not provided.")


def test_the_list_never_shows_another_users_jobs(api_client, other_user):
    for status in Status:
        make_job(other_user, status=status)

    for query in ("", "?status=active", "?status=completed"):
        response = api_client.get(LIST + query)
        assert response.status_code == 200
        assert response.json()["data"]["results"] == []


def socket_close_code(path: str) -> int:
    async def scenario() -> int:
        communicator = WebsocketCommunicator(application, path)
        connected, _ = await communicator.connect(timeout=5)
        assert connected
        output = await communicator.receive_output(timeout=5)
        await communicator.disconnect()
        assert output["type"] == "websocket.close", output
        code: int = output["code"]
        return code

    result: int = async_to_sync(scenario)()
    return result


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("status", [Status.QUEUED, Status.COMPLETED, Status.FAILED])
def test_socket_of_another_users_job_is_closed_4404_and_anonymous_4401(user, other_user, status):
    foreign = make_job(other_user, status=status)
    key = api_key_for(user)

    assert socket_close_code(f"/v1/download/subscribe/{foreign.job_id}?token={key}") == 4404
    assert socket_close_code(f"/v1/download/subscribe/{foreign.job_id}") == 4401


def test_the_filter_leaves_short_paths_alone():
    """An origin's `/files/70000` is not a signed link."""
    entry = record("GET %s", "http://origin.internal/files/70000")

    RedactSecrets().filter(entry)

    assert entry.getMessage() == "GET http://origin.internal/files/70000"
