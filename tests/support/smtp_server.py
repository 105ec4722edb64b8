"""A real SMTP server for the tests (aiosmtpd, on a free loopback port, in a thread of its
own) that keeps what it accepted and can refuse the next messages on cue."""

import email
import email.policy
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from devtools.servers import free_port


@dataclass(frozen=True)
class Received:
    envelope_to: list[str]
    message: EmailMessage

    @property
    def text(self) -> str:
        body = self.message.get_body(preferencelist=("plain",))
        assert body is not None
        return str(body.get_content()).replace("\r\n", "\n")


class SmtpServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"smtp://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._answers: list[str] = []
        self.received: list[Received] = []
        self.refused = 0
        # A name of its own: the default looks up this host's FQDN, which may take seconds.
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port, server_hostname="smtp.test")

    def start(self) -> "SmtpServer":
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def reset(self) -> None:
        with self._lock:
            self._answers.clear()
            self.received.clear()
            self.refused = 0

    def refuse_next(self, *answers: str) -> None:
        """The next messages are answered with these replies (`451 ...`) instead of taken."""
        with self._lock:
            self._answers.extend(answers)

    def to(self, address: str) -> list[Received]:
        with self._lock:
            return [item for item in self.received if address in item.envelope_to]

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd's hook
        with self._lock:
            if self._answers:
                self.refused += 1
                return self._answers.pop(0)
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            self.received.append(Received(list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"
