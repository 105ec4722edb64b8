"""Findings of the outside security review that live in the API, the probes, the services
and the settings: each test failed before its fix."""

import os
import signal
import subprocess
from datetime import timedelta
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from rest_framework.test import APIClient

from devtools.servers import free_port, wait_for_port
from jobs import services
from jobs.models import DownloadJob, Status
from stack import processes
from tests.support.stack import ROOT, manage

pytestmark = pytest.mark.django_db


# --- 8: a body over the upload limit ---------------------------------------------------------


def test_a_body_over_the_upload_limit_is_413_in_the_envelope(api_client: APIClient, settings: Any) -> None:
    body = '{"file_id": 1, "metadata": {"x": "' + "a" * (3 * 1024 * 1024) + '"}}'
    response = api_client.post("/v1/download/initiate", body, content_type="application/json")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert not DownloadJob.objects.exists()


# --- 9: /ready says which check failed, not what the exception said ---------------------------


def test_ready_names_the_failed_check_without_its_details(
    client: Any, settings: Any, local_storage: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.CELERY_BROKER_URL = "redis://internal-broker.invalid:6390/0"
    response = client.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["redis_broker"]
    assert body["checks"]["redis_broker"] == "failed"
    assert "internal-broker" not in response.content.decode()
    # The operator finds the details in the log.
    assert any("internal-broker" in record.getMessage() for record in caplog.records)


# --- 11: weak secrets outside DJANGO_SECURE --------------------------------------------------


def test_the_embedded_secret_key_is_refused_for_hosts_beyond_loopback(clean_env: dict[str, str]) -> None:
    env = clean_env | {"DJANGO_ALLOWED_HOSTS": "downloads.example.com"}
    result = manage(["check"], env)
    assert result.returncode != 0
    assert "set DJANGO_SECRET_KEY" in result.stderr


def test_the_example_files_placeholder_secret_is_refused(clean_env: dict[str, str]) -> None:
    env = clean_env | {"DJANGO_SECRET_KEY": "change-me-to-50-or-more-random-characters"}
    result = manage(["check"], env)
    assert result.returncode != 0
    assert "placeholder" in result.stderr


def test_the_embedded_secret_key_serves_loopback(clean_env: dict[str, str]) -> None:
    assert manage(["check"], clean_env).returncode == 0


def test_runstack_refuses_a_public_address_with_the_embedded_secret_key(clean_env: dict[str, str]) -> None:
    result = manage(["runstack", "--host", "0.0.0.0"], clean_env)
    assert result.returncode != 0
    assert "set DJANGO_SECRET_KEY" in result.stderr


@pytest.mark.e2e
def test_uvicorn_refuses_the_embedded_secret_key_on_a_public_address(
    clean_env: dict[str, str],
) -> None:
    """As the Dockerfile's CMD runs it (`--host 0.0.0.0`), with no DJANGO_SECRET_KEY."""
    web = subprocess.Popen(
        processes.web_argv(host="0.0.0.0", port=free_port()),
        cwd=ROOT,
        env=clean_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = web.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(web.pid, signal.SIGKILL)
        web.communicate()
        pytest.fail("uvicorn served the embedded secret key on 0.0.0.0")
    assert web.returncode != 0
    assert "The embedded secret key is public and this web process would listen on 0.0.0.0" in output
    assert "set DJANGO_SECRET_KEY" in output


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("host", "secret_key"),
    [("127.0.0.1", None), ("0.0.0.0", "x" * 50)],
    ids=["loopback", "own key"],
)
def test_uvicorn_serves_on_loopback_or_with_a_key_of_its_own(
    clean_env: dict[str, str], host: str, secret_key: str | None
) -> None:
    port = free_port()
    env = clean_env | ({"DJANGO_SECRET_KEY": secret_key} if secret_key else {})
    web = subprocess.Popen(
        processes.web_argv(host=host, port=port),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port(port, process=web)
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        web.wait(timeout=30)


# --- also: settings that stopped the stack or throttled whole offices ------------------------


def test_a_redis_url_with_a_database_number_is_refused_at_start(clean_env: dict[str, str]) -> None:
    result = manage(["check"], clean_env | {"REDIS_URL": "redis://127.0.0.1:6379/7"})
    assert result.returncode != 0
    assert "REDIS_URL" in result.stderr
    assert "without a database number" in result.stderr


def test_the_per_address_initiate_rate_is_well_above_the_per_user_one(clean_env: dict[str, str]) -> None:
    """Many users share one address behind a NAT or an office proxy."""
    script = "from django.conf import settings as s; print(s.JOB_INITIATE_RATE, s.JOB_INITIATE_RATE_PER_IP)"
    result = manage(["shell", "-c", script], clean_env)
    per_user, per_ip = (int(rate.split("/")[0]) for rate in result.stdout.splitlines()[-1].split())
    assert per_ip >= 10 * per_user


# --- also: rows of ended jobs are purged after the audit retention ----------------------------


def _ended(owner: User, status: str, days_ago: float, **fields: Any) -> DownloadJob:
    job = DownloadJob.objects.create(owner=owner, file_id=1, status=status, **fields)
    DownloadJob.objects.filter(pk=job.pk).update(
        updated_at=timezone.now() - timedelta(days=days_ago),
        created_at=timezone.now() - timedelta(days=days_ago),
    )
    return job


def test_rows_of_jobs_ended_past_the_audit_retention_are_purged_in_batches(user: User, settings: Any) -> None:
    settings.JOB_AUDIT_RETENTION_DAYS = 90
    old = [_ended(user, status, 91) for status in (Status.FAILED, Status.CANCELLED, Status.EXPIRED)]
    kept = [
        _ended(user, Status.FAILED, 89),  # within the retention
        _ended(user, Status.COMPLETED, 91, expires_at=timezone.now() + timedelta(hours=1)),  # file retained
        _ended(user, Status.QUEUED, 91),  # active: never purged
        _ended(user, Status.PROCESSING, 91),
    ]
    reused = DownloadJob.objects.create(owner=user, file_id=1, status=Status.COMPLETED, reused_from=old[2])

    assert services.download_jobs_purge(batch=2) == 2
    assert services.download_jobs_purge(batch=2) == 1
    assert services.download_jobs_purge(batch=2) == 0

    remaining = set(DownloadJob.objects.values_list("pk", flat=True))
    assert remaining == {job.pk for job in [*kept, reused]}
    reused.refresh_from_db()
    assert reused.reused_from is None


def test_the_audit_retention_outlives_the_analytics_window(clean_env: dict[str, str]) -> None:
    result = manage(["check"], clean_env | {"JOB_AUDIT_RETENTION_DAYS": "3"})
    assert result.returncode != 0
    assert "JOB_AUDIT_RETENTION_DAYS" in result.stderr


def test_beat_sends_the_purge(settings: Any) -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["download-jobs-purge"]
    assert entry["task"] == "jobs.download_jobs_purge"
    assert entry["options"]["queue"] == "downloads.high"
