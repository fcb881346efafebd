"""Devices that claim, renew and check seats over raw stubs while a fault is injected.

Each device loops: activate (its own fingerprint, on one of the license keys),
renew the newest lease it holds, check the license. It keeps what every call
answered, by code and reason, how many calls were made while the test said a
fault was in effect, and the newest lease acknowledged for each activation.
Afterwards `lost_writes()` looks each acknowledged lease up in the database: its
activation must be there, unreleased, and hold its seat at least until that
lease's expiry. `oversold()` counts entitlements with more live seats than seats.
Failed calls are retried after a short pause (pacing, so that a refused
connection does not spin), never hidden: each failure is counted.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import grpc

from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc

from .rpc import PRODUCT_ID, failure_of

FAILURE_PAUSE_S = 0.02
CALL_TIMEOUT_S = 30.0  # far past every database limit: a call that hangs shows up as one
INTERNAL_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


def lease_claims(token: str) -> dict[str, object]:
    """The claims of a lease JWT, unverified (the test checks storage, not signatures)."""
    payload = token.split(".")[1]
    claims: dict[str, object] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


@dataclass
class AckedLease:
    entitlement_id: str
    activation_id: str
    expire_time: int  # the lease's exp claim


@dataclass
class SeatLoad:
    address: str
    license_keys: list[str]
    devices: int
    answers: Counter[tuple[str, str]] = field(default_factory=Counter)
    acked: dict[str, AckedLease] = field(default_factory=dict)
    during_fault: int = 0
    in_fault: bool = False
    slowest_failure_s: float = 0.0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _answered: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _channel: grpc.aio.Channel | None = None

    @property
    def internal(self) -> int:
        return sum(n for (code, _), n in self.answers.items() if code in {"INTERNAL", "UNKNOWN"})

    @property
    def calls(self) -> int:
        return sum(self.answers.values())

    def ok_calls(self) -> int:
        return sum(n for (code, _), n in self.answers.items() if code == "OK")

    def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.address)
        stub = licensing_pb2_grpc.LicensingServiceStub(self._channel)
        self._tasks = [asyncio.create_task(self._device(stub, n)) for n in range(self.devices)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        if self._channel is not None:
            await self._channel.close()

    async def oks_beyond(self, count: int, within_s: float) -> None:
        """Until `count` more calls than now have been answered OK (the service serves)."""
        await self._until(self.ok_calls, count, within_s)

    async def failures_beyond(self, count: int, within_s: float) -> None:
        """Until `count` more calls than now have failed (the fault is felt)."""
        await self._until(lambda: self.calls - self.ok_calls(), count, within_s)

    async def _until(self, counter: Callable[[], int], count: int, within_s: float) -> None:
        target = counter() + count
        async with asyncio.timeout(within_s):
            while counter() < target:
                self._answered.clear()
                await self._answered.wait()

    async def _call(
        self, method: grpc.aio.UnaryUnaryMultiCallable, request: object
    ) -> object | None:
        in_fault = self.in_fault
        started = asyncio.get_running_loop().time()
        try:
            response = await method(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            failure = failure_of(error)
            self.answers[(failure.code.name, failure.reason)] += 1
            self.slowest_failure_s = max(
                self.slowest_failure_s, asyncio.get_running_loop().time() - started
            )
            self._count_fault_time(in_fault)
            return None
        self.answers[("OK", "")] += 1
        self._count_fault_time(in_fault)
        return response

    def _count_fault_time(self, began_in_fault: bool) -> None:
        """A call that began or ended while the fault was in effect was made during it."""
        if began_in_fault or self.in_fault:
            self.during_fault += 1
        self._answered.set()

    async def _device(self, stub: licensing_pb2_grpc.LicensingServiceStub, n: int) -> None:
        key = self.license_keys[n % len(self.license_keys)]
        token = ""
        while not self._stop.is_set():
            if not token:
                activated = await self._call(
                    stub.ActivateSeat,
                    lic.ActivateSeatRequest(
                        license_key=key, product_id=PRODUCT_ID, fingerprint=f"device-{n}"
                    ),
                )
                if isinstance(activated, lic.ActivateSeatResponse):
                    token = self._ack(activated.lease.token)
            else:
                renewed = await self._call(
                    stub.RenewLease, lic.RenewLeaseRequest(lease_token=token)
                )
                if isinstance(renewed, lic.RenewLeaseResponse):
                    token = self._ack(renewed.lease.token)
            checked = await self._call(
                stub.CheckLicense, lic.CheckLicenseRequest(license_key=key, product_id=PRODUCT_ID)
            )
            if checked is None:
                await asyncio.sleep(FAILURE_PAUSE_S)

    def _ack(self, token: str) -> str:
        claims = lease_claims(token)
        activation_id = str(claims["sub"])
        self.acked[activation_id] = AckedLease(
            str(claims["entitlement_id"]), activation_id, int(str(claims["exp"]))
        )
        return token


async def lost_writes(dsn: str, acked: dict[str, AckedLease]) -> list[str]:
    """The acknowledged activations the database lost: missing, released, or holding their
    seat for less time than the lease the device was given."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT activation_id, released_time, lease_expire_time FROM activations"
            " WHERE activation_id = ANY($1::text[])",
            list(acked),
        )
    finally:
        await conn.close()
    stored = {row["activation_id"]: row for row in rows}
    lost = []
    for activation_id, lease in acked.items():
        row = stored.get(activation_id)
        if (
            row is None
            or row["released_time"] is not None
            or int(row["lease_expire_time"].timestamp()) < lease.expire_time
        ):
            lost.append(activation_id)
    return lost


async def oversold(dsn: str) -> int:
    """Entitlements with more live seats than seats, or whose kept count (seats_held)
    differs from the unreleased activations with no lapse recorded."""
    conn = await asyncpg.connect(dsn)
    try:
        now = datetime.now(UTC)
        over = await conn.fetchval(
            "SELECT count(*) FROM entitlements AS e WHERE e.seats < (SELECT count(*)"
            " FROM activations AS a WHERE a.entitlement_id = e.entitlement_id"
            " AND a.released_time IS NULL AND a.lease_expire_time > $1)",
            now,
        )
        miscounted = await conn.fetchval(
            "SELECT count(*) FROM entitlements AS e WHERE e.seats_held <> (SELECT count(*)"
            " FROM activations AS a WHERE a.entitlement_id = e.entitlement_id"
            " AND a.released_time IS NULL AND a.lapse_recorded_time IS NULL)"
        )
    finally:
        await conn.close()
    return int(over) + int(miscounted)
