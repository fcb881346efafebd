"""The line between a supervisor and one worker: a Unix socket pair, one end each.

The worker writes one report: `ready PORT` once it listens, or `failed TEXT`
when it cannot start. The same socket is its lifeline: the supervisor never
writes, so the worker reads end-of-file only when the supervisor is gone (even
killed with SIGKILL), and then shuts down instead of serving on alone.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

MAX_REPORT = 4096


@dataclass(frozen=True)
class Report:
    """What a worker said: ready on `port`, or failed with `error`."""

    port: int = 0
    error: str = ""

    @property
    def ready(self) -> bool:
        return not self.error


class SupervisorEnd:
    """The supervisor's end of one worker's link."""

    def __init__(self) -> None:
        self._socket, self._child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket.setblocking(False)

    @property
    def child_fd(self) -> int:
        """The worker's end, to pass to it (`pass_fds`); closed here once it has started."""
        return self._child.fileno()

    def child_started(self) -> None:
        self._child.close()

    async def report(self) -> Report | None:
        """The worker's report; None when it ended (closed its end) without one."""
        loop = asyncio.get_running_loop()
        received = b""
        while not received.endswith(b"\n") and len(received) < MAX_REPORT:
            chunk = await loop.sock_recv(self._socket, MAX_REPORT)
            if not chunk:
                break
            received += chunk
        line = received.decode(errors="replace").strip()
        word, _, rest = line.partition(" ")
        if word == "ready" and rest.isdigit():
            return Report(port=int(rest))
        if word == "failed":
            return Report(error=rest or "no reason given")
        return None

    def close(self) -> None:
        self._child.close()
        self._socket.close()


class WorkerEnd:
    """A worker's end of its link, from the file descriptor it was given."""

    def __init__(self, fd: int) -> None:
        self._socket = socket.socket(fileno=fd)

    def ready(self, port: int) -> None:
        self._socket.sendall(f"ready {port}\n".encode())

    def failed(self, error: str) -> None:
        text = " ".join(error.split())[: MAX_REPORT - 16] or "no reason given"
        self._socket.sendall(f"failed {text}\n".encode())

    async def supervisor_gone(self) -> None:
        """Returns when the supervisor's end closes (it exited, or was killed)."""
        self._socket.setblocking(False)
        loop = asyncio.get_running_loop()
        while await loop.sock_recv(self._socket, 1):
            pass

    def close(self) -> None:
        self._socket.close()
