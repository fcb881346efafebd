"""The metrics endpoint of an in-process server, scraped over real HTTP before and after calls.

The server's metrics live in its own registry, so every number here is this
test's own: counters move by exactly the calls made, and the database gauges
equal what plain SQL counts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from sqlalchemy import text

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.fulfillment.v1 import fulfillment_pb2_grpc
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.context import AppContext
from keyturn.server.metrics_exporter import MetricsExporter

from conftest import Tokens
from support.metrics import ACTIVATE, CHECK, calls, scrape, timed
from support.rpc import PRODUCT_ID, failure_of

Licensing = licensing_pb2_grpc.LicensingServiceStub
WAIT_S = 30.0


@pytest.fixture
async def metrics_address(server: KeyturnServer, app: AppContext) -> AsyncIterator[str]:
    exporter = MetricsExporter("127.0.0.1:0", server.registry, app)
    try:
        yield exporter.address
    finally:
        exporter.close()


async def count_sql(app: AppContext, sql: str) -> int:
    async with app.store.read() as tx:
        return int((await tx.connection.execute(text(sql))).scalar_one())


async def test_counters_and_gauges_move_by_exactly_the_calls_made(
    metrics_address: str, licensing_stub: Licensing, license_of, app: AppContext
) -> None:  # type: ignore[no-untyped-def]
    before = await scrape(metrics_address)
    assert before.content_type.startswith("text/plain")
    assert before.value("keyturn_database_up") == 1
    assert before.value("keyturn_seats_in_use") == 0

    entitlement = await license_of(seats=5)
    for n in range(3):
        await licensing_stub.ActivateSeat(
            lic.ActivateSeatRequest(
                license_key=entitlement.license_key,
                product_id=PRODUCT_ID,
                fingerprint=f"metrics-device-{n}",
                label="laptop",
            ),
            timeout=WAIT_S,
        )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await licensing_stub.CheckLicense(
            lic.CheckLicenseRequest(license_key="KT-not-a-key", product_id=PRODUCT_ID),
            timeout=WAIT_S,
        )
    assert failure_of(refused.value).reason == "INVALID_LICENSE_KEY"

    after = await scrape(metrics_address)
    assert calls(after, ACTIVATE, "OK") - calls(before, ACTIVATE, "OK") == 3
    assert timed(after, ACTIVATE, "OK") - timed(before, ACTIVATE, "OK") == 3
    assert (
        calls(after, CHECK, "UNAUTHENTICATED", "INVALID_LICENSE_KEY")
        - calls(before, CHECK, "UNAUTHENTICATED", "INVALID_LICENSE_KEY")
        == 1
    )
    assert calls(after, CHECK, "OK") == calls(before, CHECK, "OK")
    assert after.value("keyturn_seats_in_use") == 3
    queued = await count_sql(app, "SELECT count(*) FROM outbox WHERE state = 'queued'")
    assert queued >= 1, "the order queued no license-key email to count"
    assert after.value("keyturn_outbox_queued_messages") == queued
    newest = await count_sql(app, "SELECT max(sequence) FROM entitlement_events")
    assert after.value("keyturn_events_last_sequence") == newest
    assert newest > before.value("keyturn_events_last_sequence")


async def test_pool_gauges_follow_connections_held(
    metrics_address: str, server: KeyturnServer, app: AppContext
) -> None:
    size = app.store.engine.sync_engine.pool.size()
    idle = await scrape(metrics_address)
    assert idle.value("keyturn_db_pool_size") == size > 0
    async with app.store.engine.connect(), app.store.engine.connect():
        held = await scrape(metrics_address)
    released = await scrape(metrics_address)
    # The server's readiness probe may hold one connection of its own at any scrape.
    assert held.value("keyturn_db_pool_checked_out") >= 2
    assert released.value("keyturn_db_pool_checked_out") <= 1
    assert released.value("keyturn_db_pool_checked_out") >= 0


async def test_an_open_change_stream_is_counted_with_what_it_delivered(
    metrics_address: str,
    channel: grpc.aio.Channel,
    tokens: Tokens,
    license_of,
    app: AppContext,
) -> None:  # type: ignore[no-untyped-def]
    first = await license_of(seats=1)
    newest = await count_sql(app, "SELECT max(sequence) FROM entitlement_events")
    fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub(channel)
    stream = fulfillment.WatchEntitlementEvents(
        ful.WatchEntitlementEventsRequest(after_sequence=0), metadata=tokens("read"), timeout=WAIT_S
    )
    history = await stream.read()
    assert history.event.entitlement_id == first.entitlement_id
    assert history.event.sequence == newest, "the order wrote more than one event"
    open_now = await scrape(metrics_address)
    assert open_now.value("keyturn_watch_streams_open") == 1
    assert open_now.value("keyturn_watch_delivered_sequence") == history.event.sequence
    # Replayed history is not lag; an event written while the stream follows is.
    assert open_now.value("keyturn_watch_delivery_lag_seconds_count") == 0

    second = await license_of(seats=2)
    live = await stream.read()
    while live.event.entitlement_id != second.entitlement_id:
        live = await stream.read()
    following = await scrape(metrics_address)
    assert following.value("keyturn_watch_delivered_sequence") == live.event.sequence
    assert following.value("keyturn_watch_delivery_lag_seconds_count") >= 1
    assert following.value("keyturn_watch_delivery_lag_seconds_sum") < WAIT_S
    stream.cancel()
    assert await wait_for_value(metrics_address, "keyturn_watch_streams_open", 0) == 0


async def wait_for_value(address: str, name: str, expected: float) -> float:
    """Scrape until `name` reads `expected`, for at most WAIT_S; its last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while True:
        value = (await scrape(address)).value(name)
        if value == expected or loop.time() > deadline:
            return value
