"""No row is shared by every seat claim: a transaction held open on one entitlement,
after it wrote its event as every seat transaction does, delays no other entitlement.

PostgreSQL only: SQLite has one writer at a time by design.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from sqlalchemy import text

from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.tokens import create_token
from keyturn.server.app.views import new_event
from keyturn.server.bootstrap import build_context
from keyturn.server.domain.events import EventType

from conftest import settings_for
from support.catalog import new_license
from support.rpc import PRODUCT_ID

WAIT_S = 30.0  # only so that a regression fails instead of hanging


@pytest.fixture
async def served(postgres_url: str) -> AsyncIterator[tuple[str, grpc.aio.Channel]]:
    ctx = await build_context(settings_for(postgres_url))
    server = KeyturnServer(ctx, "127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield postgres_url, channel
    finally:
        await server.stop(grace=1.0)


def activation(key: str, fingerprint: str) -> lic.ActivateSeatRequest:
    return lic.ActivateSeatRequest(
        license_key=key, product_id=PRODUCT_ID, fingerprint=fingerprint, label="laptop"
    )


async def test_a_held_transaction_on_one_entitlement_delays_no_other(
    served: tuple[str, grpc.aio.Channel],
) -> None:
    url, channel = served
    ctx = await build_context(settings_for(url))
    try:
        _, secret = await create_token(ctx, {"catalog", "fulfill"}, "shared row test")
    finally:
        await ctx.store.close()
    auth = (("authorization", f"Bearer {secret}"),)
    catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
    fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub(channel)
    held = await new_license(catalog, fulfillment, auth, auth, seats=5)
    free = await new_license(catalog, fulfillment, auth, auth, seats=6)
    licensing = licensing_pb2_grpc.LicensingServiceStub(channel)

    # What a seat transaction on `held` does before its commit, through the store's own
    # code: lock the entitlement and write its event. Held open, as a stalled writer would.
    writer = await build_context(settings_for(url))
    flushed, finish = asyncio.Event(), asyncio.Event()

    async def stalled_writer() -> None:
        async with writer.store.write() as tx:
            entitlement = await tx.entitlements.get(held.entitlement_id, lock=True)
            assert entitlement is not None
            await tx.events.append(
                new_event(
                    EventType.SEAT_ACTIVATED, entitlement, writer.clock.now(), 0, actor="system"
                )
            )
            await tx.events.flush()
            flushed.set()
            await finish.wait()

    async def activate_held() -> lic.ActivateSeatResponse:
        return await licensing.ActivateSeat(activation(held.license_key, "device-held"))

    stalled = asyncio.create_task(stalled_writer())
    try:
        await asyncio.wait_for(flushed.wait(), WAIT_S)
        waiting = asyncio.create_task(activate_held())
        # Activations, renewals and releases of the other entitlement complete meanwhile.
        for i in range(5):
            other = await asyncio.wait_for(
                licensing.ActivateSeat(activation(free.license_key, f"device-{i:04d}")), WAIT_S
            )
            assert other.entitlement.seats_in_use == i + 1
        renewed = await asyncio.wait_for(
            licensing.RenewLease(lic.RenewLeaseRequest(lease_token=other.lease.token)), WAIT_S
        )
        assert renewed.entitlement.seats_in_use == 5
        await asyncio.wait_for(
            licensing.ReleaseSeat(lic.ReleaseSeatRequest(lease_token=renewed.lease.token)),
            WAIT_S,
        )
        assert not waiting.done(), "the activation of the held entitlement waits for its lock"
    finally:
        finish.set()
        await stalled
        await writer.store.close()
    done = await asyncio.wait_for(waiting, WAIT_S)
    assert done.entitlement.seats_in_use == 1


async def test_a_starting_server_numbers_events_left_unnumbered_without_writing_first(
    postgres_url: str,
) -> None:
    """Events a dead process committed but never numbered are numbered by the next server
    as soon as it starts, not only once it writes an event of its own."""
    ctx = await build_context(settings_for(postgres_url))
    try:
        _, secret = await create_token(ctx, {"catalog", "fulfill", "read"}, "test")
        auth = (("authorization", f"Bearer {secret}"),)
        server = KeyturnServer(ctx, "127.0.0.1:0")
        await server.start()
        async with grpc.aio.insecure_channel(server.address) as channel:
            made = await new_license(
                catalog_pb2_grpc.CatalogServiceStub(channel),
                fulfillment_pb2_grpc.FulfillmentServiceStub(channel),
                auth,
                auth,
                seats=1,
            )
        await server.stop(grace=1.0)
        async with ctx.store.write() as tx:  # as a writer that died before numbering left it
            await tx.connection.execute(text("UPDATE entitlement_events SET sequence = NULL"))
    finally:
        await ctx.store.close()
    later = await build_context(settings_for(postgres_url))
    again = KeyturnServer(later, "127.0.0.1:0")
    await again.start()
    try:
        async with grpc.aio.insecure_channel(again.address) as channel:
            fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub(channel)
            request = ful.ListEntitlementEventsRequest(entitlement_id=made.entitlement_id)
            async with asyncio.timeout(WAIT_S):
                while not (await fulfillment.ListEntitlementEvents(request, metadata=auth)).events:  # noqa: ASYNC110 (numbering has no notification)
                    await asyncio.sleep(0.1)
    finally:
        await again.stop(grace=1.0)
