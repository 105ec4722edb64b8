"""Findings of the outside security review that live in the API, the probes, the services
and the settings: each test failed before its fix."""

from typing import Any

import pytest
from rest_framework.test import APIClient

from conftest import manage
from jobs.models import DownloadJob

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
