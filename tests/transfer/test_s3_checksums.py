"""S3 part checksums: a new upload declares CRC32 as boto3's `upload_fileobj` does, sends
and records each part's CRC32 and names them all at the commit; a resumed upload goes on
as it was created (with or without a checksum), and one whose parts' checksums cannot be
named is aborted and staged again. Against the moto endpoint, with the storage's own
client wrapped to see the calls it makes.

moto does not check what the commit names (real S3 refuses a commit of a CRC32 upload
without every part's CRC32, or with a wrong one) and lists neither an upload's algorithm
nor its parts' checksums in ListParts: the tests check what is sent, and give ListParts
what S3 would list where that is what they are about."""

import base64
import zlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from django.core.files.storage import Storage, storages
from storages.backends.s3 import S3Storage

from jobs.parts import StoredPart
from jobs.transfer.origins import synthetic_chunks
from jobs.transfer.origins.local import SyntheticOrigin
from jobs.transfer.part_buffers import PartBody
from jobs.transfer.s3_checksums import PART_CHECKSUM, crc32_base64
from jobs.transfer.s3_clients import s3_client
from jobs.transfer.s3_multipart import S3MultipartWrite
from jobs.transfer.staging import Checkpoint, NoHooks, stage_file
from jobs.transfer.storage import staged_write_open, staged_write_resume
from tests.support.s3 import Bucket, s3_downloads_storage

MiB = 1024 * 1024
PART = 5 * MiB
FILE_ID = 71600


@pytest.fixture(scope="module")
def s3_storage_instance(s3: Any) -> Storage:
    return S3Storage(**s3_downloads_storage(s3)["OPTIONS"])


@pytest.fixture
def s3_storage(settings: Any, s3: Any, s3_storage_instance: Storage) -> S3Storage:
    settings.STORAGES = {**settings.STORAGES, "downloads": s3_downloads_storage(s3)}
    settings.STAGING_CHUNK_BYTES = MiB
    settings.STAGING_PART_BYTES = PART
    settings.STAGING_PARTS_IN_FLIGHT = 2
    # One S3Storage (and boto3 client) for the module, in the handler's cache.
    storages._storages["downloads"] = s3_storage_instance  # type: ignore[attr-defined]
    assert isinstance(s3_storage_instance, S3Storage)
    return s3_storage_instance


class Calls:
    """Records the keyword arguments of the storage client's calls by operation name."""

    def __init__(self, storage: S3Storage, monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
        self.client = s3_client(storage)
        self.made: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for name in names:
            monkeypatch.setattr(self.client, name, self._recording(name, getattr(self.client, name)))

    def _recording(self, name: str, real: Any) -> Any:
        def call(**kwargs: Any) -> Any:
            self.made[name].append(kwargs)
            return real(**kwargs)

        return call

    def completed_parts(self) -> list[dict[str, Any]]:
        [complete] = self.made["complete_multipart_upload"]
        parts: list[dict[str, Any]] = complete["MultipartUpload"]["Parts"]
        return parts


def content_of(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + b"c" * (size % 256)


def written(write: Any, content: bytes) -> None:
    for offset in range(0, len(content), MiB):
        write.write(content[offset : offset + MiB])


def composite_crc32(part_checksums: list[str]) -> str:
    """S3's checksum of a multipart object: the CRC32 of its parts' CRC32s."""
    joined = b"".join(base64.b64decode(value) for value in part_checksums)
    return base64.b64encode(zlib.crc32(joined).to_bytes(4, "big")).decode()


def object_crc32(bucket: Bucket, key: str) -> str | None:
    """The object's CRC32 as S3 tells it, without the `-<parts>` that S3 may add."""
    head = bucket.client.head_object(Bucket=bucket.name, Key=key, ChecksumMode="ENABLED")
    value: str = head.get("ChecksumCRC32", "")
    return value.split("-")[0] or None


def upload_algorithm(bucket: Bucket, key: str) -> str | None:
    """The algorithm the open upload of `key` declared (moto lists it here, not in ListParts)."""
    [upload] = [
        upload
        for upload in bucket.client.list_multipart_uploads(Bucket=bucket.name, Prefix=key).get("Uploads", [])
        if upload["Key"] == key
    ]
    algorithm: str | None = upload.get("ChecksumAlgorithm")
    return algorithm


def old_upload(storage: S3Storage, key: str, content: bytes, parts: int) -> tuple[str, list[StoredPart]]:
    """An upload made as the service made them before it declared a checksum, with
    `parts` parts stored and recorded as it recorded them (n, etag, size)."""
    write = S3MultipartWrite(
        storage, key, content_type="application/pdf", part_bytes=PART, checksum_algorithm=""
    )
    written(write, content[: parts * PART])
    write.settle()
    assert [part.number for part in write.parts] == list(range(1, parts + 1))
    assert all(part.etag and not part.crc32 for part in write.parts)
    return write.upload_id, list(write.parts)


def new_upload(storage: S3Storage, key: str, content: bytes, parts: int) -> tuple[str, list[StoredPart]]:
    """An upload of this version, with `parts` parts stored and recorded (with crc32)."""
    write = staged_write_open(key, content_type="application/pdf", part_bytes=PART)
    written(write, content[: parts * PART])
    write.settle()
    assert [part.number for part in write.parts] == list(range(1, parts + 1))
    return write.upload_id, list(write.parts)


# --- a new upload ---------------------------------------------------------------------------


def test_a_new_upload_declares_crc32_sends_and_records_each_parts_and_names_them_at_the_commit(
    bucket, s3_storage, s3_key, monkeypatch
):
    calls = Calls(
        s3_storage, monkeypatch, "create_multipart_upload", "upload_part", "complete_multipart_upload"
    )
    content = content_of(2 * PART + 4321)
    write = staged_write_open(s3_key, content_type="text/plain", part_bytes=PART)
    written(write, content)
    assert upload_algorithm(bucket, s3_key) == "CRC32"

    write.commit()

    assert calls.made["create_multipart_upload"][0]["ChecksumAlgorithm"] == PART_CHECKSUM
    pieces = [content[:PART], content[PART : 2 * PART], content[2 * PART :]]
    expected = [crc32_base64(piece) for piece in pieces]
    assert [part.crc32 for part in write.parts] == expected
    # botocore computes each part's CRC32 (it is not given: that would make it sign the
    # body over https too); S3 answers with it, and that is what is recorded.
    assert all(call["ChecksumAlgorithm"] == PART_CHECKSUM for call in calls.made["upload_part"])
    assert all("ChecksumCRC32" not in call for call in calls.made["upload_part"])
    assert calls.completed_parts() == [
        {"PartNumber": part.number, "ETag": part.etag, "ChecksumCRC32": part.crc32} for part in write.parts
    ]
    # moto combined the CRC32s of the bytes it received: the same as those recorded.
    assert object_crc32(bucket, s3_key) == composite_crc32(expected)
    assert bucket.read(s3_key)["Body"].read() == content
    assert bucket.open_uploads(s3_key) == []


def test_a_part_whose_answer_has_no_checksum_is_recorded_with_the_one_computed_here(
    bucket, s3_storage, s3_key, monkeypatch
):
    """A store that checks the CRC32 but does not answer with it."""
    client = s3_client(s3_storage)
    real = client.upload_part
    monkeypatch.setattr(
        client,
        "upload_part",
        lambda **kwargs: {k: v for k, v in real(**kwargs).items() if k != "ChecksumCRC32"},
    )
    content = content_of(PART + 3)
    write = staged_write_open(s3_key, content_type="text/plain", part_bytes=PART)
    written(write, content)
    write.commit()

    expected = [crc32_base64(content[:PART]), crc32_base64(content[PART:])]
    assert [part.crc32 for part in write.parts] == expected
    assert object_crc32(bucket, s3_key) == composite_crc32(expected)


@pytest.mark.parametrize("content", [b"", b"small"])
def test_a_small_or_empty_file_commits_with_its_one_parts_checksum(bucket, s3_storage, s3_key, content):
    write = staged_write_open(s3_key, content_type="text/plain", part_bytes=PART)
    write.write(content)

    write.commit()

    assert [part.crc32 for part in write.parts] == [crc32_base64(content)]
    assert object_crc32(bucket, s3_key) == composite_crc32([crc32_base64(content)])
    assert bucket.read(s3_key)["Body"].read() == content


def test_crc32_of_a_part_is_s3s_encoding_of_its_chunks_crc32():
    assert crc32_base64() == crc32_base64(b"") == "AAAAAA=="
    assert crc32_base64(b"1234", b"", b"56789") == base64.b64encode(bytes.fromhex("cbf43926")).decode()


@pytest.mark.parametrize("chunks", [[], [b""], [b"abc"], [b"ab", b"", b"cdef", b"g"]])
def test_a_part_body_reads_its_chunks_as_one_file_as_botocore_reads_it(chunks):
    whole = b"".join(chunks)
    body = PartBody(list(chunks))

    # Its length, as botocore finds it; then read in blocks (to sign it), back to the start.
    assert (body.seek(0, 2), body.tell(), body.seek(0)) == (len(whole), len(whole), 0)
    assert b"".join(iter(lambda: body.read(3), b"")) == whole
    assert body.read(3) == b""
    body.seek(0)
    # Sent in blocks, again after a retry's seek to the start; or read at once.
    assert b"".join(iter(lambda: body.read(2), b"")) == whole
    for offset in range(len(whole) + 1):
        body.seek(offset)
        assert (body.read(), body.tell()) == (whole[offset:], len(whole))
    assert body.size == len(whole)


def test_a_part_body_hands_out_a_whole_chunk_without_copying_it():
    chunk = bytes(range(256)) * 4
    body = PartBody([chunk, chunk])

    assert body.read(len(chunk)) is chunk
    assert body.read(10 * len(chunk)) is chunk


def test_a_client_that_computes_checksums_only_when_required_declares_none(
    bucket, s3_storage, s3_key, monkeypatch
):
    """AWS_REQUEST_CHECKSUM_CALCULATION=when_required, for a store that knows no checksums:
    the upload is made as before, with no algorithm and no part checksum named."""
    client = s3_client(s3_storage)
    monkeypatch.setattr(client.meta.config, "request_checksum_calculation", "when_required")
    calls = Calls(
        s3_storage, monkeypatch, "create_multipart_upload", "upload_part", "complete_multipart_upload"
    )
    content = content_of(PART + 10)
    write = staged_write_open(s3_key, content_type="text/plain", part_bytes=PART)
    written(write, content)
    write.commit()

    assert "ChecksumAlgorithm" not in calls.made["create_multipart_upload"][0]
    assert all("ChecksumCRC32" not in call for call in calls.made["upload_part"])
    assert all(part.etag and not part.crc32 for part in write.parts)
    assert calls.completed_parts() == [{"PartNumber": p.number, "ETag": p.etag} for p in write.parts]
    assert bucket.read(s3_key)["Body"].read() == content


# --- resuming ---------------------------------------------------------------------------------


def test_a_resumed_upload_names_the_recorded_and_the_new_parts_checksums(
    bucket, s3_storage, s3_key, monkeypatch
):
    content = content_of(3 * PART + 99)
    upload_id, parts = new_upload(s3_storage, s3_key, content, 2)
    calls = Calls(s3_storage, monkeypatch, "upload_part", "complete_multipart_upload")

    write = staged_write_resume(s3_key, upload_id=upload_id, parts=parts, part_bytes=PART)
    assert write is not None
    written(write, content[2 * PART :])
    write.commit()

    expected = [crc32_base64(content[offset : offset + PART]) for offset in range(0, len(content), PART)]
    assert sorted(call["PartNumber"] for call in calls.made["upload_part"]) == [3, 4]
    assert [part["ChecksumCRC32"] for part in calls.completed_parts()] == expected
    assert object_crc32(bucket, s3_key) == composite_crc32(expected)
    assert bucket.read(s3_key)["Body"].read() == content
    assert bucket.open_uploads(s3_key) == []


def test_an_upload_recorded_without_checksums_resumes_without_them(bucket, s3_storage, s3_key, monkeypatch):
    """Made by the service before it declared CRC32: the rest is uploaded, and the commit
    named, as that upload was made."""
    content = content_of(2 * PART + 7)
    upload_id, parts = old_upload(s3_storage, s3_key, content, 1)
    assert upload_algorithm(bucket, s3_key) is None
    calls = Calls(s3_storage, monkeypatch, "upload_part", "complete_multipart_upload")

    write = staged_write_resume(s3_key, upload_id=upload_id, parts=parts, part_bytes=PART)
    assert isinstance(write, S3MultipartWrite)
    assert write.checksum_algorithm == ""
    written(write, content[PART:])
    write.commit()

    assert all("ChecksumCRC32" not in call for call in calls.made["upload_part"])
    assert calls.completed_parts() == [{"PartNumber": p.number, "ETag": p.etag} for p in write.parts]
    assert bucket.read(s3_key)["Body"].read() == content
    assert bucket.open_uploads(s3_key) == []


def listed_as_s3_would(
    storage: S3Storage, monkeypatch: pytest.MonkeyPatch, *, algorithm: str, checksums: dict[int, str]
) -> None:
    """ListParts answers as real S3 does: with the upload's algorithm and each part's checksum."""
    client = s3_client(storage)
    real = client.get_paginator

    class Paginator:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def paginate(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
            for page in self.inner.paginate(**kwargs):
                parts = [
                    {**part, "ChecksumCRC32": checksums[part["PartNumber"]]}
                    if part["PartNumber"] in checksums
                    else part
                    for part in page.get("Parts", [])
                ]
                yield {**page, "ChecksumAlgorithm": algorithm, "Parts": parts}

    monkeypatch.setattr(
        client, "get_paginator", lambda name: Paginator(real(name)) if name == "list_parts" else real(name)
    )


def test_a_crc32_upload_recorded_without_checksums_takes_them_from_the_listing(
    bucket, s3_storage, s3_key, monkeypatch
):
    content = content_of(2 * PART + 5)
    upload_id, parts = new_upload(s3_storage, s3_key, content, 1)
    listed_as_s3_would(s3_storage, monkeypatch, algorithm="CRC32", checksums={1: parts[0].crc32})
    stripped = [replace(part, crc32="") for part in parts]
    calls = Calls(s3_storage, monkeypatch, "complete_multipart_upload")

    write = staged_write_resume(s3_key, upload_id=upload_id, parts=stripped, part_bytes=PART)
    assert write is not None
    assert write.parts == parts
    written(write, content[PART:])
    write.commit()

    expected = [
        crc32_base64(content[:PART]),
        crc32_base64(content[PART : 2 * PART]),
        crc32_base64(content[2 * PART :]),
    ]
    assert [part["ChecksumCRC32"] for part in calls.completed_parts()] == expected
    assert bucket.read(s3_key)["Body"].read() == content


@pytest.mark.parametrize(
    ("case", "algorithm", "listed"),
    [
        ("some parts recorded with a checksum, some without", "CRC32", "recorded"),
        ("a recorded checksum that S3 lists otherwise", "CRC32", "other"),
        ("a CRC32 upload recorded without checksums, none listed", "CRC32", "none"),
        ("an upload of another algorithm", "SHA256", "none"),
    ],
)
def test_an_upload_whose_part_checksums_cannot_be_named_is_not_resumed(
    bucket, s3_storage, s3_key, monkeypatch, case, algorithm, listed
):
    upload_id, parts = new_upload(s3_storage, s3_key, content_of(2 * PART), 2)
    recorded = {
        "some parts recorded with a checksum, some without": [parts[0], replace(parts[1], crc32="")],
        "a recorded checksum that S3 lists otherwise": parts,
        "a CRC32 upload recorded without checksums, none listed": [replace(part, crc32="") for part in parts],
        "an upload of another algorithm": [replace(part, crc32="") for part in parts],
    }[case]
    checksums = {
        "recorded": {part.number: part.crc32 for part in parts},
        "other": {1: parts[0].crc32, 2: crc32_base64(b"a late writer's part")},
        "none": {},
    }[listed]
    listed_as_s3_would(s3_storage, monkeypatch, algorithm=algorithm, checksums=checksums)

    assert staged_write_resume(s3_key, upload_id=upload_id, parts=recorded, part_bytes=PART) is None


# --- staging: resume after old records, or start over cleanly --------------------------------


def stage(key: str, size: int, checkpoint: Checkpoint) -> Any:
    origin = SyntheticOrigin(size_bytes=size, rate_bps=0)
    return stage_file(origin=origin, file_id=FILE_ID, key=key, hooks=NoHooks(), checkpoint=checkpoint)


def test_staging_resumes_an_upload_recorded_before_part_checksums(bucket, s3_storage, s3_key):
    size = 3 * PART + 1234
    content = b"".join(synthetic_chunks(FILE_ID, size, MiB))
    upload_id, parts = old_upload(s3_storage, s3_key, content, 2)

    staged = stage(
        s3_key, size, Checkpoint(upload_id=upload_id, parts=tuple(parts), validator=f"synthetic-{size}")
    )

    assert (staged.size, staged.resumed_bytes) == (size, 2 * PART)
    assert bucket.read(s3_key)["Body"].read() == content
    assert bucket.open_uploads(s3_key) == []


def test_staging_aborts_an_upload_it_cannot_resume_and_stages_the_file_again(bucket, s3_storage, s3_key):
    size = 2 * PART + 77
    content = b"".join(synthetic_chunks(FILE_ID, size, MiB))
    upload_id, parts = new_upload(s3_storage, s3_key, content, 2)
    mixed = (parts[0], replace(parts[1], crc32=""))

    staged = stage(s3_key, size, Checkpoint(upload_id=upload_id, parts=mixed, validator=f"synthetic-{size}"))

    assert (staged.size, staged.resumed_bytes) == (size, 0)
    assert bucket.read(s3_key)["Body"].read() == content
    assert bucket.open_uploads(s3_key) == []  # the old upload was aborted too
