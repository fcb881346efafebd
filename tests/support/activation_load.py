"""Activation load from several tasks through the Python client, with a ledger of what the
server acknowledged, for tests that break a server process while the load runs.

Each task activates one new device after another and releases its oldest lease once it
holds `hold`. Refused for want of a seat, it gives one of its own back, or waits until
another task has. A call that got no answer (UNAVAILABLE: the process died) is asked
again once the channel is ready, as a device would: the activation with the same
fingerprint (a seat the first attempt may have taken is kept, not taken twice), the
release with the same token (a second release succeeds quietly).

The ledger keeps every acknowledged lease and release, and every call with its start,
end and outcome, so that a test can wait, without sleeping, for a number of answers
(its fault is then injected at a point set by the load, not by the clock) and count
the calls made while the fault lasted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc

from keyturn.client import AsyncLease, AsyncLicensingClient, KeyturnError, SeatsExhaustedError
from keyturn.client.retry import NO_RETRY

from .rpc import PRODUCT_ID

CALL_TIMEOUT_S = 60.0
WAIT_S = 90.0  # only so that a load that stops being answered fails instead of hanging
OK = "OK"


@dataclass(frozen=True)
class Call:
    lane: int  # index of the channel it went through
    kind: str  # "activate" or "release"
    started: float  # time.monotonic()
    ended: float
    code: str  # OK, or the status code's name


@dataclass
class Ledger:
    leases: dict[str, AsyncLease] = field(default_factory=dict)  # activation id -> last acked
    fingerprints: dict[str, str] = field(default_factory=dict)  # activation id -> fingerprint
    released: set[str] = field(default_factory=set)  # acknowledged releases
    asked_release: set[str] = field(default_factory=set)  # releases sent, answered or not
    calls: list[Call] = field(default_factory=list)

    def acknowledged(self, lane: int | None = None) -> int:
        return sum(c.code == OK and lane in (None, c.lane) for c in self.calls)

    def codes(self) -> collections.Counter[str]:
        return collections.Counter(c.code for c in self.calls)

    def during(self, start: float, end: float) -> list[Call]:
        """The calls in flight at some instant of [start, end]."""
        return [c for c in self.calls if c.started <= end and c.ended >= start]


class ActivationLoad:
    """`tasks` tasks activating devices on `license_key`, spread over `channels`."""

    def __init__(
        self,
        address: str,
        channels: Sequence[grpc.aio.Channel],
        license_key: str,
        *,
        tasks: int,
        hold: int,
    ) -> None:
        self._channels = list(channels)
        self._clients = [
            AsyncLicensingClient(
                address, PRODUCT_ID, channel=c, retry=NO_RETRY, timeout=CALL_TIMEOUT_S
            )
            for c in self._channels
        ]
        self._key = license_key
        self._tasks_wanted = tasks
        self._hold = hold
        self.ledger = Ledger()
        self._changed = asyncio.Condition()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.crashed: list[BaseException] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(i), name=f"activation-load-{i}")
            for i in range(self._tasks_wanted)
        ]

    async def stop(self) -> None:
        """Let every task finish its call in flight, then end; raise what one raised."""
        self._stop.set()
        async with self._changed:
            self._changed.notify_all()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for client in self._clients:
            await client.close()
        if self.crashed:
            raise self.crashed[0]

    async def wait_for(self, predicate: Callable[[Ledger], bool], within_s: float = WAIT_S) -> None:
        """Until `predicate(ledger)` holds, looked at after every call (bounded)."""
        async with asyncio.timeout(within_s), self._changed:
            await self._changed.wait_for(lambda: predicate(self.ledger) or bool(self.crashed))
        if self.crashed:
            raise self.crashed[0]

    async def _record(self, call: Call) -> None:
        self.ledger.calls.append(call)
        async with self._changed:
            self._changed.notify_all()

    async def _call(
        self, lane: int, kind: str, attempt: Awaitable[object]
    ) -> tuple[object, KeyturnError | None]:
        started = time.monotonic()
        try:
            result = await attempt
        except KeyturnError as error:
            await self._record(Call(lane, kind, started, time.monotonic(), error.code.name))
            return None, error
        await self._record(Call(lane, kind, started, time.monotonic(), OK))
        return result, None

    async def _run(self, task: int) -> None:
        try:
            await self._drive(task)
        except BaseException as error:
            if not isinstance(error, asyncio.CancelledError):
                self.crashed.append(error)
                async with self._changed:
                    self._changed.notify_all()
            raise

    async def _drive(self, task: int) -> None:
        lane = task % len(self._clients)
        client, channel = self._clients[lane], self._channels[lane]
        held: collections.deque[AsyncLease] = collections.deque()
        fingerprint: str | None = None  # asked again after no answer
        devices = 0
        give_back = False
        while not self._stop.is_set():
            if held and (give_back or len(held) >= self._hold):
                oldest = held[0]
                self.ledger.asked_release.add(oldest.activation_id)
                _, error = await self._call(lane, "release", client.release(oldest.token))
                if error is None or error.code is not grpc.StatusCode.UNAVAILABLE:
                    held.popleft()
                    give_back = False
                if error is None:
                    self.ledger.released.add(oldest.activation_id)
            else:
                if fingerprint is None:
                    fingerprint = f"kill-load-{task}-{devices}"
                    devices += 1
                asked = fingerprint
                lease, error = await self._call(
                    lane,
                    "activate",
                    client.activate(self._key, fingerprint=asked, heartbeat=False),
                )
                if isinstance(lease, AsyncLease):
                    self.ledger.leases[lease.activation_id] = lease
                    self.ledger.fingerprints[lease.activation_id] = asked
                    held.append(lease)
                if error is None or error.code is not grpc.StatusCode.UNAVAILABLE:
                    fingerprint = None
                if isinstance(error, SeatsExhaustedError):
                    if held:
                        give_back = True
                    else:
                        await self._await_a_release()
            if error is not None and error.code is grpc.StatusCode.UNAVAILABLE:
                await self._until_ready(channel)

    async def _await_a_release(self) -> None:
        """Until some task's release is acknowledged, or the load stops."""
        seen = len(self.ledger.released)
        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(
                lambda: len(self.ledger.released) > seen or self._stop.is_set()
            )

    async def _until_ready(self, channel: grpc.aio.Channel) -> None:
        """Until the channel is connected again (the server is back), or the load stops."""
        ready = asyncio.ensure_future(channel.channel_ready())
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            done, _ = await asyncio.wait(
                {ready, stopped}, timeout=WAIT_S, return_when="FIRST_COMPLETED"
            )
            if not done:
                raise TimeoutError(f"the channel was not ready again within {WAIT_S}s")
        finally:
            for waiter in (ready, stopped):
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter
