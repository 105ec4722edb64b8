"""Local storage runs out of space mid-job: the job fails with a clear code
(`STORAGE_FULL`, not retried: another attempt would meet the same full disk), its partial
file is removed, and once there is room again the next job succeeds.

Real processes (uvicorn, a prefork worker) whose local storage (`VAR_DIR/media`) is a
small tmpfs the test mounts (root only; skipped elsewhere).
"""

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from django.contrib.auth.models import User

from jobs.models import DownloadJob
from tests.factories import api_key_for
from tests.support.databases import postgres_only
from tests.support.faults import FAST_REAPER, running_stack
from tests.support.flows import eventually, initiate, job_status
from tests.support.origin_server import FileScript, OriginServer
from tests.support.redis_servers import RedisServer
from tests.support.stack import Stack, stack_env

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), postgres_only]

MiB = 1024 * 1024
DISK_MIB = 4


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    var_dir = Path(tmp_path_factory.mktemp("disk-var"))
    media = var_dir / "media"
    media.mkdir()
    if not shutil.which("mount"):
        pytest.skip("no mount(8) here")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m", "tmpfs", str(media)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield var_dir
    finally:
        subprocess.run(["umount", "-l", str(media)], check=False)


@pytest.fixture(scope="module")
def disk_stack(
    django_db_setup: None,
    origin_server: OriginServer,
    small_disk: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    broker = RedisServer(Path(tmp_path_factory.mktemp("disk-broker"))).start()
    env = stack_env(origin_server, {**FAST_REAPER, "CELERY_BROKER_URL": f"{broker.url}/0"}, broker_db=0)
    env.update({"VAR_DIR": str(small_disk), "STAGING_PART_BYTES": str(MiB)})
    for name in ("AWS_STORAGE_BUCKET_NAME", "AWS_S3_ENDPOINT_URL"):
        env.pop(name, None)  # local storage, whatever the profile
    try:
        with running_stack("disk-full", env, concurrency=1) as stack:
            yield stack
    finally:
        broker.stop()


def test_a_full_disk_fails_storage_full_removes_the_partial_file_and_the_next_job_succeeds(
    disk_stack: Stack, small_disk: Path, origin: OriginServer
) -> None:
    token = api_key_for(User.objects.create_user(f"disk-{uuid4().hex[:12]}"))
    origin.add(82001, FileScript(size=(DISK_MIB + 2) * MiB))  # more than the disk holds
    fits = origin.add(82002, FileScript(size=MiB))
    media = small_disk / "media"

    with disk_stack.client(token) as api:
        too_big = initiate(api, 82001)
        eventually(lambda: job_status(api, too_big)["status"] == "failed", timeout_s=30, what="it fails")
        failed = job_status(api, too_big)
        assert failed["error"]["code"] == "STORAGE_FULL", failed
        assert failed["error"]["retryable"] is False
        # The partial file goes once the failure has committed (just after the status says it).
        eventually(
            lambda: not [path for path in media.rglob("*") if path.is_file()],
            timeout_s=5,
            what="no partial file",
        )

        next_job = initiate(api, 82002)
        eventually(
            lambda: job_status(api, next_job)["status"] == "completed", timeout_s=30, what="the next job"
        )
        link = api.get(f"/v1/download/{next_job}").json()["data"]
        assert link["sha256"] == fits.sha256(82002)

    assert DownloadJob.objects.get(job_id=too_big).attempts == 1  # not retried
