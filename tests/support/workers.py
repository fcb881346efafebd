"""Telling the workers of one `keyturn serve --workers N` apart, from outside.

Each worker names itself (its pid) in the `keyturn-worker` trailer of every
answer; the supervisor logs `worker I (pid P) listening on ...` for each start.
A fresh channel with its own subchannel pool opens a new TCP connection, which
the kernel hands to any one of the listening workers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import grpc

from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc

from .subprocess_server import ServerProcess

WORKER_LISTENING = re.compile(
    r"keyturn\.supervisor worker (?P<index>\d+) \(pid (?P<pid>\d+)\) listening"
)
WORKER_EXITED = re.compile(
    r"keyturn\.supervisor worker (?P<index>\d+) \(pid (?P<pid>\d+)\) exited with"
)
CALL_TIMEOUT_S = 30.0
WAIT_S = 60.0
NEW_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


def worker_pids(lines: Sequence[str]) -> dict[int, int]:
    """Worker index -> pid of its latest start that reported listening."""
    pids: dict[int, int] = {}
    for line in lines:
        match = WORKER_LISTENING.search(line)
        if match:
            pids[int(match["index"])] = int(match["pid"])
    return pids


async def listening_workers(server: ServerProcess, count: int = 2) -> dict[int, int]:
    """Worker index -> pid, once the supervisor's log shows `count` workers listening.

    The listening line (stdout) and these log lines (stderr) come through two pipes, read
    by two threads: the first may be seen before the last of the others."""
    await server.await_stderr(lambda lines: len(worker_pids(lines)) >= count, WAIT_S)
    return worker_pids(server.stderr_lines)


def trailer_worker(metadata: object) -> int:
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == "keyturn-worker":
            return int(value)
    raise AssertionError(f"no keyturn-worker trailer in {metadata!r}")


async def answering_worker(address: str) -> int:
    """The pid of the worker that answers one call on a new connection."""
    async with grpc.aio.insecure_channel(address, options=NEW_CONNECTION) as channel:
        call = licensing_pb2_grpc.LicensingServiceStub(channel).GetSigningKeys(
            lic.GetSigningKeysRequest(), timeout=CALL_TIMEOUT_S
        )
        await call
        return trailer_worker(await call.trailing_metadata())


async def answering_workers(address: str, expected: set[int], attempts: int = 200) -> list[int]:
    """Calls on new connections until every pid of `expected` answered, at most `attempts`;
    the pid of each answer, in order."""
    answered: list[int] = []
    while len(answered) < attempts and not expected <= set(answered):
        answered.append(await answering_worker(address))
    return answered


async def discover_workers(address: str, count: int, attempts: int = 200) -> set[int]:
    """The pids of `count` workers answering on `address` (new connections until seen)."""
    seen: set[int] = set()
    for _ in range(attempts):
        if len(seen) == count:
            break
        seen.add(await answering_worker(address))
    assert len(seen) == count, f"{len(seen)} workers answered in {attempts} calls, not {count}"
    return seen


async def channel_to(address: str, pid: int, attempts: int = 200) -> grpc.aio.Channel:
    """An open channel whose connection is served by worker `pid`."""
    for _ in range(attempts):
        channel = grpc.aio.insecure_channel(address, options=NEW_CONNECTION)
        call = licensing_pb2_grpc.LicensingServiceStub(channel).GetSigningKeys(
            lic.GetSigningKeysRequest(), timeout=CALL_TIMEOUT_S
        )
        await call
        if trailer_worker(await call.trailing_metadata()) == pid:
            return channel
        await channel.close()
    raise AssertionError(f"no connection reached worker {pid} in {attempts} attempts")
