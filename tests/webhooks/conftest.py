"""Webhook tests: a real receiver on a loopback port that the settings allow (an internal
receiver, as WEBHOOK_ALLOWED_HOSTS lets an operator name one), and the broker send of a
delivery recorded instead of sent (`sent`), so each test runs the attempts itself."""

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.webhook_receiver import WebhookReceiver
from webhooks import services


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()


@pytest.fixture
def hook_settings(settings: Any, receiver: WebhookReceiver) -> Any:
    settings.WEBHOOK_ALLOW_HTTP = True
    settings.WEBHOOK_ALLOWED_HOSTS = [receiver.host_port]
    settings.WEBHOOK_RETRY_JITTER = 0
    settings.WEBHOOK_TIMEOUT_S = 1.0
    return settings


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, float]]:
    """Named fake: the broker. (delivery pk, countdown) of every attempt sent to a worker."""
    found: list[tuple[int, float]] = []
    monkeypatch.setattr(
        services, "delivery_dispatch", lambda pk, countdown_s=0: found.append((pk, countdown_s))
    )
    return found
