import hashlib
import time

import httpx
import pytest
from rest_framework.authtoken.models import Token

from jobs.tests.origin_server import FileScript

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize("stack_name", ["local_stack", "s3_stack"])
def test_smoke(request, stack_name, origin_server, django_user_model):
    stack = request.getfixturevalue(stack_name)
    origin_server.reset()
    script = origin_server.add(70000, FileScript(size=6 * 1024 * 1024 + 123, rate_bps=8 * 1024 * 1024))
    user = django_user_model.objects.create_user("carol")
    token = Token.objects.create(user=user).key
    with stack.client(token) as api:
        job_id = api.post("/v1/download/initiate", json={"file_id": 70000}).json()["data"]["job_id"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            data = api.get(f"/v1/download/status/{job_id}").json()["data"]
            if data["status"] in ("completed", "failed"):
                break
            time.sleep(0.2)
        assert data["status"] == "completed", data
        link = api.get(f"/v1/download/{job_id}").json()["data"]
    body = httpx.get(link["download_url"]).content
    assert hashlib.sha256(body).hexdigest() == script.sha256(70000) == link["sha256"]
