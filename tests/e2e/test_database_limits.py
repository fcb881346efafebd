"""A slow, conflicting, frozen or skewed PostgreSQL: bounded waits, retried conflicts, one clock.

Faults are injected into a database of a cluster of the test module's own
(support/faults.py): triggers that raise a serialization failure or deadlock a set
number of times or sleep past the statement timeout, every process of the cluster
stopped with SIGSTOP, and a replica whose clock runs minutes ahead (libfaketime).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import grpc
import pytest

from keyturn.client import AsyncLease, AsyncLicensingClient, KeyturnError, RetryPolicy
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc

from conftest import server_settings
from support.catalog import put_catalog
from support.fault_deployment import (
    SERVING,
    SKU,
    WAIT_S,
    Fault,
    check_nothing_lost,
    deployment,
    fault,
    faulty,
    frozen,
    outage_under_load,
)
from support.faults import FaultTally, record
from support.health import health_reaches
from support.rpc import PRODUCT_ID, create_sku, failure_of, order
from support.seat_load import oversold
from support.subprocess_server import create_token, serving, sqlite_settings

__all__ = ["fault", "faulty"]  # fixtures

FAULT_TRIGGER = """
CREATE SEQUENCE fault_seq;
CREATE TABLE fault_plan (failures integer NOT NULL, code text NOT NULL, sleep_s float8 NOT NULL);
CREATE FUNCTION fault_inject() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  plan fault_plan;
BEGIN
  SELECT * INTO plan FROM fault_plan LIMIT 1;
  IF FOUND AND nextval('fault_seq') <= plan.failures THEN
    IF plan.sleep_s > 0 THEN
      PERFORM pg_sleep(plan.sleep_s);
    ELSE
      RAISE EXCEPTION 'injected by the test' USING ERRCODE = plan.code;
    END IF;
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER fault_inject BEFORE INSERT ON activations
  FOR EACH ROW EXECUTE FUNCTION fault_inject();
CREATE TRIGGER fault_inject BEFORE INSERT ON orders
  FOR EACH ROW EXECUTE FUNCTION fault_inject();
"""


@contextlib.asynccontextmanager
async def injector(dsn: str) -> AsyncIterator[Injector]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(FAULT_TRIGGER)
        yield Injector(conn)
    finally:
        await conn.close()


class Injector:
    """The next `failures` inserts into activations or orders fail with `code`, or sleep."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def plan(self, failures: int, code: str = "40001", sleep_s: float = 0.0) -> None:
        await self._conn.execute("DELETE FROM fault_plan")
        await self._conn.execute("SELECT setval('fault_seq', 1, false)")
        await self._conn.execute(
            "INSERT INTO fault_plan VALUES ($1, $2, $3)", failures, code, sleep_s
        )

    async def fired(self) -> int:
        """Inserts the trigger has seen since the plan (failed or not)."""
        value = await self._conn.fetchval(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM fault_seq"
        )
        return int(value)

    async def rows(self, table: str) -> int:
        return int(await self._conn.fetchval(f"SELECT count(*) FROM {table}"))


def activation(key: str, fingerprint: str) -> lic.ActivateSeatRequest:
    return lic.ActivateSeatRequest(license_key=key, product_id=PRODUCT_ID, fingerprint=fingerprint)


async def outcome(call: object) -> tuple[str, str, dict[str, str]]:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        failure = failure_of(error)
        return failure.code.name, failure.reason, failure.metadata
    return "OK", "", {}


@pytest.mark.parametrize("code", ["40001", "40P01"])
async def test_conflicts_are_retried_inside_the_server_then_answered_aborted(
    fault: Fault, tmp_path: Path, code: str
) -> None:
    """A serialization failure (40001) or deadlock (40P01) three times: the call succeeds
    on the server's fourth attempt. Every time: ABORTED / TRANSACTION_CONFLICT after four
    attempts, nothing written."""
    async with deployment(tmp_path, fault.url, entitlements=1) as d, injector(fault.dsn) as inject:
        key = d.keys[0]
        await inject.plan(failures=3, code=code)
        assert await outcome(d.licensing.ActivateSeat(activation(key, "device-retried"))) == (
            "OK",
            "",
            {},
        )
        assert await inject.fired() == 4

        await inject.plan(failures=1000, code=code)
        before = await inject.rows("activations")
        refused = await outcome(d.licensing.ActivateSeat(activation(key, "device-refused")))
        assert refused == ("ABORTED", "TRANSACTION_CONFLICT", {"attempts": "4"})
        assert await inject.rows("activations") == before
        assert await inject.fired() == 4

        await inject.plan(failures=1000, code=code)
        orders_before = await inject.rows("orders")
        ordered = await outcome(
            d.fulfillment.FulfillOrder(order("o-conflict", SKU), metadata=d.auth)
        )
        assert ordered == ("ABORTED", "TRANSACTION_CONFLICT", {"attempts": "4"})
        assert await inject.rows("orders") == orders_before

        await inject.plan(failures=0)
        assert (await outcome(d.licensing.ActivateSeat(activation(key, "device-refused"))))[
            0
        ] == "OK"
    # Conflicts raised: 3, then 4 and 4 (every attempt of the two refused calls).
    record(f"postgres-conflict-{code}", FaultTally(faults=3 + 4 + 4, requests=4))


async def test_a_statement_past_its_timeout_and_a_full_pool_answer_busy_at_once(
    fault: Fault, tmp_path: Path
) -> None:
    """Statement timeout 3 s: an insert that sleeps 5 s is cancelled by PostgreSQL and
    answered DATABASE_BUSY. Pool of 2 with a 1 s pool timeout: two calls that each hold a
    connection for 2 s make a third wait 1 s and be answered DATABASE_BUSY."""
    async with (
        deployment(
            tmp_path,
            fault.url,
            entitlements=3,
            KEYTURN_DATABASE_STATEMENT_TIMEOUT_SECONDS="3",
            KEYTURN_DATABASE_POOL_SIZE="2",
            KEYTURN_DATABASE_POOL_TIMEOUT_SECONDS="1",
        ) as d,
        injector(fault.dsn) as inject,
    ):
        before = await inject.rows("activations")
        await inject.plan(failures=1, sleep_s=5.0)
        slow = await outcome(
            d.licensing.ActivateSeat(activation(d.keys[0], "device-slow"), timeout=20)
        )
        assert slow == ("UNAVAILABLE", "DATABASE_BUSY", {"limit": "statement_timeout"})
        assert await inject.rows("activations") == before

        await inject.plan(failures=2, sleep_s=2.0)  # under the statement timeout
        holding = [
            asyncio.create_task(
                outcome(d.licensing.ActivateSeat(activation(key, "device-holding"), timeout=20))
            )
            for key in d.keys[:2]
        ]
        while await inject.fired() < 2:  # noqa: ASYNC110 (the trigger cannot notify)
            await asyncio.sleep(0.02)
        squeezed = await outcome(
            d.licensing.ActivateSeat(activation(d.keys[2], "device-squeezed"), timeout=20)
        )
        held = await asyncio.gather(*holding)
    assert squeezed == ("UNAVAILABLE", "DATABASE_BUSY", {"limit": "pool_timeout"})
    assert [h[0] for h in held] == ["OK", "OK"]
    record("postgres-statement-timeout-and-full-pool", FaultTally(faults=3, requests=4))


async def test_a_frozen_database_fails_calls_in_bounded_time_and_health_follows_both_ways(
    fault: Fault, tmp_path: Path
) -> None:
    """Every process of the cluster stopped (SIGSTOP): calls are answered UNAVAILABLE
    within the statement timeout, not left to their deadline; health says NOT_SERVING
    within seconds, and SERVING again within seconds of the thaw."""
    async with deployment(tmp_path, fault.url, KEYTURN_DATABASE_STATEMENT_TIMEOUT_SECONDS="2") as d:
        outage = await outage_under_load(d, frozen(fault.cluster), "frozen database", 30)
    load = outage.load
    assert ("DEADLINE_EXCEEDED", "") not in load.answers
    await check_nothing_lost(fault, load, "postgres-frozen", 1, d.server)


async def test_heartbeats_keep_every_lease_through_a_stall_and_a_restart(
    fault: Fault, tmp_path: Path
) -> None:
    """100 devices heartbeating every second through the shipped client, with a 5 s
    deadline per renewal: the database stalls 12 s, then restarts. No lease is lost."""
    devices = 100
    sku = create_sku("HEARTBEAT-100", seats=devices)
    async with deployment(tmp_path, fault.url, entitlements=1, sku=sku) as d:
        lost: list[KeyturnError] = []
        renewed: Counter[str] = Counter()
        client = AsyncLicensingClient(
            d.server.address, PRODUCT_ID, timeout=5.0, retry=RetryPolicy(attempts=3)
        )
        try:
            leases: list[AsyncLease] = await asyncio.gather(
                *(
                    client.activate(
                        d.keys[0],
                        fingerprint=f"heartbeat-device-{n:04d}",
                        heartbeat_interval=1.0,
                        on_lost=lambda _lease, error: lost.append(error),
                        on_renewed=lambda lease: renewed.update([lease.activation_id]),
                    )
                    for n in range(devices)
                )
            )
            await every_lease_renews(renewed, leases)
            with fault.cluster.frozen():
                await asyncio.sleep(12)  # the fault's length, as the issue sets it
            await asyncio.to_thread(fault.cluster.stop, "fast")
            await asyncio.to_thread(fault.cluster.start)
            await health_reaches(d.channel, SERVING, WAIT_S)
            await every_lease_renews(renewed, leases)
            held = sum(1 for lease in leases if lease.lost is None)
        finally:
            await client.close()
    over = await oversold(fault.dsn)
    record(
        "postgres-stall-and-restart-heartbeats",
        FaultTally(faults=2, requests=sum(renewed.values()), leases_lost=len(lost), oversold=over),
    )
    assert lost == []
    assert held == devices
    assert over == 0


async def every_lease_renews(renewed: Counter[str], leases: list[AsyncLease]) -> None:
    """Until each lease has been renewed once more than now (bounded)."""
    wanted = {lease.activation_id: renewed[lease.activation_id] + 1 for lease in leases}
    async with asyncio.timeout(WAIT_S):
        while any(renewed[a] < n for a, n in wanted.items()):  # noqa: ASYNC110 (callbacks count)
            await asyncio.sleep(0.1)


FAKETIME_LIBRARY = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ ")


def clock_ahead(seconds: int) -> dict[str, str]:
    """The environment that runs a process with its clock `seconds` ahead (monotonic
    clocks untouched, as a host whose wall clock is off)."""
    assert FAKETIME_LIBRARY.is_file(), "scripts/setup.sh --for-tests installs faketime"
    return {
        "LD_PRELOAD": str(FAKETIME_LIBRARY),
        "FAKETIME": f"+{seconds}s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


async def test_replicas_whose_clocks_differ_by_minutes_never_oversell(
    fault: Fault, tmp_path: Path
) -> None:
    """10 seats with 60 s leases. Replica A's clock is right, replica B's is 120 s ahead
    (libfaketime): by its own clock every lease A granted has expired, by the database's
    none has. 10 devices take the seats through A, then 20 others try through B and are
    all refused; B's lapse sweep records no lapse; the seats in use stay 10."""
    seats = 10
    env = server_settings(fault.url, KEYTURN_LOG_LEVEL="INFO")
    token = await create_token(tmp_path, env)
    auth = (("authorization", f"Bearer {token}"),)
    skewed = {
        **env,
        **clock_ahead(120),
        "KEYTURN_LAPSE_SWEEP_SECONDS": "0.5",
        "KEYTURN_LOG_LEVEL": "DEBUG",
    }
    async with serving(tmp_path, env) as right, serving(tmp_path, skewed) as ahead:
        async with (
            grpc.aio.insecure_channel(right.address) as a,
            grpc.aio.insecure_channel(ahead.address) as b,
        ):
            await put_catalog(
                catalog_pb2_grpc.CatalogServiceStub(a),
                auth,
                create_sku("SKEW-10", seats=seats, lease_seconds=60),
            )
            made = await fulfillment_pb2_grpc.FulfillmentServiceStub(a).FulfillOrder(
                order("o-skew", "SKEW-10"), metadata=auth
            )
            key = made.entitlements[0].license_key
            on_a = licensing_pb2_grpc.LicensingServiceStub(a)
            on_b = licensing_pb2_grpc.LicensingServiceStub(b)
            granted = await asyncio.gather(
                *(
                    outcome(on_a.ActivateSeat(activation(key, f"device-a-{n:04d}")))
                    for n in range(seats)
                )
            )
            refused = await asyncio.gather(
                *(
                    outcome(on_b.ActivateSeat(activation(key, f"device-b-{n:04d}")))
                    for n in range(20)
                )
            )
            checked = await on_b.CheckLicense(
                lic.CheckLicenseRequest(license_key=key, product_id=PRODUCT_ID)
            )
            swept = sweeps(ahead.stderr_lines)
            await ahead.await_stderr(lambda lines: sweeps(lines) >= swept + 2, WAIT_S)
        ahead_lines = ahead.stderr_lines
    logged = [LOG_TIME.match(line) for line in ahead_lines]
    first = next(m for m in logged if m is not None)
    skew = (
        datetime.strptime(first[1], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC) - datetime.now(UTC)
    ).total_seconds()
    over = await oversold(fault.dsn)
    lapses = await lapse_events(fault.dsn)
    record("postgres-clock-skew-120s", FaultTally(faults=1, requests=31, oversold=over))
    assert skew > 60, f"replica B's clock is ahead (its log says {first[1]})"
    assert [g[0] for g in granted] == ["OK"] * seats
    assert {r[:2] for r in refused} == {("RESOURCE_EXHAUSTED", "SEATS_EXHAUSTED")}
    assert checked.entitlement.seats_in_use == seats
    assert lapses == 0
    assert over == 0


def sweeps(lines: list[str]) -> int:
    """Lapse sweeps that found nothing to record, by the server's DEBUG log."""
    return sum("lapse sweep: no lapsed lease" in line for line in lines)


async def lapse_events(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM entitlement_events WHERE type = 'lease_lapsed'"
            )
        )
    finally:
        await conn.close()


async def test_a_sqlite_file_held_by_another_writer_answers_busy_after_the_timeout(
    tmp_path: Path,
) -> None:
    """SQLite: another process holds the write lock (BEGIN IMMEDIATE) past the statement
    timeout: a seat claim is answered UNAVAILABLE / DATABASE_BUSY, nothing is written, and
    once the lock is let go the same claim succeeds."""
    database = tmp_path / "keyturn.db"
    env = sqlite_settings(database, KEYTURN_DATABASE_STATEMENT_TIMEOUT_SECONDS="1")
    token = await create_token(tmp_path, env)
    auth = (("authorization", f"Bearer {token}"),)
    async with serving(tmp_path, env) as server, grpc.aio.insecure_channel(server.address) as ch:
        await put_catalog(catalog_pb2_grpc.CatalogServiceStub(ch), auth, create_sku(SKU, seats=2))
        made = await fulfillment_pb2_grpc.FulfillmentServiceStub(ch).FulfillOrder(
            order("o-sqlite", SKU), metadata=auth
        )
        key = made.entitlements[0].license_key
        licensing = licensing_pb2_grpc.LicensingServiceStub(ch)
        holder = await asyncio.to_thread(
            sqlite3.connect, database, isolation_level=None, check_same_thread=False
        )
        try:
            await asyncio.to_thread(holder.execute, "BEGIN IMMEDIATE")
            busy = await outcome(
                licensing.ActivateSeat(activation(key, "device-waits"), timeout=20)
            )
            await asyncio.to_thread(holder.execute, "ROLLBACK")
            rows = await asyncio.to_thread(
                lambda: holder.execute("SELECT count(*) FROM activations").fetchone()[0]
            )
        finally:
            await asyncio.to_thread(holder.close)
        after = await outcome(licensing.ActivateSeat(activation(key, "device-waits"), timeout=20))
    record("sqlite-write-lock-held", FaultTally(faults=1, requests=1))
    assert busy == ("UNAVAILABLE", "DATABASE_BUSY", {"limit": "lock_timeout"})
    assert rows == 0
    assert after[0] == "OK"
