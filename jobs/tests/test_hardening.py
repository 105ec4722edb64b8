"""Findings of the outside security review that live in the API, the probes, the services
and the settings: each test failed before its fix."""

from typing import Any

import pytest
from rest_framework.test import APIClient

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
