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
from pathlib import Path

import asyncpg
import grpc
import pytest

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.fulfillment.v1 import fulfillment_pb2_grpc

from support.fault_deployment import (
    SKU,
    WAIT_S,
    Fault,
    Metadata,
    Probe,
    answer,
    check_nothing_lost,
    deployment,
    fault,
    faulty,
    outage_under_load,
    stopped,
)
from support.faults import FaultTally, record
from support.rpc import failure_of, order
from support.seat_load import SeatLoad

__all__ = ["fault", "faulty"]  # fixtures


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_a_database_stopped_or_crashed_under_load_fails_fast_and_recovers_by_itself(
    fault: Fault, tmp_path: Path, mode: str
) -> None:
    async with deployment(tmp_path, fault.url) as d:
        outage = await outage_under_load(
            d, stopped(fault.cluster, mode), f"database {mode} stop", failures=100
        )
    load = outage.load
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
