"""Slow and endless clients against a real uvicorn (processes.web_argv, its WEB_FLAGS): none
of them takes the web process's threads or its event loop, and each is dropped after its
bound (the settings' timeouts, shortened here to TIMEOUT_S).

- 25 clients (more than WEB_THREADS) that stop reading a signed link's file;
- 25 clients that send a login form's body a byte at a time;
- headers of 1 MB, 50,000 headers, an endless header, a 100 KiB URL;
- 200 slowloris connections that send a header line now and then.

/health and a status poll answer throughout. Each test bounds its own waits: before the
fixes, these clients held every thread (or the loop) and the tests failed on a timeout.
"""

import hashlib
import http.client
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, suppress
from datetime import timedelta
from pathlib import Path
from uuid import uuid4

import httpx
import psutil  # type: ignore[import-untyped]
import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.utils import timezone

from jobs.models import Status
from jobs.transfer.links import SignedFileSystemStorage
from tests.factories import api_key_for, make_job
from tests.support.origin_server import OriginServer
from tests.support.stack import Stack, stack_env

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TIMEOUT_S = 3.0
KEEP_ALIVE_S = 20  # uvicorn's quiet time between two requests of one connection
CLIENTS = 25  # more than WEB_THREADS (20)
MiB = 1024 * 1024
FILE_BYTES = 16 * MiB  # more than the loopback socket buffers of one connection hold
# Waits that a healthy server meets in milliseconds; generous for a loaded machine.
PROMPT_S = 5.0
CLOSED_WITHIN_S = TIMEOUT_S + 30


@pytest.fixture(scope="module")
def front(django_db_setup: None, origin_server: OriginServer) -> Iterator[Stack]:
    env = stack_env(
        origin_server,
        {
            "SEND_IDLE_TIMEOUT_S": str(TIMEOUT_S),
            "REQUEST_BODY_TIMEOUT_S": str(TIMEOUT_S),
            "REQUEST_HEAD_TIMEOUT_S": str(TIMEOUT_S),
        },
        broker_db=14,  # no worker: nothing is sent to it
    )
    stack = Stack("front", env).start(worker=False, web_extra=("--timeout-keep-alive", str(KEEP_ALIVE_S)))
    yield stack
    stack.stop()


def connect(stack: Stack, *, receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(PROMPT_S)
    sock.connect(("127.0.0.1", stack.port))
    return sock


def assert_answers_promptly(stack: Stack, token: str, job_id: str) -> None:
    with httpx.Client(base_url=stack.base_url, timeout=PROMPT_S) as http:
        assert http.get("/health").status_code == 200
        status = http.get(f"/v1/download/status/{job_id}", headers={"Authorization": f"Token {token}"})
        assert status.status_code == 200, status.text


def answer_of(sock: socket.socket, *, timeout_s: float = CLOSED_WITHIN_S) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts)."""
    sock.settimeout(timeout_s)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def is_closed_within(sock: socket.socket, timeout_s: float) -> bool:
    """Drains what is buffered; True once the server has closed (or reset) the connection."""
    deadline = time.monotonic() + timeout_s
    sock.setblocking(False)
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], 0.5)
        if not readable:
            continue
        try:
            while chunk := sock.recv(1024 * 1024):
                pass
            if chunk == b"":
                return True
        except BlockingIOError:
            continue
        except ConnectionResetError:
            return True
    return False


@pytest.fixture
def owner() -> tuple[User, str]:
    user = User.objects.create_user(f"front-{uuid4().hex[:12]}")
    return user, api_key_for(user)


@pytest.fixture
def job_id(owner: tuple[User, str]) -> str:
    return make_job(owner[0]).job_id


def completed_file(user: User, content: bytes) -> str:
    """A completed job of `user` whose file is in the stack's local storage."""
    storage = SignedFileSystemStorage(location=str(Path(settings.VAR_DIR) / "media"), base_url="/files/")
    key = storage.save(f"downloads/{user.pk}/front-{uuid4().hex}-1", ContentFile(content))
    job = make_job(
        user,
        status=Status.COMPLETED,
        attempts=1,
        progress=100,
        storage_key=key,
        file_name="big.bin",
        file_size_bytes=len(content),
        content_type="application/octet-stream",
        sha256=hashlib.sha256(content).hexdigest(),
        completed_at=timezone.now(),
        expires_at=timezone.now() + timedelta(hours=1),
    )
    return job.job_id


# --- 1. slow readers of a signed link -------------------------------------------------------


def test_clients_that_stop_reading_a_file_hold_no_thread_and_lose_their_connection(front, owner):
    user, token = owner
    content = bytes(range(256)) * (FILE_BYTES // 256)
    file_job = completed_file(user, content)
    with httpx.Client(base_url=front.base_url, timeout=PROMPT_S) as http:
        link = http.get(f"/v1/download/{file_job}", headers={"Authorization": f"Token {token}"})
        assert link.status_code == 200, link.text
        url = httpx.URL(link.json()["data"]["download_url"])
        # Read whole, the file is what was stored, with its headers.
        whole = httpx.get(url, timeout=30)
    assert whole.status_code == 200
    assert whole.content == content
    assert whole.headers["Content-Length"] == str(FILE_BYTES)
    assert whole.headers["Content-Disposition"] == 'attachment; filename="big.bin"'
    assert whole.headers["X-Content-Type-Options"] == "nosniff"
    assert "X-Accel-Redirect" not in whole.headers

    with ExitStack() as stack:
        readers = [stack.enter_context(closing(connect(front, receive_buffer=4096))) for _ in range(CLIENTS)]
        opened = time.monotonic()
        for sock in readers:
            sock.sendall(f"GET {url.raw_path.decode()} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        for sock in readers:
            assert sock.recv(12) == b"HTTP/1.1 200"  # started, then nothing more is read

        assert_answers_promptly(front, token, file_job)
        time.sleep(max(0.0, opened + TIMEOUT_S + 1 - time.monotonic()))
        assert_answers_promptly(front, token, file_job)

        closed = [is_closed_within(sock, CLOSED_WITHIN_S) for sock in readers]
    assert closed == [True] * CLIENTS


def test_a_file_answer_header_from_the_client_is_not_followed(front, owner):
    with httpx.Client(base_url=front.base_url, timeout=PROMPT_S) as http:
        health = http.get("/health", headers={"X-Accel-Redirect": "/internal/files/../../../etc/passwd"})
        internal = http.get("/internal/files/../../../etc/passwd")

    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert internal.status_code == 404
    assert b"root:" not in internal.content


# --- 2. slow request bodies -----------------------------------------------------------------


def test_slow_bodies_hold_no_thread_and_get_408(front, owner, job_id):
    _, token = owner
    head = (
        "POST /accounts/login/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Cookie: csrftoken={'a' * 32}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    answers: dict[int, bytes] = {}
    with ExitStack() as stack:
        senders = [stack.enter_context(closing(connect(front))) for _ in range(CLIENTS)]
        for sock in senders:
            sock.sendall(head + b"u")
        stop = threading.Event()

        def trickle() -> None:  # a byte a second from each, until it is answered
            while not stop.wait(1.0):
                answered, _, _ = select.select(senders, [], [], 0)
                for sock in set(senders) - set(answered):
                    with suppress(OSError):
                        sock.send(b"x")

        dripping = threading.Thread(target=trickle, daemon=True)
        dripping.start()
        try:
            assert_answers_promptly(front, token, job_id)
            for number, sock in enumerate(senders):
                answers[number] = answer_of(sock)
        finally:
            stop.set()
            dripping.join()

    for answer in answers.values():
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert answer.endswith(b'{"success": false, "error": {"code": "REQUEST_TIMEOUT", '
                               b'"message": "The request body did not arrive in time"}}')  # fmt: skip


def test_a_body_above_the_cap_is_refused_at_once(front):
    declared = settings.REQUEST_BODY_MAX_BYTES + 1
    with closing(connect(front)) as sock:
        head = f"POST /v1/download/initiate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {declared}\r\n\r\n"
        sock.sendall(head.encode())
        answer = answer_of(sock, timeout_s=PROMPT_S)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"code": "PAYLOAD_TOO_LARGE"' in answer

    with closing(connect(front)) as sock:
        sock.sendall(
            b"POST /v1/download/initiate HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        piece = b"x" * 65536
        try:
            for _ in range(declared // len(piece) + 2):
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused while still sending
        answer = answer_of(sock, timeout_s=PROMPT_S)
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_a_form_post_still_works(front):
    with httpx.Client(base_url=front.base_url, timeout=PROMPT_S) as browser:
        page = browser.get("/accounts/login/")
        answer = browser.post(
            "/accounts/login/",
            data={
                "username": "nobody",
                "password": "wrong",
                "csrfmiddlewaretoken": browser.cookies["csrftoken"],
            },
        )

    assert page.status_code == 200
    assert answer.status_code == 200  # the form again, with its error: CSRF and body passed
    assert b"Please enter a correct username and password" in answer.content


# --- 3. request heads -----------------------------------------------------------------------


def rss_mib(stack: Stack) -> float:
    assert stack.web is not None
    return float(psutil.Process(stack.web.pid).memory_info().rss) / MiB


def sent_until_refused(stack: Stack, request: bytes, *, tail: bytes = b"") -> tuple[bytes, int]:
    """Sends `request` (then `tail` over and over, up to 32 MiB), and returns the answer and
    how many bytes the server took before it closed."""
    sent = 0
    with closing(connect(stack)) as sock:
        try:
            sock.sendall(request)
            sent += len(request)
            while tail and sent < 32 * MiB:
                sock.sendall(tail)
                sent += len(tail)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
        return answer_of(sock, timeout_s=PROMPT_S), sent


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * MiB + b"\r\n\r\n", 431, id="1MB-header"
        ),
        pytest.param(
            b"GET /health HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: y\r\n" % n for n in range(50_000))
            + b"\r\n",
            431,
            id="50000-headers",
        ),
        pytest.param(
            b"GET /health?" + b"q" * 100 * 1024 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, id="100KiB-URL"
        ),
    ],
)
def test_an_oversized_head_is_refused(front, request_bytes, status):
    before = rss_mib(front)
    answer, _ = sent_until_refused(front, request_bytes)

    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert answer.rstrip().endswith(b"}}")  # the API's envelope
    assert b"\r\ncache-control: no-store\r\n" in answer
    assert rss_mib(front) - before < 20


def test_an_endless_header_is_cut_off(front, owner, job_id):
    before = rss_mib(front)
    answer, sent = sent_until_refused(
        front, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Endless: ", tail=b"a" * 65536
    )

    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert sent < 32 * MiB  # cut off: the socket buffers take a few MiB, no more
    assert rss_mib(front) - before < 20
    assert_answers_promptly(front, owner[1], job_id)


def test_large_but_legal_headers_and_keep_alive_are_served(front):
    with httpx.Client(base_url=front.base_url, timeout=PROMPT_S) as http:
        big = http.get("/health", headers={"Cookie": "c=" + "v" * 30_000})
        again = [http.get("/health").status_code for _ in range(3)]
        time.sleep(1)  # well within the head timeout: the kept-alive connection serves again
        last = http.get("/health")

    assert big.status_code == 200
    assert again == [200, 200, 200]
    assert last.status_code == 200


def test_a_kept_alive_connection_idles_for_the_keep_alive_timeout_not_the_head_timeout(front):
    """A load balancer keeps its connections to the web processes open between requests
    for as long as uvicorn's keep-alive allows (the ALB needs longer than its idle
    timeout): the head timeout runs from a request's first byte, not through that quiet."""
    connection = http.client.HTTPConnection("127.0.0.1", front.port, timeout=PROMPT_S)
    try:
        connection.request("GET", "/health", headers={"Host": "localhost"})
        first = connection.getresponse()
        first.read()
        sock = connection.sock
        time.sleep(TIMEOUT_S + 3)  # past the head timeout, well within KEEP_ALIVE_S
        # A connection the server had closed answers nothing (RemoteDisconnected).
        connection.request("GET", "/health", headers={"Host": "localhost"})
        second = connection.getresponse()
        second.read()
        assert connection.sock is sock  # the same connection served both
    finally:
        connection.close()

    assert (first.status, second.status) == (200, 200)


def test_slowloris_connections_are_closed_after_the_head_timeout(front, owner, job_id):
    with ExitStack() as stack:
        lorises = [stack.enter_context(closing(connect(front))) for _ in range(200)]
        silent = stack.enter_context(closing(connect(front)))
        opened = time.monotonic()
        for sock in lorises:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        answers: list[bytes] = []
        while time.monotonic() < opened + TIMEOUT_S + 1:
            answered, _, _ = select.select(lorises, [], [], 0)
            for sock in set(lorises) - set(answered):
                with suppress(OSError):
                    sock.sendall(b"X-a: b\r\n")
            assert_answers_promptly(front, owner[1], job_id)
            time.sleep(0.5)
        answers = [answer_of(sock) for sock in lorises]
        quiet = answer_of(silent)

    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers), {a[:40] for a in answers}
    assert quiet == b""  # nothing of a request came: closed without an answer
