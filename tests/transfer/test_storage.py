"""The downloads storage: signed local URLs served by `file_download`, the two staged
writes (local rename, S3 multipart through the moto endpoint), presigned S3 URLs, and the
media types that either way of serving sends."""

import hashlib
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from django.core import signing
from django.core.files.base import ContentFile
from django.core.files.storage import Storage, storages
from django.test import Client
from django.utils import timezone
from storages.backends.s3 import S3Storage

from jobs.errors import ErrorCode, JobError
from jobs.models import DownloadJob, Status
from jobs.parts import StoredPart
from jobs.selectors import download_job_link
from jobs.transfer.content_headers import safe_content_type
from jobs.transfer.s3_clients import s3_client
from jobs.transfer.s3_multipart import S3MultipartWrite
from jobs.transfer.storage import (
    staged_write_open,
    staged_write_resume,
    stored_file_delete,
    stored_file_sha256,
)
from tests.support.files import served_bytes
from tests.support.s3 import s3_downloads_storage

MiB = 1024 * 1024
KEY = "downloads/1/job_0123456789abcdef0123456789abcdef-1"
PDF = {
    "ResponseContentDisposition": 'attachment; filename="report.pdf"',
    "ResponseContentType": "application/pdf",
}
RESUME_DISPOSITION = "attachment; filename=\"resume.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"


@pytest.fixture(scope="module")
def s3_storage_instance(s3: Any) -> Storage:
    return S3Storage(**s3_downloads_storage(s3)["OPTIONS"])


@pytest.fixture
def s3_storage(settings: Any, s3: Any, s3_storage_instance: Storage) -> Storage:
    settings.STORAGES = {**settings.STORAGES, "downloads": s3_downloads_storage(s3)}
    # One S3Storage for the module (building its boto3 resource takes ~0.4 s), put in the
    # handler's cache, which the settings change has just emptied.
    storages._storages["downloads"] = s3_storage_instance  # type: ignore[attr-defined]
    assert storages["downloads"] is s3_storage_instance
    return s3_storage_instance


def files_under(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


# --- signed local URLs ---------------------------------------------------------------------


def get(url: str) -> Any:
    """The link works for anyone who holds it: no credentials."""
    return Client().get(url)


def test_signed_url_serves_the_file_with_its_name_and_type(local_storage):
    local_storage.save(KEY, ContentFile(b"%PDF-1.7 content"))

    url = local_storage.url(KEY, parameters=PDF, expire=60)
    response = get(url)

    assert url.startswith("/files/")
    assert response.status_code == 200
    assert served_bytes(response) == b"%PDF-1.7 content"
    assert response["Content-Type"] == "application/pdf"
    assert response["Content-Disposition"] == 'attachment; filename="report.pdf"'
    assert response["Cache-Control"] == "private, no-store"
    assert response["X-Content-Type-Options"] == "nosniff"


def test_signed_url_without_parameters_serves_octet_stream(local_storage):
    local_storage.save(KEY, ContentFile(b"bytes"))

    response = get(local_storage.url(KEY))

    assert response.status_code == 200
    assert response["Content-Type"] == "application/octet-stream"


@pytest.mark.parametrize(
    ("stored", "served"),
    [
        ("application/pdf", "application/pdf"),
        ("image/png", "image/png"),
        ("video/mp4", "video/mp4"),
        ("text/csv; charset=utf-8", "text/csv; charset=utf-8"),
        ("text/html", "application/octet-stream"),
        ("image/svg+xml", "application/octet-stream"),
        ("application/xhtml+xml", "application/octet-stream"),
        ("text/javascript", "application/octet-stream"),
    ],
)
def test_signed_url_serves_only_a_type_that_a_browser_would_not_render_as_a_page(
    local_storage, stored, served
):
    """The signed link serves the origin's bytes from the site's own origin: a type that a
    browser runs or renders as a page is served as application/octet-stream."""
    local_storage.save(KEY, ContentFile(b"<script>alert(document.cookie)</script>"))

    response = get(local_storage.url(KEY, parameters={"ResponseContentType": stored}))

    assert response["Content-Type"] == served


@pytest.mark.parametrize(
    ("stored", "served"),
    [
        ("application/octet-stream", "application/octet-stream"),
        ("application/pdf", "application/pdf"),
        ("application/zip", "application/zip"),
        ("application/gzip", "application/gzip"),
        ("application/x-tar", "application/x-tar"),
        ("application/x-7z-compressed", "application/x-7z-compressed"),
        ("image/jpeg", "image/jpeg"),
        ("IMAGE/PNG", "image/png"),
        ("audio/mpeg", "audio/mpeg"),
        ("video/webm", "video/webm"),
        ("text/plain", "text/plain"),
        ('text/plain; charset="UTF-8"', "text/plain; charset=utf-8"),
        ("text/csv; charset=utf-8; header=present", "text/csv; charset=utf-8"),
        ("application/pdf; charset=utf-8", "application/pdf"),
        ('text/plain; charset="x<y"', "text/plain"),
        ("text/plain; charset=x<y", "application/octet-stream"),
        ("text/html; charset=utf-8", "application/octet-stream"),
        ("TEXT/HTML", "application/octet-stream"),
        ("application/xhtml+xml", "application/octet-stream"),
        ("text/xml", "application/octet-stream"),
        ("application/xml", "application/octet-stream"),
        ("image/svg+xml", "application/octet-stream"),
        ("image/foo+xml", "application/octet-stream"),
        ("application/javascript", "application/octet-stream"),
        ("application/json", "application/octet-stream"),
        ("application/x-shockwave-flash", "application/octet-stream"),
        ("multipart/x-mixed-replace; boundary=x", "application/octet-stream"),
        ("text/vtt", "application/octet-stream"),
        ("not a type", "application/octet-stream"),
        ("", "application/octet-stream"),
    ],
)
def test_safe_content_type_keeps_only_types_a_browser_neither_runs_nor_renders(stored, served):
    assert safe_content_type(stored) == served


def test_signed_url_needs_a_name(local_storage):
    with pytest.raises(ValueError, match="name is required"):
        local_storage.url(None)


def tamper(url: str) -> str:
    token = url.rsplit("/", 1)[1]
    last = "A" if token[-1] != "A" else "B"
    return url[:-1] + last


@pytest.mark.parametrize(
    "make_url",
    [
        pytest.param(lambda storage: tamper(storage.url(KEY)), id="signature-changed"),
        pytest.param(
            lambda storage: "/files/" + signing.dumps({"key": KEY, "exp": 2**40, "cd": "", "ct": ""}),
            id="signed-with-another-salt",
        ),
        pytest.param(
            lambda storage: (
                "/files/"
                + signing.dumps(
                    {"key": KEY, "exp": 2**40, "cd": "", "ct": ""},
                    key="not-the-secret-key",
                    salt="jobs.storage.download-url",
                )
            ),
            id="signed-with-another-key",
        ),
        pytest.param(lambda storage: "/files/not-a-token", id="garbage"),
    ],
)
def test_bad_token_is_404(local_storage, make_url):
    local_storage.save(KEY, ContentFile(b"secret"))

    response = get(make_url(local_storage))

    assert response.status_code == 404
    assert b"secret" not in response.content


def test_expired_url_is_404(local_storage):
    local_storage.save(KEY, ContentFile(b"bytes"))

    assert get(local_storage.url(KEY, expire=-1)).status_code == 404


def test_url_is_valid_until_its_expiry(local_storage, monkeypatch):
    local_storage.save(KEY, ContentFile(b"bytes"))
    url = local_storage.url(KEY, expire=900)
    minted_at = time.time()

    monkeypatch.setattr(time, "time", lambda: minted_at + 898)
    just_before = get(url)
    monkeypatch.setattr(time, "time", lambda: minted_at + 902)
    just_after = get(url)

    assert (just_before.status_code, just_after.status_code) == (200, 404)


def test_url_of_a_deleted_file_is_404(local_storage):
    local_storage.save(KEY, ContentFile(b"bytes"))
    url = local_storage.url(KEY)
    local_storage.delete(KEY)

    assert get(url).status_code == 404


# --- local staged writes -------------------------------------------------------------------


def test_local_write_is_visible_only_after_commit(local_storage):
    root = Path(local_storage.location)
    write = staged_write_open(KEY, content_type="application/pdf", part_bytes=5 * MiB)
    write.write(b"part one, ")
    write.write(b"part two")

    assert files_under(root) == [f"{KEY}.{write.upload_id}.part"]
    write.commit()

    assert files_under(root) == [KEY]
    assert (root / KEY).read_bytes() == b"part one, part two"


def test_local_write_abort_leaves_nothing(local_storage):
    root = Path(local_storage.location)
    write = staged_write_open(KEY, content_type="application/pdf", part_bytes=5 * MiB)
    write.write(b"half")

    write.abort()

    assert files_under(root) == []


def test_stored_file_delete_removes_the_file_and_its_unfinished_upload(local_storage):
    root = Path(local_storage.location)
    local_storage.save(KEY, ContentFile(b"done"))
    unfinished = staged_write_open(KEY, content_type="text/plain", part_bytes=5 * MiB)
    unfinished.write(b"half")

    stored_file_delete(KEY, upload_id=unfinished.upload_id)
    stored_file_delete(KEY, upload_id=unfinished.upload_id)  # idempotent

    assert files_under(root) == []


# --- S3 multipart writes -------------------------------------------------------------------


def test_s3_write_uploads_parts_and_commits_the_object(bucket, s3_storage, s3_key):
    content = bytes(range(256)) * (5 * MiB // 256) + b"tail"
    write = staged_write_open(s3_key, content_type="application/pdf", part_bytes=5 * MiB)
    assert isinstance(write, S3MultipartWrite)
    for offset in range(0, len(content), MiB):
        write.write(content[offset : offset + MiB])

    assert not bucket.has(s3_key)
    assert bucket.open_uploads(s3_key) == [write.upload_id]
    write.commit()

    assert [(part.number, part.size) for part in write.parts] == [(1, 5 * MiB), (2, 4)]
    stored = bucket.read(s3_key)
    assert stored["Body"].read() == content
    assert stored["ContentType"] == "application/pdf"
    assert bucket.open_uploads(s3_key) == []


def test_s3_write_stores_a_type_a_browser_could_render_as_octet_stream(bucket, s3_storage, s3_key):
    """The object's own type is what any plain link to it (a public bucket, a CDN) serves."""
    write = staged_write_open(s3_key, content_type="text/html; charset=utf-8", part_bytes=5 * MiB)
    write.write(b"<script>alert(document.cookie)</script>")
    write.commit()

    assert bucket.read(s3_key)["ContentType"] == "application/octet-stream"


def test_s3_write_part_size_is_at_least_the_s3_minimum(bucket, s3_storage, s3_key):
    write = staged_write_open(s3_key, content_type="text/plain", part_bytes=1024)
    write.write(b"x" * (5 * MiB - 1))

    assert write.parts == []  # a part below 5 MiB would be refused by S3
    write.abort()


@pytest.mark.parametrize("content", [b"", b"small file"])
def test_s3_write_commits_a_small_or_empty_file(bucket, s3_storage, s3_key, content):
    write = staged_write_open(s3_key, content_type="text/plain", part_bytes=5 * MiB)
    write.write(content)

    write.commit()

    assert bucket.read(s3_key)["Body"].read() == content
    assert bucket.open_uploads(s3_key) == []


def test_s3_write_abort_leaves_no_object_and_no_open_upload(bucket, s3_storage, s3_key):
    write = staged_write_open(s3_key, content_type="text/plain", part_bytes=5 * MiB)
    write.write(b"x" * (5 * MiB))
    assert write.settle()
    assert len(write.parts) == 1

    write.abort()
    write.abort()  # idempotent: the upload is already gone

    assert not bucket.has(s3_key)
    assert bucket.open_uploads(s3_key) == []


def test_stored_file_delete_aborts_an_unfinished_s3_upload(bucket, s3_storage, s3_key):
    write = staged_write_open(s3_key, content_type="text/plain", part_bytes=5 * MiB)
    write.write(b"x" * (6 * MiB))

    stored_file_delete(s3_key, upload_id=write.upload_id)

    assert bucket.open_uploads(s3_key) == []
    assert not bucket.has(s3_key)


def test_stored_file_delete_removes_a_committed_s3_object(bucket, s3_storage, s3_key):
    s3_storage.save(s3_key, ContentFile(b"done"))
    assert bucket.has(s3_key)

    stored_file_delete(s3_key)
    stored_file_delete(s3_key)  # idempotent

    assert not bucket.has(s3_key)


def test_s3_refusal_is_a_storage_error_without_details(s3, settings, s3_key):
    settings.STORAGES = {**settings.STORAGES, "downloads": s3_downloads_storage(s3, bucket="no-such-bucket")}

    with pytest.raises(JobError) as caught:
        staged_write_open(s3_key, content_type="text/plain", part_bytes=5 * MiB)

    assert (caught.value.code, caught.value.message) == (
        ErrorCode.STORAGE_ERROR,
        "Storage refused the upload",
    )
    assert caught.value.retryable


# --- presigned S3 URLs ---------------------------------------------------------------------


@pytest.mark.django_db
def test_s3_download_link_is_presigned_for_15_minutes_with_the_file_name(s3, s3_storage, s3_key, user):
    s3_storage.save(s3_key, ContentFile(b"%PDF-1.7"))
    job = DownloadJob.objects.create(
        owner=user,
        file_id=1,
        status=Status.COMPLETED,
        storage_key=s3_key,
        file_name="résumé.pdf",
        file_size_bytes=8,
        content_type="application/pdf",
        expires_at=timezone.now() + timedelta(hours=24),
    )

    link = download_job_link(job=job)

    url = urlsplit(link["download_url"])
    query = {name: values[0] for name, values in parse_qs(url.query).items()}
    assert f"{url.scheme}://{url.netloc}" == s3.endpoint_url
    assert url.path.endswith(f"/{s3_key}")
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert query["X-Amz-Expires"] == "900"
    assert query["response-content-disposition"] == RESUME_DISPOSITION
    assert query["response-content-type"] == "application/pdf"
    assert "X-Amz-Signature" in query
    # moto checks neither signatures nor expiry, but it does serve the file as asked.
    response = httpx.get(link["download_url"])
    assert response.status_code == 200
    assert response.content == b"%PDF-1.7"
    assert response.headers["content-disposition"] == RESUME_DISPOSITION
    assert response.headers["content-type"] == "application/pdf"


@pytest.mark.django_db
def test_s3_download_link_of_an_html_file_serves_octet_stream(s3, s3_storage, s3_key, user):
    # Stored as an older version of the service stored it: with the origin's own type.
    s3_client(s3_storage).put_object(
        Bucket=s3.bucket, Key=s3_key, Body=b"<script>alert(document.cookie)</script>", ContentType="text/html"
    )
    job = DownloadJob.objects.create(
        owner=user,
        file_id=1,
        status=Status.COMPLETED,
        storage_key=s3_key,
        file_name="page.html",
        content_type="text/html",
        expires_at=timezone.now() + timedelta(hours=24),
    )

    link = download_job_link(job=job)

    query = parse_qs(urlsplit(link["download_url"]).query)
    assert query["response-content-type"] == ["application/octet-stream"]
    response = httpx.get(link["download_url"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == 'attachment; filename="page.html"'


@pytest.mark.django_db
def test_local_download_link_of_an_html_file_serves_octet_stream(local_storage, user):
    local_storage.save(KEY, ContentFile(b"<script>alert(document.cookie)</script>"))
    job = DownloadJob.objects.create(
        owner=user,
        file_id=1,
        status=Status.COMPLETED,
        storage_key=KEY,
        file_name="page.html",
        content_type="text/html",
        expires_at=timezone.now() + timedelta(hours=24),
    )

    response = get(download_job_link(job=job)["download_url"])

    assert response.status_code == 200
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Disposition"] == 'attachment; filename="page.html"'


@pytest.mark.django_db
def test_s3_download_link_lifetime_is_a_setting(s3, s3_storage, s3_key, user, settings):
    settings.PRESIGNED_URL_TTL_S = 60
    job = DownloadJob.objects.create(owner=user, file_id=1, status=Status.COMPLETED, storage_key=s3_key)

    before = timezone.now()
    link = download_job_link(job=job)

    assert parse_qs(urlsplit(link["download_url"]).query)["X-Amz-Expires"] == ["60"]
    expires_at = timezone.datetime.fromisoformat(link["expires_at"])
    assert before + timedelta(seconds=59) <= expires_at <= timezone.now() + timedelta(seconds=61)


# --- resuming an upload ---------------------------------------------------------------------


def _first_part(key: str, content: bytes, part_bytes: int) -> tuple[str, list[StoredPart]]:
    """An attempt that stored one part of `content` and died: its upload and its parts."""
    write = staged_write_open(key, content_type="application/pdf", part_bytes=part_bytes)
    for offset in range(0, part_bytes, MiB):
        write.write(content[offset : offset + MiB])
    write.settle()  # an S3 part is uploaded on a thread of the write's
    assert len(write.parts) == 1, "no part was stored"
    return write.upload_id, list(write.parts)


def test_s3_resume_goes_on_after_the_recorded_parts(bucket, s3_storage, s3_key):
    content = bytes(range(256)) * (12 * MiB // 256)
    upload_id, parts = _first_part(s3_key, content, 5 * MiB)

    write = staged_write_resume(s3_key, upload_id=upload_id, parts=parts, part_bytes=5 * MiB)
    assert write is not None
    for offset in range(5 * MiB, len(content), MiB):
        write.write(content[offset : offset + MiB])
    write.commit()

    assert bucket.read(s3_key)["Body"].read() == content
    assert stored_file_sha256(s3_key) == hashlib.sha256(content).hexdigest()
    assert bucket.open_uploads(s3_key) == []


def test_s3_resume_is_refused_when_a_part_is_not_as_recorded(bucket, s3_storage, s3_key):
    """A late writer of a fenced attempt replaced part 1: resuming would splice its bytes."""
    content = bytes(range(256)) * (6 * MiB // 256)
    upload_id, parts = _first_part(s3_key, content, 5 * MiB)
    bucket.client.upload_part(
        Bucket=bucket.name, Key=s3_key, UploadId=upload_id, PartNumber=1, Body=b"x" * 5 * MiB
    )

    assert staged_write_resume(s3_key, upload_id=upload_id, parts=parts, part_bytes=5 * MiB) is None


def test_s3_resume_of_an_aborted_upload_is_refused(bucket, s3_storage, s3_key):
    upload_id, parts = _first_part(s3_key, bytes(6 * MiB), 5 * MiB)
    stored_file_delete(s3_key, upload_id=upload_id)

    assert staged_write_resume(s3_key, upload_id=upload_id, parts=parts, part_bytes=5 * MiB) is None


def test_local_resume_cuts_the_file_back_to_the_recorded_parts(settings, local_storage):
    key = "downloads/1/resume-1"
    content = bytes(range(256)) * (3 * MiB // 256)
    upload_id, parts = _first_part(key, content, MiB)
    part_file = Path(local_storage.path(key)).with_name(f"resume-1.{upload_id}.part")
    with part_file.open("ab") as handle:
        handle.write(b"bytes written after the last recorded part")

    write = staged_write_resume(key, upload_id=upload_id, parts=parts, part_bytes=MiB)
    assert write is not None
    for offset in range(MiB, len(content), MiB):
        write.write(content[offset : offset + MiB])
    write.commit()

    assert Path(local_storage.path(key)).read_bytes() == content
    assert stored_file_sha256(key) == hashlib.sha256(content).hexdigest()
    assert staged_write_resume(key, upload_id=upload_id, parts=parts, part_bytes=MiB) is None


@pytest.mark.parametrize(
    "url",
    [
        "/internal/files/../../etc/passwd",
        "/internal/files/%2e%2e/%2e%2e/etc/passwd",
        "/internal/files/downloads/../../../etc/passwd",
        "/internal/files/",
        "/internal/files//etc/passwd",
        "/files/downloads/1/x",
    ],
)
def test_an_internal_url_outside_the_storage_names_no_file(local_storage, url):
    """The file sender acts only on the app's answers, whose names come from signed links;
    a name that leaves the storage's directory is refused all the same."""
    assert local_storage.internal_path(url) is None


def test_an_internal_url_names_its_file(local_storage):
    local_storage.save(KEY, ContentFile(b"x"))

    url = local_storage.internal_url(KEY)

    assert url == f"/internal/files/{KEY}"
    assert local_storage.internal_path(url) == Path(local_storage.path(KEY)).resolve()
