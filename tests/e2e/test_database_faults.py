"""PostgreSQL failing under a running `keyturn serve`: nothing lost, never INTERNAL, recovery
by itself.

Each test runs the real server on a database of a cluster of its own (support/faults.py;
never the shared server), drives seat traffic at it (support/seat_load.py), injects one
kind of fault, and then checks every acknowledged lease against the database, the seat
counts, and every answer's code and reason. Each records its tally (faults injected,
requests during them, INTERNAL answers, acknowledged writes lost, seats oversold), summed
up at the end of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2

from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
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
    cwd: Path, url: str, entitlements: int = 4, **settings: str
) -> AsyncIterator[Deployment]:
    """A server on `url` with `entitlements` floating entitlements of SEATS seats each."""
    env = server_settings(url, KEYTURN_LOG_LEVEL="WARNING", **settings)
    token = await create_token(cwd, env)
    auth = (("authorization", f"Bearer {token}"),)
    async with serving(cwd, env) as server, grpc.aio.insecure_channel(server.address) as channel:
        fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub(channel)
        await put_catalog(
            catalog_pb2_grpc.CatalogServiceStub(channel), auth, create_sku(SKU, seats=SEATS)
        )
        made = [
            (await fulfillment.FulfillOrder(order(f"setup-{n}", SKU), metadata=auth)).entitlements[
                0
            ]
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


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_a_database_stopped_or_crashed_under_load_fails_fast_and_recovers_by_itself(
    fault: Fault, tmp_path: Path, mode: str
) -> None:
    async with deployment(tmp_path, fault.url) as d:
        load = SeatLoad(d.server.address, d.keys, devices=30)
        load.start()
        try:
            await load.oks_beyond(100, WAIT_S)
            load.in_fault = True
            await asyncio.to_thread(fault.cluster.stop, mode)
            down_s = await health_reaches(d.channel, NOT_SERVING, WAIT_S)
            await load.failures_beyond(100, WAIT_S)
            await asyncio.to_thread(fault.cluster.start)
            up_s = await health_reaches(d.channel, SERVING, WAIT_S)
            load.in_fault = False
            await load.oks_beyond(200, WAIT_S)
        finally:
            await load.stop()
    print(
        f"database {mode} stop: NOT_SERVING after {down_s:.1f} s, SERVING {up_s:.1f} s after "
        f"the start; slowest failed call {load.slowest_failure_s:.2f} s; answers {dict(load.answers)}"
    )
    assert ("UNAVAILABLE", "DATABASE_UNAVAILABLE") in load.answers
    await check_nothing_lost(fault, load, f"postgres-{mode}-stop", 1, d.server)


async def test_connections_killed_mid_transaction_are_never_half_applied(
    fault: Fault, tmp_path: Path
) -> None:
    """pg_terminate_backend of every server connection, again and again, under seat load
    and orders: each order is whole or absent, each acknowledged lease is held."""
    rounds, terminated = 15, 0
    orders = OrderLoad()
    async with deployment(tmp_path, fault.url) as d:
        load = SeatLoad(d.server.address, d.keys, devices=30)
        load.start()
        ordering = asyncio.create_task(orders.run(d.fulfillment, d.auth))
        killer = await asyncpg.connect(fault.dsn)
        try:
            await load.oks_beyond(50, WAIT_S)
            load.in_fault = True
            for _ in range(rounds):
                terminated += await killer.fetchval(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM"
                    " pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid() AND backend_type = 'client backend') AS t"
                )
                await load.oks_beyond(20, WAIT_S)
            load.in_fault = False
            await load.oks_beyond(50, WAIT_S)
        finally:
            await killer.close()
            orders.stop()
            await ordering
            await load.stop()
        for order_id in orders.acked:
            got = await d.fulfillment.GetOrder(
                ful.GetOrderRequest(source="faults", order_id=order_id), metadata=d.auth
            )
            assert len(got.order.results) == 1, order_id
    half_written = await orders_without_entitlements(fault.dsn)
    print(
        f"terminated {terminated} connections in {rounds} rounds; "
        f"{len(orders.acked)} orders acknowledged; answers {dict(load.answers)} {dict(orders.answers)}"
    )
    assert terminated > 0
    assert half_written == 0
    if orders.internal:
        print(f"--- keyturn serve stderr:\n{d.server.stderr_tail(200)}")
    assert orders.internal == 0, orders.answers
    assert orders.acked
    await check_nothing_lost(fault, load, "postgres-terminate-backend", rounds, d.server)


class OrderLoad:
    """Orders of one line each, one after another, until stopped; the acknowledged ids."""

    def __init__(self) -> None:
        self.acked: list[str] = []
        self.answers: Counter[tuple[str, str]] = Counter()
        self._stop = asyncio.Event()

    @property
    def internal(self) -> int:
        return sum(n for (code, _), n in self.answers.items() if code in {"INTERNAL", "UNKNOWN"})

    def stop(self) -> None:
        self._stop.set()

    async def run(self, stub: fulfillment_pb2_grpc.FulfillmentServiceStub, auth: Metadata) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            order_id = f"load-{n}"
            request = order(order_id, SKU, source="faults")
            while not self._stop.is_set():  # the same order again until it is answered
                try:
                    await stub.FulfillOrder(request, metadata=auth, timeout=30)
                except grpc.aio.AioRpcError as error:
                    failure = failure_of(error)
                    self.answers[(failure.code.name, failure.reason)] += 1
                    await asyncio.sleep(0.02)
                    continue
                self.answers[("OK", "")] += 1
                self.acked.append(order_id)
                break


async def orders_without_entitlements(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM orders AS o WHERE NOT EXISTS (SELECT 1 FROM entitlements"
                " AS e WHERE e.order_source = o.source AND e.order_id = o.order_id)"
            )
        )
    finally:
        await conn.close()


async def test_calls_on_a_locked_entitlement_end_at_their_deadline_and_leave_nothing_locked(
    fault: Fault, tmp_path: Path
) -> None:
    """Another session holds an entitlement's row lock: 1,000 calls with a short deadline
    end DEADLINE_EXCEEDED, 25 without one end DATABASE_BUSY at the lock timeout, calls on
    other entitlements are served throughout, and afterwards no statement of the server
    still waits and the pool serves the entitlement at once."""
    async with deployment(tmp_path, fault.url, entitlements=2) as d:
        locked_key, free_key = d.keys
        holder = await asyncpg.connect(fault.dsn)
        probe = Probe(d.licensing, free_key)
        probing = asyncio.create_task(probe.run())
        answers: Counter[tuple[str, str]] = Counter()
        try:
            lock = holder.transaction()
            await lock.start()
            await holder.execute(
                "SELECT 1 FROM entitlements WHERE entitlement_id = $1 FOR UPDATE",
                d.entitlement_ids[0],
            )
            gate = asyncio.Semaphore(50)

            async def short(n: int) -> None:
                async with gate:
                    answers[
                        await answer(d.licensing, locked_key, f"device-short-{n:04d}", 0.3)
                    ] += 1

            await asyncio.gather(*(short(n) for n in range(1000)))
            patient = await asyncio.gather(
                *(
                    answer(d.licensing, locked_key, f"device-patient-{n:04d}", None)
                    for n in range(25)
                )
            )
            waiting = await statements_waiting(holder)
            await lock.rollback()
            after = await answer(d.licensing, locked_key, "device-after", 10.0)
        finally:
            probe.stop()
            await probing
            await holder.close()
    print(f"locked entitlement: {dict(answers)}; patient {Counter(patient)}; probe {probe.answers}")
    record(
        "postgres-row-lock-held",
        FaultTally(
            faults=1,
            requests=sum(answers.values()) + len(patient) + sum(probe.answers.values()),
            internal=sum(n for (c, _), n in answers.items() if c in {"INTERNAL", "UNKNOWN"}),
        ),
    )
    assert answers == Counter({("DEADLINE_EXCEEDED", ""): 1000})
    assert set(patient) == {("UNAVAILABLE", "DATABASE_BUSY")}
    assert waiting == 0, "the server cancelled every statement its callers gave up on"
    assert after == ("OK", "")
    assert set(probe.answers) == {("OK", "")}, probe.answers
    assert probe.answers[("OK", "")] > 0


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


async def statements_waiting(conn: asyncpg.Connection, within_s: float = 10.0) -> int:
    """Backends of this database still waiting on a lock, once they have had `within_s` to
    be cancelled (0 as soon as none is)."""
    sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
    )
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within_s):
            while int(await conn.fetchval(sql)):  # noqa: ASYNC110 (pg_stat_activity cannot notify)
                await asyncio.sleep(0.1)
    return int(await conn.fetchval(sql))
