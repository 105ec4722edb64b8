"""The S3 endpoint goes away for 20 s while parts are being uploaded: each call is tried
again with botocore's backoff (AWS_S3_MAX_ATTEMPTS), an attempt that still fails is
retried and resumes from its stored parts, every job completes exactly once, and no
multipart upload is left open at the end.

Real processes (uvicorn, a prefork worker, beat) whose S3 endpoint (the moto server of
the run, or its own) is reached through a TCP proxy the test takes down and brings back.
"""

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit
from uuid import uuid4

import pytest
from django.contrib.auth.models import User

from devtools.servers import S3Endpoint, s3_endpoint
from tests.factories import api_key_for
from tests.support.databases import postgres_only
from tests.support.faults import FAST_REAPER, jobs_through_a_fault, running_stack
from tests.support.origin_server import OriginServer
from tests.support.redis_servers import RedisServer
from tests.support.stack import Stack, stack_env
from tests.support.tcp_proxy import TcpProxy, tcp_proxy

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), postgres_only]

MiB = 1024 * 1024
JOBS = 3
OUTAGE_S = 20


@pytest.fixture(scope="module")
def s3_behind_proxy() -> Iterator[tuple[S3Endpoint, TcpProxy]]:
    with s3_endpoint(bucket_prefix="downloads-faults") as s3:
        endpoint = urlsplit(s3.endpoint_url)
        with tcp_proxy(endpoint.hostname or "127.0.0.1", endpoint.port or 80) as proxy:
            yield s3, proxy


@pytest.fixture(scope="module")
def s3_stack(
    django_db_setup: None,
    origin_server: OriginServer,
    s3_behind_proxy: tuple[S3Endpoint, TcpProxy],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    s3, proxy = s3_behind_proxy
    broker = RedisServer(Path(tmp_path_factory.mktemp("s3-broker"))).start()
    env = stack_env(
        origin_server,
        {
            **FAST_REAPER,
            **s3.env,
            "AWS_S3_ENDPOINT_URL": f"http://{proxy.address}",
            "CELERY_BROKER_URL": f"{broker.url}/0",
            # A worker blocked on its parts in flight sends no heartbeat: the reaper must
            # not take a live attempt for a dead one within the outage.
            "JOB_HEARTBEAT_STALE_S": str(OUTAGE_S * 3),
            "JOB_RETRY_BACKOFF_S": "2",
            "JOB_MAX_ACTIVE_PER_USER": str(JOBS),
        },
        broker_db=0,
    )
    try:
        with running_stack("s3-faults", env, beat_dir=tmp_path_factory.mktemp("s3-beat")) as stack:
            yield stack
    finally:
        broker.stop()


def test_an_s3_outage_mid_upload_is_ridden_out_and_leaves_no_open_upload(
    s3_stack: Stack, s3_behind_proxy: tuple[S3Endpoint, TcpProxy], origin: OriginServer
) -> None:
    _, proxy = s3_behind_proxy
    token = api_key_for(User.objects.create_user(f"s3-{uuid4().hex[:12]}"))

    def s3_down() -> None:
        proxy.down()
        try:
            time.sleep(OUTAGE_S)
        finally:
            proxy.up()

    with s3_stack.client(token) as api:
        outcome = jobs_through_a_fault(
            "s3 endpoint down 20 s mid-upload",
            stack=s3_stack,
            api=api,
            origin=origin,
            file_ids=[83001 + n for n in range(JOBS)],
            inject=s3_down,
            file_bytes=16 * MiB,
            rate_bps=4 * MiB,
            timeout_s=150,
        )
    assert (outcome.started, outcome.completed, outcome.duplicated, outcome.lost) == (JOBS, JOBS, 0, 0)
