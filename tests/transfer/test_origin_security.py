"""What the http origin may reach and what it lets through, against origins that misbehave
on purpose: one that redirects the worker to another service (a second local server
stands for it: an instance's metadata service, an admin port), one that sends more bytes
than it announced, one whose headers do not fit the job's columns. The origin is built
from the settings, as the worker builds it."""

import ipaddress
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra import addresses
from jobs import services
from jobs.errors import JobError
from jobs.models import DownloadJob, Status
from jobs.transfer import origins
from jobs.transfer.origins import OriginFile, get_origin
from jobs.transfer.staging import StoredFileFacts, stage_file
from tests.support.origin_server import Reply, ReplyServer

FILE_ID = 70000
CHUNK = 16 * 1024
REFUSED = "ORIGIN_REDIRECT_REFUSED"
METADATA_PATH = "/latest/meta-data/iam/security-credentials/worker"


@pytest.fixture(scope="module")
def origin_running() -> Iterator[ReplyServer]:
    server = ReplyServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def internal_running() -> Iterator[ReplyServer]:
    server = ReplyServer().start()
    yield server
    server.stop()


@pytest.fixture
def internal(internal_running: ReplyServer) -> ReplyServer:
    """A service beside the worker that only it can reach, with a secret to give away."""
    internal_running.reset()
    internal_running.replies[METADATA_PATH] = Reply(body=b'{"SecretAccessKey": "internal"}')
    internal_running.replies["/blob"] = Reply(headers={"Content-Type": "text/plain"}, body=b"the file")
    return internal_running


@pytest.fixture
def origin(origin_running: ReplyServer, settings: Any) -> ReplyServer:
    """The configured origin (on loopback, as an internal file server would be)."""
    origin_running.reset()
    settings.ORIGIN = "http"
    settings.ORIGIN_URL_TEMPLATE = origin_running.url("/files/{file_id}")
    settings.ORIGIN_ALLOWED_HOSTS = []
    settings.ORIGIN_CONNECT_TIMEOUT_S = 2.0
    settings.ORIGIN_READ_TIMEOUT_S = 2.0
    return origin_running


def redirect(origin: ReplyServer, path: str, location: str, *, status: int = 302) -> None:
    origin.replies[path] = Reply(status=status, headers={"Location": location})


def read_all(*, offset: int = 0, validator: str = "", chunk_bytes: int = CHUNK) -> tuple[OriginFile, bytes]:
    with get_origin().open(FILE_ID, chunk_bytes=chunk_bytes, offset=offset, validator=validator) as opened:
        return opened, b"".join(opened.chunks)


def read_into(
    received: list[bytes], *, offset: int = 0, validator: str = "", chunk_bytes: int = CHUNK
) -> None:
    """Reads the file chunk by chunk, keeping what arrived before a failure."""
    with get_origin().open(FILE_ID, chunk_bytes=chunk_bytes, offset=offset, validator=validator) as opened:
        for chunk in opened.chunks:
            received.append(chunk)


def refusal(**kwargs: Any) -> tuple[str, str, bool]:
    with pytest.raises(JobError) as caught:
        read_all(**kwargs)
    return caught.value.code, caught.value.message, caught.value.retryable


@pytest.fixture
def loopback_counts_as_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """Named fake: this machine has no public address to serve a test file from, so its
    loopback addresses stand for public ones (every other address is classified as usual)."""
    is_public = origins.address_is_public
    monkeypatch.setattr(
        addresses,  # where the origin's redirects and the webhook sender look it up
        "address_is_public",
        lambda address: ipaddress.ip_address(address).is_loopback or is_public(address),
    )


# --- redirects: where the worker may be sent -----------------------------------------------


@pytest.mark.django_db
def test_job_redirected_to_an_internal_service_fails_and_the_service_gets_no_request(
    user, origin, internal, local_storage
):
    redirect(origin, "/files/70000", internal.url(METADATA_PATH))
    job = DownloadJob.objects.create(owner=user, file_id=FILE_ID, max_attempts=3)

    services.download_job_run(job_pk=job.pk)

    job.refresh_from_db()
    assert (job.status, job.error_code, job.error_message, job.error_retryable) == (
        Status.FAILED,
        REFUSED,
        "Origin redirected to 127.0.0.1, which is not an allowed host",
        False,
    )
    assert job.attempts == 1
    assert internal.received == []
    assert [path for path, _ in origin.received] == ["/files/70000"]
    assert [path for path in Path(local_storage.location).rglob("*") if path.is_file()] == []


def test_redirect_within_the_origin_is_followed(origin):
    redirect(origin, "/files/70000", "/blobs/70000")
    origin.replies["/blobs/70000"] = Reply(headers={"Content-Type": "application/pdf"}, body=b"%PDF")

    opened, content = read_all()

    assert (content, opened.content_type) == (b"%PDF", "application/pdf")


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_to_another_host_is_refused_whatever_its_status(origin, internal, status):
    redirect(origin, "/files/70000", internal.url(METADATA_PATH), status=status)

    assert refusal() == (REFUSED, "Origin redirected to 127.0.0.1, which is not an allowed host", False)
    assert internal.received == []


def test_redirect_to_the_origin_host_by_another_name_is_refused(origin, internal):
    """`localhost` resolves to the origin's own address, but it is not the configured
    origin (nor is another port of it): only what the operator configured is trusted."""
    redirect(origin, "/files/70000", f"http://localhost:{origin.port}/files/70000")

    assert refusal() == (REFUSED, "Origin redirected to localhost, which is not an allowed host", False)
    assert [path for path, _ in origin.received] == ["/files/70000"]


def test_redirect_to_an_allowed_name_of_a_loopback_address_is_refused(origin, internal, settings):
    """Listed or not, a host that resolves to a loopback, private or link-local address
    is refused once resolved, before any connection: only the configured origin may be
    internal."""
    settings.ORIGIN_ALLOWED_HOSTS = [f"localhost:{internal.port}"]
    redirect(origin, "/files/70000", f"http://localhost:{internal.port}{METADATA_PATH}")

    assert refusal() == (
        REFUSED,
        "Origin redirected to localhost, which resolves to an address that is not public",
        False,
    )
    assert internal.received == []


@pytest.mark.parametrize(
    "host",
    [
        "169.254.169.254",  # the instance metadata service (AWS, GCP, Azure, ...)
        "[fd00:ec2::254]",  # AWS's IPv6 metadata service
        "127.0.0.2",
        "[::1]",
        "[::ffff:127.0.0.1]",  # loopback written as an IPv4-mapped IPv6 address
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",  # shared address space (carrier-grade NAT)
        "0.0.0.0",  # reaches this machine
        "224.0.0.1",
        "[fe80::1]",
        "[2002:7f00:1::]",  # 6to4 of 127.0.0.1
    ],
)
def test_redirect_to_a_listed_internal_address_is_refused_without_connecting(origin, settings, host):
    settings.ORIGIN_ALLOWED_HOSTS = [host]
    redirect(origin, "/files/70000", f"http://{host}{METADATA_PATH}")

    code, message, retryable = refusal()

    assert (code, retryable) == (REFUSED, False)
    assert (
        message == f"Origin redirected to {host.strip('[]')}, which resolves to an address that is not public"
    )


def test_redirect_to_an_allowed_host_is_followed(origin, internal, settings, loopback_counts_as_public):
    settings.ORIGIN_ALLOWED_HOSTS = ["files.example.com", f"LocalHost:{internal.port}"]
    redirect(origin, "/files/70000", f"http://localhost:{internal.port}/blob")

    opened, content = read_all()

    assert (content, opened.content_type) == (b"the file", "text/plain")
    # The name was resolved once and the checked address connected to: the request still
    # names the host it was sent to.
    assert [(path, headers["Host"]) for path, headers in internal.received] == [
        ("/blob", f"localhost:{internal.port}")
    ]


def test_an_allowed_name_is_resolved_once_and_the_checked_address_connected_to(
    origin, internal, settings, monkeypatch, loopback_counts_as_public
):
    """Named fake: a DNS server that rebinds, answering a loopback address (standing for a
    public one, as above) to the first lookup and the metadata service's to any later one.
    The worker looks the name up once and connects to the address it checked."""
    lookups: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def rebinding_getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "files.example.test":
            return real_getaddrinfo(host, port, *args, **kwargs)
        lookups.append(host)
        address = "127.0.0.1" if len(lookups) == 1 else "169.254.169.254"
        return real_getaddrinfo(address, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_getaddrinfo)
    settings.ORIGIN_ALLOWED_HOSTS = [f"files.example.test:{internal.port}"]
    redirect(origin, "/files/70000", f"http://files.example.test:{internal.port}/blob")

    _, content = read_all()

    assert content == b"the file"
    assert lookups == ["files.example.test"]
    assert [headers["Host"] for _, headers in internal.received] == [f"files.example.test:{internal.port}"]


def test_an_allowed_host_without_a_port_is_allowed_on_its_scheme_s_port_only(
    origin, internal, settings, loopback_counts_as_public
):
    settings.ORIGIN_ALLOWED_HOSTS = ["localhost"]
    redirect(origin, "/files/70000", f"http://localhost:{internal.port}/blob")

    assert refusal() == (REFUSED, "Origin redirected to localhost, which is not an allowed host", False)
    assert internal.received == []


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        (
            "ORIGIN_ALLOWED_HOSTS",
            ["https://cdn.example.com/"],
            "ORIGIN_ALLOWED_HOSTS: 'https://cdn.example.com/'",
        ),
        ("ORIGIN_ALLOWED_HOSTS", ["cdn.example.com:http"], "ORIGIN_ALLOWED_HOSTS: 'cdn.example.com:http'"),
        ("ORIGIN_MAX_REDIRECTS", -1, "ORIGIN_MAX_REDIRECTS must be 0 or more"),
        (
            "ORIGIN_URL_TEMPLATE",
            "ftp://files.internal/{file_id}",
            "ORIGIN_URL_TEMPLATE must be an http or https",
        ),
    ],
)
def test_origin_settings_are_checked(origin, settings, setting, value, message):
    setattr(settings, setting, value)

    with pytest.raises(ValueError, match=re.escape(message)):
        get_origin()


def test_redirect_to_another_scheme_is_refused(origin):
    redirect(origin, "/files/70000", "file:///etc/passwd")

    assert refusal() == (REFUSED, "Origin redirected to a file: URL", False)


def test_redirects_up_to_the_cap_are_followed(origin, settings):
    settings.ORIGIN_MAX_REDIRECTS = 2
    redirect(origin, "/files/70000", "/hop/1")
    redirect(origin, "/hop/1", "/hop/2")
    origin.replies["/hop/2"] = Reply(body=b"after two hops")

    _, content = read_all()

    assert content == b"after two hops"


def test_a_redirect_chain_longer_than_the_cap_is_refused(origin, settings):
    settings.ORIGIN_MAX_REDIRECTS = 2
    redirect(origin, "/files/70000", "/hop/1")
    redirect(origin, "/hop/1", "/hop/2")
    redirect(origin, "/hop/2", "/hop/3")
    origin.replies["/hop/3"] = Reply(body=b"after three hops")

    assert refusal() == (REFUSED, "Origin redirected more than 2 times", False)
    assert [path for path, _ in origin.received] == ["/files/70000", "/hop/1", "/hop/2"]


def test_a_redirect_loop_is_refused_at_the_default_cap(origin):
    redirect(origin, "/files/70000", "/files/70000")

    assert refusal() == (REFUSED, "Origin redirected more than 5 times", False)
    assert len(origin.received) == 6


def test_a_resumed_request_redirected_elsewhere_is_refused(origin, internal):
    redirect(origin, "/files/70000", internal.url(METADATA_PATH))

    assert refusal(offset=100, validator='"v1"') == (
        REFUSED,
        "Origin redirected to 127.0.0.1, which is not an allowed host",
        False,
    )
    assert internal.received == []
    assert origin.received[0][1]["Range"] == "bytes=100-"


def test_a_resumed_request_keeps_its_range_through_a_redirect_within_the_origin(origin):
    redirect(origin, "/files/70000", "/blobs/70000")
    origin.replies["/blobs/70000"] = Reply(
        status=206, headers={"Content-Range": "bytes 100-103/104", "ETag": '"v1"'}, body=b"rest"
    )

    opened, content = read_all(offset=100, validator='"v1"')

    assert (opened.offset, opened.size, content) == (100, 104, b"rest")
    assert [(path, headers["Range"], headers["If-Range"]) for path, headers in origin.received] == [
        ("/files/70000", "bytes=100-", '"v1"'),
        ("/blobs/70000", "bytes=100-", '"v1"'),
    ]


# --- the size cap and the announced length, per chunk --------------------------------------


def test_a_resumed_response_longer_than_announced_stops_at_the_size_cap(origin, settings):
    """The range says the file is 1000 bytes (at the cap) but the origin sends 5000 from
    offset 500: reading stops at the cap, whatever Content-Length said."""
    settings.JOB_MAX_FILE_BYTES = 1000
    origin.replies["/files/70000"] = Reply(
        status=206, headers={"Content-Range": "bytes 500-999/1000", "ETag": '"v1"'}, body=b"x" * 5000
    )
    received: list[bytes] = []

    with pytest.raises(JobError) as caught:
        read_into(received, offset=500, validator='"v1"', chunk_bytes=100)

    assert (caught.value.code, caught.value.message) == (
        "FILE_TOO_LARGE",
        "File is larger than the limit of 1000 bytes",
    )
    assert len(b"".join(received)) <= 500


@pytest.mark.parametrize("content_length", [True, False], ids=["content-length-lies", "no-content-length"])
def test_a_resumed_response_longer_than_its_range_is_refused(origin, content_length):
    origin.replies["/files/70000"] = Reply(
        status=206,
        headers={"Content-Range": "bytes 100-199/200", "ETag": '"v1"'},
        body=b"x" * 5000,
        content_length=content_length,
    )
    received: list[bytes] = []

    with pytest.raises(JobError) as caught:
        read_into(received, offset=100, validator='"v1"', chunk_bytes=64)

    assert (caught.value.code, caught.value.message) == (
        "NETWORK_ERROR",
        "Origin sent more than the 100 bytes it announced",
    )
    assert len(b"".join(received)) <= 100


def test_a_whole_response_is_read_to_its_content_length_only(origin):
    origin.replies["/files/70000"] = Reply(
        headers={"Content-Length": "100"}, body=b"x" * 5000, content_length=False
    )

    opened, content = read_all(chunk_bytes=64)

    assert (opened.size, len(content)) == (100, 100)


def test_staging_stops_at_the_size_cap_when_the_file_grows_while_read(settings, local_storage, tmp_path):
    """Whatever an origin announced, staging stores no byte past JOB_MAX_FILE_BYTES: here
    a directory origin's file grows between its size check and its reading."""
    settings.JOB_MAX_FILE_BYTES = 1000
    settings.STAGING_CHUNK_BYTES = 100
    root = tmp_path / "origin"
    root.mkdir()
    (root / "70000.bin").write_bytes(b"a" * 900)

    class GrowTheFile:
        def upload_opened(self, **kwargs: Any) -> None:
            with (root / "70000.bin").open("ab") as handle:
                handle.write(b"b" * 500)

        def part_stored(self, *, parts: list[dict[str, Any]]) -> None:
            pass

        def chunk_staged(self, *, bytes_done: int, bytes_total: int | None) -> None:
            assert bytes_done <= 1000

        def before_commit(self, *, file: StoredFileFacts) -> None:
            pass

    with pytest.raises(JobError) as caught:
        stage_file(
            origin=origins.DirectoryOrigin(root=str(root)), file_id=FILE_ID, key="k", hooks=GrowTheFile()
        )

    assert (caught.value.code, caught.value.message) == (
        "FILE_TOO_LARGE",
        "File is larger than the limit of 1000 bytes",
    )
    stored = [os.path.getsize(path) for path in Path(local_storage.location).rglob("*") if path.is_file()]
    assert all(size <= 1000 for size in stored)


# --- header values that must fit the job's columns -----------------------------------------

LONG_TYPE = "application/" + "x" * 244  # 256 characters


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("text/html; charset=utf-8", "text/html; charset=utf-8"),  # valid: kept (served as octet-stream)
        ("application/" + "x" * 243, "application/" + "x" * 243),  # 255 characters: fits
        (LONG_TYPE, "application/octet-stream"),
        ("text/html<script>", "application/octet-stream"),
        ("not a media type", "application/octet-stream"),
        ("text/pl\u00e9in", "application/octet-stream"),
        ('text/plain; name="\u00e9"', "application/octet-stream"),
        ("", "application/octet-stream"),
    ],
)
def test_the_origin_content_type_is_kept_only_if_valid_and_short_enough(origin, sent, kept):
    origin.replies["/files/70000"] = Reply(headers={"Content-Type": sent}, body=b"1")

    opened, _ = read_all()

    assert opened.content_type == kept
    assert opened.name.startswith("file_70000.")


LONG_ETAG = '"' + "e" * 254 + '"'  # 256 characters
DATE = "Wed, 21 Oct 2015 07:28:00 GMT"


@pytest.mark.parametrize(
    ("headers", "validator"),
    [
        ({"ETag": '"' + "e" * 253 + '"'}, '"' + "e" * 253 + '"'),  # 255 characters: fits
        ({"ETag": LONG_ETAG}, ""),
        ({"ETag": LONG_ETAG, "Last-Modified": DATE}, DATE),
        ({"Last-Modified": "x" * 256}, ""),
        ({"ETag": '"caf\u00e9"'}, ""),
        ({"ETag": 'W/"weak"', "Last-Modified": DATE}, DATE),
    ],
)
def test_a_validator_too_long_for_its_column_is_no_validator(origin, headers, validator):
    origin.replies["/files/70000"] = Reply(headers=headers, body=b"1")

    opened, _ = read_all()

    assert opened.validator == validator
