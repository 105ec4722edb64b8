"""The OpenAPI schema against the real service: drf-spectacular builds it without a warning,
and schemathesis, loading it from a live uvicorn process, finds every operation's answers
as the schema says (status codes, content types, bodies, headers), never a 5xx, and every
4xx in the error envelope of `api_errors`.

Generation is deterministic and bounded (a few examples per operation and phase), so a
failure reproduces on the next run. Child process logs are in test-artifacts/logs/.
"""

import hashlib
import re
from collections.abc import Iterator
from datetime import timedelta
from io import StringIO
from typing import Any
from uuid import uuid4

import httpx
import pytest
import redis
import schemathesis
from django.conf import settings
from django.core.management import call_command
from django.utils import timezone
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from jobs.api.openapi import JOB_ID_PATTERN
from jobs.models import DownloadJob, Status
from tests.factories import api_key_for
from tests.support.origin_server import OriginServer
from tests.support.stack import Stack, stack_env

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

OPENAPI_BROKER_DB = 12  # 5-11: the other test stacks (see test_alerts)
MiB = 1024 * 1024
ORIGIN_FILE_ID = 72000


def test_the_schema_builds_without_warnings() -> None:
    out = StringIO()
    # --fail-on-warn turns any warning or error of drf-spectacular into SchemaGenerationError.
    call_command("spectacular", "--validate", "--fail-on-warn", "--format", "openapi-json", stdout=out)
    assert '"openapi": "3.0.3"' in out.getvalue()


@pytest.fixture(scope="module")
def openapi_stack(django_db_setup: None, origin_server: OriginServer) -> Iterator[Stack]:
    redis.Redis.from_url(f"{settings.REDIS_URL}/{OPENAPI_BROKER_DB}").flushdb()
    # The rate limits are the stack's own (counted apart from any other stack's), high
    # enough that the fuzzer reaches past them; the active-jobs cap stays at its default.
    # The old endpoint answers its 202 at once rather than wait for each fuzzed job.
    env = stack_env(
        origin_server,
        {
            "JOB_INITIATE_RATE": "10000/minute",
            "JOB_INITIATE_RATE_PER_IP": "10000/minute",
            "LEGACY_ASYNC_PERCENT": "100",
        },
        broker_db=OPENAPI_BROKER_DB,
    )
    stack = Stack("openapi", env).start()
    yield stack
    stack.stop()


def test_the_schema_and_swagger_ui_are_served_without_login(openapi_stack: Stack) -> None:
    with httpx.Client(base_url=openapi_stack.base_url, timeout=10) as client:
        schema = client.get("/api/schema/", headers={"Accept": "application/json"})
        docs = client.get("/api/docs/")
        assert schema.status_code == 200, schema.text
        assert schema.json()["info"]["title"] == "Download service API"
        assert docs.status_code == 200
        # The Swagger UI assets come from this server (drf-spectacular-sidecar), not a CDN.
        assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in docs.text
        assert "cdn" not in docs.text.lower()
        asset = client.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")
        assert asset.status_code == 200


@pytest.fixture
def api_schema(openapi_stack: Stack, request: pytest.FixtureRequest) -> Any:
    # schemathesis 4.32.5 renames the test node per operation through `node._nodeid`, which
    # pytest 9 no longer has (its node ids are `_id`): give it the attribute to read.
    request.node._nodeid = request.node.nodeid
    config = schemathesis.Config.from_dict(
        {
            "seed": 20261128,
            "generation": {"max-examples": 8, "deterministic": True, "database": "none"},
            "phases": {"stateful": {"enabled": False}},
        }
    )
    schema = schemathesis.openapi.from_url(f"{openapi_stack.base_url}/api/schema/?format=json", config=config)
    schema.config.base_url = openapi_stack.base_url
    return schema


@pytest.fixture
def owned(django_user_model: Any) -> tuple[str, list[str]]:
    """A user of its own (committed, so the stack sees it) and its jobs in every state,
    written as the worker would leave them; the fuzzer's job ids are pointed at them."""
    user = django_user_model.objects.create_user(f"openapi-{uuid4().hex[:12]}")
    now = timezone.now()
    hour = timedelta(hours=1)
    failure = {"error_code": "NETWORK_ERROR", "error_message": "Origin unreachable", "error_retryable": True}
    rows: list[dict[str, Any]] = [
        {"status": Status.QUEUED},
        {"status": Status.QUEUED, "attempts": 1, "next_retry_at": now + hour, **failure},
        {"status": Status.PROCESSING, "attempts": 1, "started_at": now, "progress": 25,
         "bytes_done": MiB, "bytes_total": 4 * MiB},
        {"status": Status.PROCESSING, "attempts": 1, "started_at": now},
        {"status": Status.COMPLETED, "attempts": 1, "progress": 100, "bytes_done": MiB, "bytes_total": MiB,
         "completed_at": now, "expires_at": now + hour, "storage_key": "downloads/openapi/file",
         "file_name": 'report "final".pdf', "file_size_bytes": MiB, "content_type": "application/pdf",
         "sha256": "0" * 64, "duration_seconds": 3.0},
        {"status": Status.FAILED, "attempts": 3, "failed_at": now, **failure},
        {"status": Status.CANCELLED, "cancelled_at": now},
        {"status": Status.EXPIRED, "progress": 100, "completed_at": now - 2 * hour, "expires_at": now - hour},
    ]  # fmt: skip
    jobs = [
        DownloadJob.objects.create(owner=user, file_id=ORIGIN_FILE_ID + i, **row)
        for i, row in enumerate(rows)
    ]
    return api_key_for(user), [job.job_id for job in jobs]


def error_envelope(
    ctx: CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """Every 4xx is `{"success": false, "error": {"code": "UPPER_SNAKE", "message": "..."}}`."""
    if not 400 <= response.status_code < 500:
        return None
    body = response.json()
    assert isinstance(body, dict), body
    assert body.get("success") is False, body
    error = body.get("error")
    assert isinstance(error, dict), body
    assert isinstance(error.get("code"), str), body
    assert re.fullmatch(r"[A-Z]+(_[A-Z]+)*", error["code"]), body
    assert isinstance(error.get("message"), str), body
    assert error["message"], body
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    ignored_auth,  # probes each operation without credentials and with wrong ones
    unsupported_method,  # a method the schema does not list answers 405 with Allow
    error_envelope,
]

schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_every_operation_answers_as_the_schema_says(
    case: schemathesis.Case, owned: tuple[str, list[str]]
) -> None:
    token, job_ids = owned
    generated = (case.path_parameters or {}).get("job_id")
    if isinstance(generated, str) and re.fullmatch(JOB_ID_PATTERN, generated):
        # Most well-formed ids become one of the user's jobs (chosen by the generated id, so
        # the run stays deterministic); the rest stay unknown.
        pick = int(hashlib.sha256(generated.encode()).hexdigest(), 16) % (len(job_ids) + 2)
        if pick < len(job_ids):
            case.path_parameters["job_id"] = job_ids[pick]
    case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)
