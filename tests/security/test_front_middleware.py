"""The two ASGI middlewares in front of the thread pool, driven in-process with ASGI
messages (the real uvicorn runs them in tests/e2e/test_slow_clients.py)."""

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile

from edge.file_sender import FileSender
from edge.request_body import RequestBodyRead

Message = dict[str, Any]


class App:
    """An inner app that records what it received and answers `answer`."""

    def __init__(self, answer: list[Message] | None = None) -> None:
        self.calls: list[tuple[dict[str, Any], list[Message]]] = []
        self.answer = answer or [
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]},
            {"type": "http.response.body", "body": b"ok", "more_body": False},
        ]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        received = []
        if scope["type"] == "http":
            received.append(await receive())
        self.calls.append((scope, received))
        for message in self.answer:
            await send(message)


def run(app: Any, scope: dict[str, Any], messages: list[Message]) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    async def main() -> None:
        await asyncio.wait_for(app(scope, receive, send), timeout=10)

    asyncio.run(main())
    return sent


def http(method: str = "POST", path: str = "/v1/download/initiate", **headers: str) -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [
            (name.replace("_", "-").lower().encode(), value.encode()) for name, value in headers.items()
        ],
    }


def body(data: bytes, more: bool = False) -> Message:
    return {"type": "http.request", "body": data, "more_body": more}


def error_of(sent: list[Message]) -> tuple[int, str, dict[str, str]]:
    start, end = sent
    headers = {name.decode(): value.decode() for name, value in start["headers"]}
    return start["status"], json.loads(end["body"])["error"]["code"], headers


def test_the_body_reaches_the_app_whole_as_one_message(settings):
    app = App()

    sent = run(
        RequestBodyRead(app), http(content_length="6"), [body(b"ab", True), body(b"cd", True), body(b"ef")]
    )

    assert app.calls[0][1] == [body(b"abcdef")]
    assert sent[0]["status"] == 200


def test_a_declared_length_above_the_cap_is_refused_before_anything_is_read(settings):
    settings.REQUEST_BODY_MAX_BYTES = 10
    app = App()

    sent = run(RequestBodyRead(app), http(content_length="11"), [])

    assert app.calls == []
    status, code, headers = error_of(sent)
    assert (status, code, headers["connection"]) == (413, "PAYLOAD_TOO_LARGE", "close")
    assert headers["cache-control"] == "no-store"


def test_a_chunked_body_growing_past_the_cap_is_refused(settings):
    settings.REQUEST_BODY_MAX_BYTES = 10
    app = App()

    sent = run(
        RequestBodyRead(app), http(transfer_encoding="chunked"), [body(b"x" * 6, True), body(b"x" * 6, True)]
    )

    assert app.calls == []
    assert error_of(sent)[:2] == (413, "PAYLOAD_TOO_LARGE")


def test_a_body_that_does_not_arrive_in_time_is_408(settings):
    settings.REQUEST_BODY_TIMEOUT_S = 0.2
    app = App()

    sent = run(RequestBodyRead(app), http(content_length="100"), [body(b"x", True)])

    assert app.calls == []
    assert error_of(sent)[:2] == (408, "REQUEST_TIMEOUT")


def test_a_client_that_leaves_before_its_body_is_not_answered(settings):
    app = App()

    sent = run(RequestBodyRead(app), http(content_length="100"), [{"type": "http.disconnect"}])

    assert app.calls == []
    assert sent == []


def test_websockets_pass_untouched(settings):
    app = App(answer=[{"type": "websocket.accept"}])
    scope = {"type": "websocket", "path": "/v1/download/subscribe/x", "headers": []}

    sent = run(RequestBodyRead(app), scope, [])

    assert app.calls == [(scope, [])]
    assert sent == [{"type": "websocket.accept"}]


def file_answer(target: str) -> list[Message]:
    return [
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/pdf"),
                (b"x-accel-redirect", target.encode()),
                (b"content-length", b"0"),
            ],
        },
        {"type": "http.response.body", "body": b"", "more_body": False},
    ]


def test_the_file_an_answer_names_is_sent_with_its_length(local_storage):
    key = local_storage.save("downloads/1/job-1", ContentFile(b"%PDF" * 100_000))
    app = App(answer=file_answer(local_storage.internal_url(key)))

    sent = run(FileSender(app), http("GET", "/files/t"), [body(b"")])

    start, *chunks = sent
    assert start["status"] == 200
    assert start["headers"] == [(b"content-type", b"application/pdf"), (b"content-length", b"400000")]
    assert b"".join(chunk["body"] for chunk in chunks) == b"%PDF" * 100_000
    assert [chunk["more_body"] for chunk in chunks] == [True, False]  # 256 KiB reads


def test_a_head_request_gets_the_length_and_no_body(local_storage):
    key = local_storage.save("downloads/1/job-1", ContentFile(b"data"))

    sent = run(
        FileSender(App(answer=file_answer(local_storage.internal_url(key)))), http("HEAD", "/f"), [body(b"")]
    )

    assert sent[0]["headers"][-1] == (b"content-length", b"4")
    assert sent[1:] == [{"type": "http.response.body", "body": b"", "more_body": False}]


@pytest.mark.parametrize(
    "target", ["/internal/files/../../../etc/passwd", "/internal/files/downloads/1/gone"]
)
def test_a_target_outside_the_storage_or_gone_is_404(local_storage, target):
    sent = run(FileSender(App(answer=file_answer(target))), http("GET", "/f"), [body(b"")])

    assert sent[0]["status"] == 404
    assert sent[1]["body"] == b""


def test_the_header_in_a_request_is_not_looked_at(local_storage, tmp_path: Path):
    secret = tmp_path / "media" / "downloads" / "secret"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_bytes(b"secret")
    app = App()

    sent = run(
        FileSender(app),
        http("GET", "/health", x_accel_redirect="/internal/files/downloads/secret"),
        [body(b"")],
    )

    assert sent[-1]["body"] == b"ok"
