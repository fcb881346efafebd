"""The metrics of `keyturn serve --workers 2`: both workers' numbers on the supervisor's port.

Calls are sent to each worker on purpose (a channel per worker pid), so a
counter that moved by the sum of both shows that both are seen.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import grpc
import pytest

from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.store.database import create_engine

from support.catalog import new_license
from support.metrics import ACTIVATE, CHECK, Scrape, calls, scrape, timed
from support.rpc import PRODUCT_ID, failure_of
from support.subprocess_server import create_token, sqlite_settings, start_server
from support.workers import channel_to, listening_workers

WAIT_S = 30.0


def activation(key: str, fingerprint: str) -> lic.ActivateSeatRequest:
    return lic.ActivateSeatRequest(
        license_key=key, product_id=PRODUCT_ID, fingerprint=fingerprint, label="laptop"
    )


def sql_count(database: Path, sql: str) -> int:
    with sqlite3.connect(database) as connection:
        return int(connection.execute(sql).fetchone()[0])


def pool_size_of_one_worker(database_url: str) -> int:
    engine = create_engine(database_url)
    size = int(engine.sync_engine.pool.size())  # type: ignore[attr-defined]
    engine.sync_engine.dispose()
    return size


async def until(address: str, name: str, expected: float) -> Scrape:
    """Scrapes until `name` reads `expected`, at most WAIT_S; the last scrape."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while True:
        scraped = await scrape(address)
        if scraped.value(name) == expected or loop.time() > deadline:
            return scraped


async def test_counters_and_gauges_of_both_workers_on_the_one_metrics_port(
    tmp_path: Path,
) -> None:
    database = tmp_path / "keyturn.db"
    temp = tmp_path / "tmp"  # where the supervisor makes its metrics folder
    temp.mkdir()
    settings = sqlite_settings(database, KEYTURN_METRICS_LISTEN="127.0.0.1:0", TMPDIR=str(temp))
    token = await create_token(tmp_path, settings)
    auth = (("authorization", f"Bearer {token}"),)
    with start_server(tmp_path, settings, workers=2) as server:
        assert server.metrics_address
        pids = await listening_workers(server)
        first = await channel_to(server.address, pids[0])
        second = await channel_to(server.address, pids[1])
        try:
            before = await scrape(server.metrics_address)
            entitlement = await new_license(
                catalog_pb2_grpc.CatalogServiceStub(first),
                fulfillment_pb2_grpc.FulfillmentServiceStub(first),
                auth,
                auth,
                5,
            )
            key = entitlement.license_key
            on_first = licensing_pb2_grpc.LicensingServiceStub(first)
            on_second = licensing_pb2_grpc.LicensingServiceStub(second)
            await on_first.ActivateSeat(activation(key, "device-1"), timeout=WAIT_S)
            await on_first.ActivateSeat(activation(key, "device-2"), timeout=WAIT_S)
            await on_second.ActivateSeat(activation(key, "device-3"), timeout=WAIT_S)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await on_second.CheckLicense(
                    lic.CheckLicenseRequest(license_key="KT-not-a-key", product_id=PRODUCT_ID),
                    timeout=WAIT_S,
                )
            assert failure_of(refused.value).reason == "INVALID_LICENSE_KEY"
            stream = fulfillment_pb2_grpc.FulfillmentServiceStub(second).WatchEntitlementEvents(
                ful.WatchEntitlementEventsRequest(after_sequence=0), metadata=auth, timeout=WAIT_S
            )
            first_event = await stream.read()
            newest = sql_count(database, "SELECT max(sequence) FROM entitlement_events")
            while first_event.event.sequence < newest:
                first_event = await stream.read()
            after = await until(server.metrics_address, "keyturn_watch_streams_open", 1)

            assert calls(after, ACTIVATE, "OK") - calls(before, ACTIVATE, "OK") == 3
            assert timed(after, ACTIVATE, "OK") - timed(before, ACTIVATE, "OK") == 3
            invalid = ("UNAUTHENTICATED", "INVALID_LICENSE_KEY")
            assert calls(after, CHECK, *invalid) - calls(before, CHECK, *invalid) == 1
            assert after.value("keyturn_seats_in_use") == 3
            queued = sql_count(database, "SELECT count(*) FROM outbox WHERE state = 'queued'")
            assert queued >= 1
            assert after.value("keyturn_outbox_queued_messages") == queued
            assert after.value("keyturn_events_last_sequence") == newest
            assert after.value("keyturn_watch_streams_open") == 1
            assert after.value("keyturn_watch_delivered_sequence") == newest
            assert after.value("keyturn_db_pool_size") == 2 * pool_size_of_one_worker(
                settings["KEYTURN_DATABASE_URL"]
            )
            assert after.value("keyturn_database_up") == 1

            stream.cancel()
            closed = await until(server.metrics_address, "keyturn_watch_streams_open", 0)
            assert closed.value("keyturn_watch_streams_open") == 0
        finally:
            await first.close()
            await second.close()
        [folder] = temp.glob("keyturn-metrics-*")
        writers = {int(f.stem.rpartition("_")[2]) for f in folder.glob("counter_*.db")}
        assert writers == set(pids.values()), "each worker writes its own counters there"
        assert server.stop() == 0
    # The supervisor removed the workers' shared metrics folder on its way out.
    assert not folder.exists()
