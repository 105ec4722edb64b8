"""Reuse: a request for a file that a job staged and that is still retained completes at
once from the stored object, with no task sent and no origin traffic."""

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.utils import timezone

from jobs import services
from jobs.models import DownloadJob, Status
from jobs.transfer.links import SignedFileSystemStorage
from tests.support.files import served_bytes

INITIATE = "/v1/download/initiate"
FILE_ID = 72000


def staged_job(owner: User, storage: SignedFileSystemStorage, **fields: Any) -> DownloadJob:
    """A completed job whose file is in storage, retained for a day."""
    now = timezone.now()
    fields = {
        "file_id": FILE_ID,
        "status": Status.COMPLETED,
        "progress": 100,
        "completed_at": now,
        "expires_at": now + timedelta(hours=24),
        "file_name": "report.pdf",
        "file_size_bytes": 5,
        "content_type": "application/pdf",
        "sha256": "ab" * 32,
        **fields,
    }
    job = DownloadJob.objects.create(owner=owner, **fields)
    job.storage_key = f"downloads/{owner.pk}/{job.job_id}-1"
    job.save(update_fields=["storage_key"])
    storage.save(job.storage_key, ContentFile(b"hello"))
    return job


def initiate(client: Any, file_id: int = FILE_ID) -> dict[str, Any]:
    response = client.post(INITIATE, {"file_id": file_id}, format="json")
    assert response.status_code == 200
    return response.json()["data"]


def test_a_retained_file_of_the_user_completes_the_new_job_at_once(
    api_client, user, local_storage, dispatched
):
    source = staged_job(user, local_storage)

    data = initiate(api_client)

    assert data["status"] == "completed"
    assert dispatched == []  # no task, so no origin traffic
    job = DownloadJob.objects.get(job_id=data["job_id"])
    assert job.reused_from == source
    assert (job.storage_key, job.sha256, job.file_name, job.expires_at) == (
        source.storage_key,
        source.sha256,
        source.file_name,
        source.expires_at,
    )
    assert (job.attempts, job.progress, job.bytes_done) == (0, 100, 5)
    collected = api_client.get(f"/v1/download/{job.job_id}").json()["data"]
    assert collected["file_name"] == "report.pdf"
    downloaded = api_client.get(collected["download_url"])
    assert served_bytes(downloaded) == b"hello"


def test_reuse_does_not_count_as_an_active_job(api_client, user, local_storage, dispatched):
    staged_job(user, local_storage)
    for _ in range(5):
        DownloadJob.objects.create(owner=user, file_id=1)

    assert initiate(api_client)["status"] == "completed"


def test_another_users_file_is_reused_only_when_the_setting_allows(
    api_client, other_user, local_storage, settings, dispatched
):
    staged_job(other_user, local_storage)

    assert initiate(api_client)["status"] == "queued"
    settings.JOB_REUSE = "any"
    assert initiate(api_client)["status"] == "completed"


@pytest.mark.parametrize(
    ("reason", "fields"),
    [
        ("another file", {"file_id": FILE_ID + 1}),
        ("expires too soon", {"expires_at": timezone.now() + timedelta(minutes=30)}),
        ("not completed", {"status": Status.FAILED}),
    ],
)
def test_no_reuse_of_a_file_that_does_not_qualify(
    api_client, user, local_storage, dispatched, reason, fields
):
    staged_job(user, local_storage, **fields)

    assert initiate(api_client)["status"] == "queued"
    assert not DownloadJob.objects.filter(reused_from__isnull=False).exists()


def test_no_reuse_when_the_stored_file_is_gone(api_client, user, local_storage, dispatched):
    source = staged_job(user, local_storage)
    local_storage.delete(source.storage_key)

    assert initiate(api_client)["status"] == "queued"


def test_no_reuse_when_switched_off(api_client, user, local_storage, settings, dispatched):
    staged_job(user, local_storage)
    settings.JOB_REUSE = "off"

    assert initiate(api_client)["status"] == "queued"


def test_the_shared_file_is_deleted_only_when_its_last_job_expires(user, local_storage):
    source = staged_job(user, local_storage)
    reuser = services.download_job_create(owner=user, file_id=FILE_ID)[0]
    DownloadJob.objects.filter(pk=reuser.pk).update(expires_at=source.expires_at + timedelta(hours=1))

    assert services.download_jobs_expire(now=source.expires_at + timedelta(seconds=1)) == 1
    assert local_storage.exists(source.storage_key)  # still the reuser's

    assert services.download_jobs_expire(now=source.expires_at + timedelta(hours=2)) == 1
    assert not local_storage.exists(source.storage_key)
    assert set(DownloadJob.objects.values_list("status", flat=True)) == {Status.EXPIRED}
