"""A webhook receiver on loopback: a real HTTP server that records what Keyturn posts.

It verifies nothing itself: tests check each recorded POST with the
`standardwebhooks` library. `answer` decides each status (200 by default; a
test makes it answer 500s); `stop()` closes the listening socket, so that the
endpoint refuses connections ("down"), and `start()` listens again on the
same port.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from standardwebhooks.webhooks import Webhook


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def payload(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed

    @property
    def sequence(self) -> int:
        return int(self.payload["data"]["sequence"])


class Receiver:
    def __init__(self, answer: Callable[[Received], int] | None = None) -> None:
        self.answer: Callable[[Received], int] = answer or (lambda _: 200)
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def listening(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                status = receiver.answer(Received(headers, body, 0))
                with receiver._lock:
                    receiver.received.append(Received(headers, body, status))
                reply = b"ok" if status < 300 else b"receiver says no"
                self.send_response(status)
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def delivered(self) -> list[Received]:
        """The POSTs it answered 2xx, in arrival order."""
        return [r for r in self.snapshot() if 200 <= r.status < 300]

    async def wait_for(
        self, condition: Callable[[list[Received]], bool], within: float = 60
    ) -> None:
        """Poll until `condition` holds of what arrived, or fail after `within` seconds."""
        deadline = time.monotonic() + within
        while not condition(self.snapshot()):
            if time.monotonic() > deadline:
                got = [(r.webhook_id, r.status) for r in self.snapshot()][-20:]
                raise AssertionError(f"receiver: condition not met in {within}s; last: {got}")
            await asyncio.sleep(0.02)


def verified(secret: str, received: Received) -> dict[str, Any]:
    """The payload, once `standardwebhooks` says its signature holds (raises if not)."""
    payload: dict[str, Any] = Webhook(secret).verify(received.body, received.headers)
    return payload
