"""The three origins, opened directly: the HTTP origin against real local servers (the
fault-scripted origin of conftest, and a `ReplyServer` that answers with any headers), the
directory origin on a temporary directory, and the synthetic origin."""

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from devtools.servers import free_port
from jobs.errors import ErrorCode, JobError
from jobs.transfer.origins import (
    DirectoryOrigin,
    HttpOrigin,
    OriginFile,
    SyntheticOrigin,
    get_origin,
    safe_file_name,
    synthetic_chunks,
)
from jobs.transfer.origins.local import SYNTHETIC_SEGMENT_BYTES
from tests.support.origin_server import FileScript, OriginServer, Reply, ReplyServer

FILE_ID = 70000
CHUNK = 16 * 1024


def read_all(origin: Any, *, chunk_bytes: int = CHUNK) -> tuple[OriginFile, list[bytes]]:
    with origin.open(FILE_ID, chunk_bytes=chunk_bytes) as opened:
        return opened, list(opened.chunks)


def read_into(received: list[bytes], origin: Any, *, chunk_bytes: int = CHUNK) -> None:
    """Reads the file chunk by chunk, keeping what arrived before a failure."""
    with origin.open(FILE_ID, chunk_bytes=chunk_bytes) as opened:
        for chunk in opened.chunks:
            received.append(chunk)


def http_origin(url_template: str, *, read_timeout_s: float = 2.0) -> HttpOrigin:
    return HttpOrigin(url_template=url_template, connect_timeout_s=2.0, read_timeout_s=read_timeout_s)


# --- http: the file ------------------------------------------------------------------------


def test_http_streams_the_file_in_chunks(origin: OriginServer):
    script = origin.add(FILE_ID, FileScript(size=100_000, file_name="report.pdf"))

    opened, chunks = read_all(http_origin(origin.url_template), chunk_bytes=10_000)

    assert (opened.name, opened.content_type, opened.size) == ("report.pdf", "application/pdf", 100_000)
    assert b"".join(chunks) == script.content(FILE_ID)
    assert [len(chunk) for chunk in chunks] == [10_000] * 10
    assert origin.requests[FILE_ID] == 1


def test_http_requires_file_id_in_the_url_template():
    with pytest.raises(ValueError, match=r"ORIGIN_URL_TEMPLATE must contain \{file_id\}"):
        HttpOrigin(url_template="http://127.0.0.1/files/", connect_timeout_s=1, read_timeout_s=1)


def test_http_follows_redirects(reply_server: ReplyServer):
    reply_server.replies["/files/70000"] = Reply(status=302, headers={"Location": "/blobs/x"})
    reply_server.replies["/blobs/x"] = Reply(headers={"Content-Type": "text/plain"}, body=b"moved")

    opened, chunks = read_all(http_origin(reply_server.url("/files/{file_id}")))

    assert b"".join(chunks) == b"moved"
    assert opened.content_type == "text/plain"


# --- http: failures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (400, ErrorCode.INVALID_FILE_ID, False),
        (401, ErrorCode.PERMISSION_DENIED, False),
        (403, ErrorCode.PERMISSION_DENIED, False),
        (404, ErrorCode.FILE_NOT_FOUND, False),
        (408, ErrorCode.TIMEOUT, True),
        (410, ErrorCode.FILE_NOT_FOUND, False),
        (413, ErrorCode.FILE_TOO_LARGE, False),
        (418, ErrorCode.PROCESSING_ERROR, True),
        (422, ErrorCode.INVALID_FILE_ID, False),
        (429, ErrorCode.RATE_LIMIT, True),
        (500, ErrorCode.TEMPORARY_UNAVAILABLE, True),
        (502, ErrorCode.TEMPORARY_UNAVAILABLE, True),
        (503, ErrorCode.TEMPORARY_UNAVAILABLE, True),
        (504, ErrorCode.TIMEOUT, True),
    ],
)
def test_http_status_is_mapped_to_an_error_code(origin: OriginServer, status, code, retryable):
    origin.add(FILE_ID, FileScript(size=1000, faults=[str(status)]))

    with pytest.raises(JobError) as caught, http_origin(origin.url_template).open(FILE_ID, chunk_bytes=CHUNK):
        pytest.fail("a failed request must not open")

    assert (caught.value.code, caught.value.message) == (code, f"Origin answered HTTP {status}")
    assert caught.value.retryable is retryable


def test_http_unknown_file_is_file_not_found(origin: OriginServer):
    with pytest.raises(JobError) as caught:
        read_all(http_origin(origin.url_template))

    assert caught.value.code == ErrorCode.FILE_NOT_FOUND


def test_http_connection_dropped_mid_body_is_network_error(origin: OriginServer):
    origin.add(FILE_ID, FileScript(size=512 * 1024, faults=["drop"]))
    received: list[bytes] = []

    with pytest.raises(JobError) as caught:
        read_into(received, http_origin(origin.url_template))

    assert caught.value.code == ErrorCode.NETWORK_ERROR
    assert caught.value.retryable
    assert 0 < len(b"".join(received)) < 512 * 1024


def test_http_short_body_is_network_error(reply_server: ReplyServer):
    reply_server.replies["/files/70000"] = Reply(
        headers={"Content-Length": "1000"}, body=b"x" * 10, content_length=False
    )

    with pytest.raises(JobError) as caught:
        read_all(http_origin(reply_server.url("/files/{file_id}")))

    assert caught.value.code == ErrorCode.NETWORK_ERROR


def test_http_stall_past_the_read_timeout_is_timeout(origin: OriginServer, monkeypatch):
    monkeypatch.setattr(origin, "stall_s", 1.5)
    origin.add(FILE_ID, FileScript(size=256 * 1024, faults=["stall"]))

    with pytest.raises(JobError) as caught:
        read_all(http_origin(origin.url_template, read_timeout_s=0.3))

    assert (caught.value.code, caught.value.message) == (ErrorCode.TIMEOUT, "Origin timed out (ReadTimeout)")
    assert caught.value.retryable


def test_http_connection_refused_is_network_error():
    port = free_port()  # nothing listens on it once the probe is closed

    with pytest.raises(JobError) as caught:
        read_all(http_origin(f"http://127.0.0.1:{port}/files/{{file_id}}"))

    assert (caught.value.code, caught.value.message) == (
        ErrorCode.NETWORK_ERROR,
        "Origin connection failed (ConnectError)",
    )


def test_http_file_over_the_limit_is_refused_from_its_content_length(origin: OriginServer, settings):
    settings.JOB_MAX_FILE_BYTES = 1000
    origin.add(FILE_ID, FileScript(size=1001))

    with pytest.raises(JobError) as caught:
        read_all(http_origin(origin.url_template))

    assert (caught.value.code, caught.value.message) == (
        ErrorCode.FILE_TOO_LARGE,
        "File is 1001 bytes; the limit is 1000 bytes",
    )
    assert not caught.value.retryable


def test_http_file_at_the_limit_is_accepted(origin: OriginServer, settings):
    settings.JOB_MAX_FILE_BYTES = 1000
    origin.add(FILE_ID, FileScript(size=1000))

    _, chunks = read_all(http_origin(origin.url_template))

    assert len(b"".join(chunks)) == 1000


def test_http_file_over_the_limit_without_content_length_is_refused_while_streaming(
    reply_server: ReplyServer, settings
):
    settings.JOB_MAX_FILE_BYTES = 1000
    reply_server.replies["/files/70000"] = Reply(body=b"x" * 5000, content_length=False)
    received: list[bytes] = []

    with pytest.raises(JobError) as caught:
        read_into(received, http_origin(reply_server.url("/files/{file_id}")), chunk_bytes=100)

    assert caught.value.code == ErrorCode.FILE_TOO_LARGE
    assert 0 < len(b"".join(received)) <= 1000


def test_http_file_without_content_length_is_read_to_the_end(reply_server: ReplyServer):
    reply_server.replies["/files/70000"] = Reply(body=b"y" * 5000, content_length=False)

    opened, chunks = read_all(http_origin(reply_server.url("/files/{file_id}")))

    assert (opened.size, b"".join(chunks)) == (None, b"y" * 5000)


# --- http: the file name -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("disposition", "name"),
    [
        ('attachment; filename="report.pdf"', "report.pdf"),
        ("attachment; filename=plain.txt", "plain.txt"),
        ("attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf", "résumé.pdf"),
        ("attachment; filename*=iso-8859-1'en'%E9t%E9.txt", "été.txt"),
        # RFC 6266: a recipient that understands filename* prefers it, wherever it stands.
        ("attachment; filename=\"resume.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf", "résumé.pdf"),
        ("attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf; filename=\"resume.pdf\"", "résumé.pdf"),
        ('attachment; filename="../../etc/passwd"', "passwd"),
        ('attachment; filename="..\\\\..\\\\boot.ini"', "boot.ini"),
        ('attachment; filename=".bashrc"', "bashrc"),
        ('attachment; filename="a<b>c|d?.txt"', "a_b_c_d_.txt"),
        ("attachment; filename*=UTF-8''evil%0D%0Aname.txt", "evil_name.txt"),
        ('inline; filename="shown.pdf"', "shown.pdf"),
        ("attachment", "file_70000.pdf"),
        ('attachment; filename=""', "file_70000.pdf"),
        ('attachment; filename="..."', "file_70000.pdf"),
    ],
)
def test_http_file_name_from_content_disposition(reply_server: ReplyServer, disposition, name):
    reply_server.replies["/files/70000"] = Reply(
        headers={"Content-Type": "application/pdf", "Content-Disposition": disposition}, body=b"%PDF"
    )

    opened, _ = read_all(http_origin(reply_server.url("/files/{file_id}")))

    assert opened.name == name


@pytest.mark.parametrize(
    ("path", "content_type", "name"),
    [
        ("/files/{file_id}", "application/pdf", "file_70000.pdf"),
        ("/files/{file_id}", "text/csv; charset=utf-8", "file_70000.csv"),
        ("/files/{file_id}", "application/x-unknown-kind", "file_70000.bin"),
        ("/files/{file_id}.tar.gz", "application/gzip", "70000.tar.gz"),
        ("/files/{file_id}/data.json", "application/json", "data.json"),
    ],
)
def test_http_file_name_without_content_disposition(reply_server: ReplyServer, path, content_type, name):
    reply_server.replies[path.format(file_id=FILE_ID)] = Reply(
        headers={"Content-Type": content_type}, body=b"1"
    )

    opened, _ = read_all(http_origin(reply_server.url(path)))

    assert opened.name == name


def test_http_content_type_defaults_to_octet_stream(reply_server: ReplyServer):
    reply_server.replies["/files/70000"] = Reply(body=b"1")

    opened, _ = read_all(http_origin(reply_server.url("/files/{file_id}")))

    assert (opened.content_type, opened.name) == ("application/octet-stream", "file_70000.bin")


# --- directory -----------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    directory = tmp_path / "origin"
    directory.mkdir()
    return directory


def test_directory_finds_a_file_named_by_its_id(root: Path):
    (root / "70000").write_bytes(b"a" * 40_000)

    opened, chunks = read_all(DirectoryOrigin(root=str(root)), chunk_bytes=16_384)

    assert (opened.name, opened.content_type, opened.size) == ("70000", "application/octet-stream", 40_000)
    assert [len(chunk) for chunk in chunks] == [16_384, 16_384, 7_232]
    assert b"".join(chunks) == b"a" * 40_000


def test_directory_finds_a_file_named_by_its_id_and_extension(root: Path):
    (root / "70000.csv").write_bytes(b"a,b\n1,2\n")
    (root / "700001.txt").write_bytes(b"another id")
    (root / "1.csv").write_bytes(b"another id")

    opened, chunks = read_all(DirectoryOrigin(root=str(root)))

    assert (opened.name, opened.content_type, opened.size) == ("70000.csv", "text/csv", 8)
    assert b"".join(chunks) == b"a,b\n1,2\n"


def test_directory_missing_file_is_file_not_found(root: Path):
    (root / "700001.txt").write_bytes(b"a longer id, not 70000")
    (root / "70000.d").mkdir()

    with pytest.raises(JobError) as caught:
        read_all(DirectoryOrigin(root=str(root)))

    assert (caught.value.code, caught.value.message) == (
        ErrorCode.FILE_NOT_FOUND,
        "No file 70000 at the origin",
    )


def test_directory_symlink_outside_the_root_is_permission_denied(root: Path, tmp_path: Path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"not for download")
    (root / "70000.txt").symlink_to(secret)

    with pytest.raises(JobError) as caught:
        read_all(DirectoryOrigin(root=str(root)))

    assert (caught.value.code, caught.value.message) == (
        ErrorCode.PERMISSION_DENIED,
        "File is outside the origin directory",
    )
    assert not caught.value.retryable


def test_directory_symlink_inside_the_root_is_followed(root: Path):
    (root / "shared").mkdir()
    (root / "shared" / "data.json").write_bytes(b"{}")
    (root / "70000.json").symlink_to(root / "shared" / "data.json")

    opened, chunks = read_all(DirectoryOrigin(root=str(root)))

    assert (opened.name, opened.content_type, b"".join(chunks)) == ("data.json", "application/json", b"{}")


def test_directory_root_given_through_a_symlink_still_works(root: Path, tmp_path: Path):
    (root / "70000.txt").write_bytes(b"hello")
    link = tmp_path / "link-to-origin"
    link.symlink_to(root)

    _, chunks = read_all(DirectoryOrigin(root=str(link)))

    assert b"".join(chunks) == b"hello"


def test_directory_file_over_the_limit_is_file_too_large(root: Path, settings):
    settings.JOB_MAX_FILE_BYTES = 10
    (root / "70000.bin").write_bytes(b"x" * 11)

    with pytest.raises(JobError) as caught:
        read_all(DirectoryOrigin(root=str(root)))

    assert caught.value.code == ErrorCode.FILE_TOO_LARGE


# --- synthetic -----------------------------------------------------------------------------

SIZE = 2 * SYNTHETIC_SEGMENT_BYTES + 12_345


def synthetic_bytes(file_id: int, size: int, chunk_bytes: int) -> bytes:
    return b"".join(synthetic_chunks(file_id, size, chunk_bytes))


def test_synthetic_bytes_do_not_depend_on_the_chunk_size():
    reference = synthetic_bytes(FILE_ID, SIZE, 1024 * 1024)

    assert len(reference) == SIZE
    for chunk_bytes in (1, 1000, 65_536, 3 * 1024 * 1024):
        if chunk_bytes == 1:
            assert synthetic_bytes(FILE_ID, 5000, 1) == reference[:5000]
        else:
            assert synthetic_bytes(FILE_ID, SIZE, chunk_bytes) == reference


def test_synthetic_chunks_are_at_most_the_chunk_size_and_sum_to_the_size():
    sizes = [len(chunk) for chunk in synthetic_chunks(FILE_ID, SIZE, 300_000)]

    assert sum(sizes) == SIZE
    assert max(sizes) == 300_000


def test_synthetic_bytes_differ_by_id_and_by_segment():
    first = synthetic_bytes(FILE_ID, SIZE, 65_536)
    other = synthetic_bytes(FILE_ID + 1, SIZE, 65_536)
    segments = [first[i : i + SYNTHETIC_SEGMENT_BYTES] for i in range(0, SIZE, SYNTHETIC_SEGMENT_BYTES)]

    assert first != other
    assert first[:1024] != other[:1024]
    assert len({hashlib.sha256(segment).hexdigest() for segment in segments}) == 3


def test_synthetic_prefix_is_the_same_whatever_the_size():
    assert synthetic_bytes(FILE_ID, SIZE, 65_536)[:1000] == synthetic_bytes(FILE_ID, 1000, 65_536)


@pytest.mark.parametrize("size", [0, 1, SYNTHETIC_SEGMENT_BYTES, SYNTHETIC_SEGMENT_BYTES + 1])
def test_synthetic_file_has_its_exact_size(size):
    opened, chunks = read_all(SyntheticOrigin(size_bytes=size, rate_bps=0), chunk_bytes=65_536)

    assert (opened.name, opened.content_type, opened.size) == (
        "synthetic_70000.bin",
        "application/octet-stream",
        size,
    )
    assert len(b"".join(chunks)) == size


def test_synthetic_origin_serves_the_synthetic_bytes():
    _, chunks = read_all(SyntheticOrigin(size_bytes=300_000, rate_bps=0), chunk_bytes=65_536)

    assert b"".join(chunks) == synthetic_bytes(FILE_ID, 300_000, 1024)


def test_synthetic_origin_is_throttled_to_its_rate():
    origin = SyntheticOrigin(size_bytes=256 * 1024, rate_bps=1024 * 1024)
    started = time.monotonic()

    read_all(origin, chunk_bytes=16 * 1024)

    # 256 KiB at 1 MiB/s is a quarter of a second at least; a busy machine may take longer.
    assert time.monotonic() - started >= 0.2


def test_synthetic_file_over_the_limit_is_file_too_large(settings):
    settings.JOB_MAX_FILE_BYTES = 100

    with pytest.raises(JobError) as caught:
        read_all(SyntheticOrigin(size_bytes=101, rate_bps=0))

    assert caught.value.code == ErrorCode.FILE_TOO_LARGE


# --- choosing the origin -------------------------------------------------------------------


def test_get_origin_follows_the_setting(settings, tmp_path):
    settings.ORIGIN_URL_TEMPLATE = "http://files.internal/{file_id}"
    settings.ORIGIN_DIRECTORY = str(tmp_path)
    settings.SYNTHETIC_FILE_BYTES = 123
    kinds = {}
    for kind in ("http", "directory", "synthetic"):
        settings.ORIGIN = kind
        kinds[kind] = get_origin()

    assert isinstance(kinds["http"], HttpOrigin)
    assert kinds["http"].url_template == "http://files.internal/{file_id}"
    assert isinstance(kinds["directory"], DirectoryOrigin)
    assert kinds["directory"].root == tmp_path.resolve()
    assert isinstance(kinds["synthetic"], SyntheticOrigin)
    assert kinds["synthetic"].size_bytes == 123


def test_get_origin_refuses_an_unknown_kind(settings):
    settings.ORIGIN = "ftp"

    with pytest.raises(ValueError, match="Unknown ORIGIN 'ftp'"):
        get_origin()


# --- safe_file_name ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("report.pdf", "report.pdf"),
        ("résumé 2024.pdf", "résumé 2024.pdf"),
        ("../../etc/passwd", "passwd"),
        ("/etc/shadow", "shadow"),
        ("C:\\Users\\x\\evil.exe", "evil.exe"),
        ("dir/", "fallback.bin"),
        ('a"b<c>d|e?f*g:h.txt', "a_b_c_d_e_f_g_h.txt"),
        ("tab\there\r\nnew.txt", "tab_here_new.txt"),
        ("nul\x00byte\x7f.txt", "nul_byte_.txt"),
        ("<<<>>>.txt", "_.txt"),
        ("...hidden", "hidden"),
        (".env", "env"),
        ("  padded.txt  ", "padded.txt"),
        ("", "fallback.bin"),
        ("...", "fallback.bin"),
        ("   ", "fallback.bin"),
    ],
)
def test_safe_file_name(raw, safe):
    assert safe_file_name(raw, fallback="fallback.bin") == safe


def test_safe_file_name_keeps_the_extension_of_a_long_name():
    name = safe_file_name("x" * 300 + ".pdf", fallback="f")

    assert (len(name), name[-5:]) == (200, "x.pdf")


def test_safe_file_name_cuts_a_long_name_with_a_long_extension():
    name = safe_file_name("x" * 150 + "." + "y" * 100, fallback="f")

    assert name == ("x" * 150 + "." + "y" * 100)[:200]
