"""A `keyturn serve` on a database of a faulty cluster, for the fault tests.

`faulty` (one FaultyCluster per test module) and `fault` (a fresh database on it, for
one test) are fixtures; `deployment()` starts the server with a catalog and a few
floating entitlements; `check_nothing_lost()` records a test's tally and asserts that
no acknowledged lease was lost, no seat oversold and no answer INTERNAL.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.store.database import database_dsn

from conftest import server_settings
from support.catalog import put_catalog
from support.faults import FaultTally, FaultyCluster, faulty_cluster, record
from support.health import health_reaches
from support.rpc import PRODUCT_ID, create_sku, failure_of, order
from support.seat_load import SeatLoad, lost_writes, oversold
from support.subprocess_server import ServerProcess, create_token, serving

WAIT_S = 60.0
SKU = "FAULT-5"
SEATS = 5
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# What a seat call may answer while the database fails, besides OK: the database's two
# retryable answers, and the answers about seats that traffic gets anyway.
FAULT_ANSWERS = {
    ("UNAVAILABLE", "DATABASE_UNAVAILABLE"),
    ("UNAVAILABLE", "DATABASE_BUSY"),
    ("RESOURCE_EXHAUSTED", "SEATS_EXHAUSTED"),
    # A renewal committed whose answer was cut off: the device still holds the older token.
    ("FAILED_PRECONDITION", "LEASE_SUPERSEDED"),
}
Metadata = tuple[tuple[str, str], ...]


@pytest.fixture(scope="module")
def faulty() -> Iterator[FaultyCluster]:
    with faulty_cluster("faults") as cluster:
        yield cluster


@dataclass
class Fault:
    """One test's database on the faulty cluster."""

    cluster: FaultyCluster
    url: str

    @property
    def dsn(self) -> str:
        return database_dsn(self.url)


@pytest.fixture
def fault(faulty: FaultyCluster) -> Iterator[Fault]:
    name, url = faulty.new_database()
    try:
        yield Fault(faulty, url)
    finally:
        faulty.start_if_stopped()
        faulty.drop_database(name)


@dataclass
class Deployment:
    server: ServerProcess
    channel: grpc.aio.Channel
    licensing: licensing_pb2_grpc.LicensingServiceStub
    fulfillment: fulfillment_pb2_grpc.FulfillmentServiceStub
    auth: Metadata
    keys: list[str]
    entitlement_ids: list[str]


@contextlib.asynccontextmanager
async def deployment(
    cwd: Path, url: str, entitlements: int = 4, sku: cat.Sku | None = None, **settings: str
) -> AsyncIterator[Deployment]:
    """A server on `url` with `entitlements` floating entitlements of `sku` (default: SKU,
    SEATS seats each)."""
    sku = sku or create_sku(SKU, seats=SEATS)
    env = server_settings(url, KEYTURN_LOG_LEVEL="WARNING", **settings)
    token = await create_token(cwd, env)
    auth = (("authorization", f"Bearer {token}"),)
    async with serving(cwd, env) as server, grpc.aio.insecure_channel(server.address) as channel:
        fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub(channel)
        await put_catalog(catalog_pb2_grpc.CatalogServiceStub(channel), auth, sku)
        made = [
            (
                await fulfillment.FulfillOrder(order(f"setup-{n}", sku.sku_id), metadata=auth)
            ).entitlements[0]
            for n in range(entitlements)
        ]
        try:
            yield Deployment(
                server,
                channel,
                licensing_pb2_grpc.LicensingServiceStub(channel),
                fulfillment,
                auth,
                [e.license_key for e in made],
                [e.entitlement_id for e in made],
            )
        except BaseException:
            print(f"--- keyturn serve stderr:\n{server.stderr_tail(120)}")
            raise


def unexpected(answers: Counter[tuple[str, str]], allowed: set[tuple[str, str]]) -> dict[str, int]:
    return {f"{c}/{r}": n for (c, r), n in answers.items() if c != "OK" and (c, r) not in allowed}


async def check_nothing_lost(
    fault: Fault, load: SeatLoad, name: str, faults: int, server: ServerProcess
) -> None:
    """Record the tally of `load` and assert that the fault cost nothing (the server's
    log is shown when not)."""
    lost = await lost_writes(fault.dsn, load.acked)
    over = await oversold(fault.dsn)
    record(
        name,
        FaultTally(
            faults=faults,
            requests=load.during_fault,
            internal=load.internal,
            lost=len(lost),
            oversold=over,
        ),
    )
    if load.internal or unexpected(load.answers, FAULT_ANSWERS):
        print(f"--- keyturn serve stderr:\n{server.stderr_tail(200)}")
    assert load.internal == 0, load.answers
    assert unexpected(load.answers, FAULT_ANSWERS) == {}
    assert lost == []
    assert over == 0
    assert load.acked, "some lease was acknowledged"


async def answer(
    stub: licensing_pb2_grpc.LicensingServiceStub,
    key: str,
    fingerprint: str,
    deadline: float | None,
) -> tuple[str, str]:
    request = lic.ActivateSeatRequest(
        license_key=key, product_id=PRODUCT_ID, fingerprint=fingerprint
    )
    try:
        await stub.ActivateSeat(request, timeout=deadline)
    except grpc.aio.AioRpcError as error:
        failure = failure_of(error)
        return failure.code.name, failure.reason
    return "OK", ""


class Probe:
    """CheckLicense and ActivateSeat on an entitlement nobody locks, one after another."""

    def __init__(self, stub: licensing_pb2_grpc.LicensingServiceStub, key: str) -> None:
        self._stub = stub
        self._key = key
        self.answers: Counter[tuple[str, str]] = Counter()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            self.answers[await answer(self._stub, self._key, "device-probe", 30.0)] += 1


@dataclass
class Outage:
    load: SeatLoad
    down_s: float  # from the fault to health NOT_SERVING
    up_s: float  # from the end of the fault to health SERVING


async def outage_under_load(
    d: Deployment, fault: contextlib.AbstractAsyncContextManager[None], name: str, failures: int
) -> Outage:
    """Seat load on `d`; once it is answered, `fault` is entered, held until health says
    NOT_SERVING and `failures` calls have failed, then left; the load runs on until it is
    answered again."""
    load = SeatLoad(d.server.address, d.keys, devices=30)
    load.start()
    try:
        await load.oks_beyond(100, WAIT_S)
        load.in_fault = True
        async with fault:
            down_s = await health_reaches(d.channel, NOT_SERVING, WAIT_S)
            await load.failures_beyond(failures, WAIT_S)
        up_s = await health_reaches(d.channel, SERVING, WAIT_S)
        load.in_fault = False
        await load.oks_beyond(200, WAIT_S)
    finally:
        await load.stop()
    print(
        f"{name}: NOT_SERVING after {down_s:.1f} s, SERVING {up_s:.1f} s after it ended; "
        f"slowest failed call {load.slowest_failure_s:.2f} s; answers {dict(load.answers)}"
    )
    return Outage(load, down_s, up_s)


@contextlib.asynccontextmanager
async def stopped(cluster: FaultyCluster, mode: str) -> AsyncIterator[None]:
    """The cluster stopped (`fast`, or `immediate`: a crash) inside, started on exit."""
    await asyncio.to_thread(cluster.stop, mode)
    try:
        yield
    finally:
        await asyncio.to_thread(cluster.start)


@contextlib.asynccontextmanager
async def frozen(cluster: FaultyCluster) -> AsyncIterator[None]:
    """Every process of the cluster stopped with SIGSTOP inside."""
    with cluster.frozen():
        yield
