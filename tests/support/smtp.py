"""A real SMTP server (aiosmtpd) on a loopback port, for tests of email dispatch.

It records every message it accepts, can be told to answer 4xx or 5xx, and
can be stopped and started again on the same port (an outage). `FaultAtQuit`
injects a fault (a dispatcher's kill) after a message was accepted and before its
sender heard the end of the session. Waiters are
woken by each accepted message, so tests wait with a timeout, never sleep.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Mailbox:
    """What the SMTP server received; `answer` decides the reply to the next DATA."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.answer = "250 OK"
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if not self.answer.startswith("2"):
            return self.answer
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake)
        return "250 OK"

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(
        self, predicate: Callable[[list[EmailMessage]], bool], within_s: float = 30.0
    ) -> list[EmailMessage]:
        """Until the received messages satisfy `predicate` (TimeoutError after `within_s`)."""
        self._loop = asyncio.get_running_loop()
        async with asyncio.timeout(within_s):
            while not predicate(self.messages):
                await self._changed.wait()
        return self.messages

    def message_ids(self) -> list[str]:
        return [str(m["Message-ID"]) for m in self.messages]

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if str(m["To"]) == address]


class FaultAtQuit(Mailbox):
    """A mailbox that calls `fault` at the QUIT of the session that brought (or followed)
    its `at`-th message, before answering it, then refuses every message until
    `reopen()`.

    At that QUIT the sender holds the 250 of DATA (the message is accepted) and waits for
    the answer to QUIT: aiosmtplib's send has not returned, so a dispatcher cannot have
    recorded the message as sent. A fault there lands in the window between the SMTP
    acceptance and the database record.
    """

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.fault: Callable[[], None] | None = None
        self.faulted_on = ""  # Message-ID of the message of the session the fault cut off
        self._refusing = False
        self._message_of: dict[int, str] = {}  # id(session) -> Message-ID it brought

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self._refusing:
            return "421 4.3.0 closing for a test fault"
        answer = await super().handle_DATA(server, session, envelope)
        if answer.startswith("2"):
            self._message_of[id(session)] = str(self.messages[-1]["Message-ID"])
        return answer

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        accepted = self._message_of.pop(id(session), "")
        if self.fault is not None and accepted and len(self.messages) >= self.at:
            fault, self.fault = self.fault, None
            self.faulted_on = accepted
            self._refusing = True
            fault()
        return "221 Bye"

    def reopen(self) -> None:
        self._refusing = False


class SmtpServer:
    """aiosmtpd in its own thread on a fixed loopback port; stop() and start() again."""

    def __init__(self, mailbox: Mailbox | None = None, port: int | None = None) -> None:
        self.mailbox = mailbox or Mailbox()
        self.port = port or free_port()
        self._controller: Controller | None = None

    def start(self) -> None:
        self._controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def settings(self) -> dict[str, object]:
        """Keyturn settings that send to this server."""
        return {"smtp_host": "127.0.0.1", "smtp_port": self.port, "smtp_security": "none"}


def body_text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def body_html(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())
