"""FulfillmentService through a real server: create entitlements from orders, exactly once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import grpc
import pytest
from sqlalchemy import text

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.context import AppContext

from conftest import Tokens
from support.catalog import put_catalog
from support.rpc import create_sku, failure_of, order

Fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub


@pytest.fixture
async def skus(catalog_stub: catalog_pb2_grpc.CatalogServiceStub, tokens: Tokens) -> None:
    await put_catalog(
        catalog_stub,
        tokens("catalog"),
        create_sku("SUB-1Y", seats=3, term="P1Y"),
        create_sku("PERPETUAL", seats=1, term=""),
        create_sku("TRIAL-14D", seats=1, term="P14D", trial=True),
    )


async def count(app: AppContext, table: str) -> int:
    async with app.store.read() as tx:
        return int(
            (await tx.connection.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
        )


@pytest.mark.usefixtures("skus")
async def test_subscription_perpetual_and_trial(
    fulfillment_stub: Fulfillment, tokens: Tokens
) -> None:
    before = datetime.now(UTC)
    sub = (
        await fulfillment_stub.FulfillOrder(
            order("o-1", "SUB-1Y", quantity=2), metadata=tokens("fulfill")
        )
    ).entitlements[0]
    assert sub.seats == 6
    assert sub.status == ful.ENTITLEMENT_STATUS_ACTIVE
    end = sub.end_time.ToDatetime(tzinfo=UTC)
    assert end.year == sub.start_time.ToDatetime(tzinfo=UTC).year + 1
    assert sub.start_time.ToDatetime(tzinfo=UTC) >= before.replace(microsecond=0)
    assert len(sub.license_key.split("-")) == 6

    perpetual = (
        await fulfillment_stub.FulfillOrder(order("o-2", "PERPETUAL"), metadata=tokens("fulfill"))
    ).entitlements[0]
    assert perpetual.perpetual
    assert not perpetual.HasField("end_time")

    trial = (
        await fulfillment_stub.FulfillOrder(order("o-3", "TRIAL-14D"), metadata=tokens("fulfill"))
    ).entitlements[0]
    assert trial.trial
    assert trial.status == ful.ENTITLEMENT_STATUS_TRIAL
    days = (trial.end_time.ToDatetime() - trial.start_time.ToDatetime()).days
    assert days == 14

    fetched = await fulfillment_stub.GetEntitlement(
        ful.GetEntitlementRequest(entitlement_id=sub.entitlement_id), metadata=tokens("read")
    )
    assert fetched.entitlement.license_key == ""  # reads never reveal the key
    assert fetched.entitlement.seats == 6
    assert fetched.entitlement.customer.customer_id == "cust-1"


@pytest.mark.usefixtures("skus")
async def test_replay_returns_the_stored_result(
    fulfillment_stub: Fulfillment, tokens: Tokens, app: AppContext
) -> None:
    first = await fulfillment_stub.FulfillOrder(
        order("o-1", "SUB-1Y", reference="stripe:sub_1"), metadata=tokens("fulfill")
    )
    again = await fulfillment_stub.FulfillOrder(
        order("o-1", "SUB-1Y", reference="stripe:sub_1"), metadata=tokens("fulfill")
    )
    assert not first.replayed
    assert again.replayed
    assert again.entitlements[0].entitlement_id == first.entitlements[0].entitlement_id
    assert again.entitlements[0].license_key == first.entitlements[0].license_key
    assert list(again.entitlements[0].external_references) == ["stripe:sub_1"]
    assert await count(app, "entitlements") == 1
    stored = await fulfillment_stub.GetOrder(
        ful.GetOrderRequest(source="test", order_id="o-1"), metadata=tokens("read")
    )
    assert stored.order.results[0].entitlement_id == first.entitlements[0].entitlement_id
    assert list(stored.order.results[0].operations) == ["create"]


@pytest.mark.usefixtures("skus")
async def test_same_key_different_content_conflicts(
    fulfillment_stub: Fulfillment, tokens: Tokens, app: AppContext
) -> None:
    await fulfillment_stub.FulfillOrder(order("o-1", "SUB-1Y"), metadata=tokens("fulfill"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fulfillment_stub.FulfillOrder(
            order("o-1", "SUB-1Y", quantity=5), metadata=tokens("fulfill")
        )
    failure = failure_of(caught.value)
    assert (failure.code, failure.reason) == (grpc.StatusCode.ALREADY_EXISTS, "ORDER_CONFLICT")
    assert failure.metadata == {"source": "test", "order_id": "o-1"}
    assert await count(app, "entitlements") == 1


@pytest.mark.usefixtures("skus")
async def test_twenty_concurrent_replays_create_one_entitlement(
    fulfillment_stub: Fulfillment, tokens: Tokens, app: AppContext
) -> None:
    request = order("o-race", "SUB-1Y", reference="stripe:sub_race")
    results = await asyncio.gather(
        *(fulfillment_stub.FulfillOrder(request, metadata=tokens("fulfill")) for _ in range(20))
    )
    ids = {r.entitlements[0].entitlement_id for r in results}
    keys = {r.entitlements[0].license_key for r in results}
    assert len(ids) == 1
    assert len(keys) == 1
    assert sum(not r.replayed for r in results) == 1
    assert await count(app, "entitlements") == 1
    assert await count(app, "orders") == 1
    assert await count(app, "entitlement_events") == 1


@pytest.mark.usefixtures("skus")
async def test_twenty_orders_racing_for_one_new_reference_name_it_when_refused(
    fulfillment_stub: Fulfillment, tokens: Tokens, app: AppContext
) -> None:
    """Different orders, one new external reference: one order gets it; each other one
    is told which reference on which line, also when it lost the race at the unique key
    (on PostgreSQL) rather than at the check before it."""
    requests = [order(f"o-ref-{i}", "SUB-1Y", reference="stripe:sub_contested") for i in range(20)]
    answers = await asyncio.gather(
        *(fulfillment_stub.FulfillOrder(r, metadata=tokens("fulfill")) for r in requests),
        return_exceptions=True,
    )
    refused = [failure_of(a) for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    assert len(refused) == 19, [a for a in answers if not isinstance(a, grpc.aio.AioRpcError)]
    assert {(f.code, f.reason) for f in refused} == {
        (grpc.StatusCode.ALREADY_EXISTS, "EXTERNAL_REFERENCE_TAKEN")
    }
    assert all(
        f.metadata == {"external_reference": "stripe:sub_contested", "line": "0"} for f in refused
    )
    assert await count(app, "entitlements") == 1
    assert await count(app, "orders") == 1


@pytest.mark.usefixtures("skus")
async def test_order_lines_apply_all_or_nothing(
    fulfillment_stub: Fulfillment, tokens: Tokens, app: AppContext
) -> None:
    request = order("o-mixed", "SUB-1Y")
    request.lines.append(ful.OrderLine(sku_id="NO-SUCH-SKU", quantity=1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fulfillment_stub.FulfillOrder(request, metadata=tokens("fulfill"))
    failure = failure_of(caught.value)
    assert (failure.code, failure.reason) == (grpc.StatusCode.NOT_FOUND, "SKU_NOT_FOUND")
    assert failure.metadata["line"] == "1"
    for table in ("orders", "entitlements", "entitlement_events", "external_references"):
        assert await count(app, table) == 0


async def test_unknown_entitlement_and_order(fulfillment_stub: Fulfillment, tokens: Tokens) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fulfillment_stub.GetEntitlement(
            ful.GetEntitlementRequest(entitlement_id="ent_nope"), metadata=tokens("read")
        )
    assert (failure_of(caught.value).code, failure_of(caught.value).reason) == (
        grpc.StatusCode.NOT_FOUND,
        "ENTITLEMENT_NOT_FOUND",
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fulfillment_stub.GetOrder(
            ful.GetOrderRequest(source="test", order_id="nope"), metadata=tokens("read")
        )
    assert failure_of(caught.value).reason == "ORDER_NOT_FOUND"


async def test_scopes_are_enforced(fulfillment_stub: Fulfillment, tokens: Tokens) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fulfillment_stub.FulfillOrder(order("o-1", "SUB-1Y"), metadata=tokens("read"))
    failure = failure_of(caught.value)
    assert (failure.code, failure.reason, failure.metadata) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "INSUFFICIENT_SCOPE",
        {"required_scope": "fulfill"},
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fulfillment_stub.GetEntitlement(ful.GetEntitlementRequest(entitlement_id="ent_x"))
    assert (failure_of(caught.value).code, failure_of(caught.value).reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "MISSING_CREDENTIALS",
    )


@pytest.mark.usefixtures("skus")
async def test_shutdown_ends_change_streams_with_server_stopping(
    app: AppContext, tokens: Tokens
) -> None:
    own = KeyturnServer(app, "127.0.0.1:0")
    await own.start()
    async with grpc.aio.insecure_channel(own.address) as channel:
        stub = fulfillment_pb2_grpc.FulfillmentServiceStub(channel)
        await stub.FulfillOrder(order("o-watch", "SUB-1Y"), metadata=tokens("fulfill"))
        stream = stub.WatchEntitlementEvents(
            ful.WatchEntitlementEventsRequest(after_sequence=0), metadata=tokens("read")
        )
        first = await stream.read()
        assert isinstance(first, ful.WatchEntitlementEventsResponse)
        assert first.event.sequence == 1
        # The stream now waits for new events; a long drain grace must not keep it open.
        stopping = asyncio.create_task(own.stop(grace=600))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream.read()
        await stopping
    failure = failure_of(caught.value)
    assert (failure.code, failure.reason, failure.metadata) == (
        grpc.StatusCode.UNAVAILABLE,
        "SERVER_STOPPING",
        {"last_sequence": "1"},
    )


async def test_orders_naming_the_same_entitlements_in_opposite_order_all_apply(
    catalog_stub: catalog_pb2_grpc.CatalogServiceStub,
    fulfillment_stub: Fulfillment,
    tokens: Tokens,
) -> None:
    seat = cat.Sku(
        sku_id="SEAT",
        product_id="acme-cad",
        operations=[cat.Operation(add_seats=cat.AddSeatsOperation(seats_per_unit=1))],
    )
    await put_catalog(catalog_stub, tokens("catalog"), create_sku("SUB-1Y", seats=1), seat)
    first, second = [
        (await fulfillment_stub.FulfillOrder(order(f"o-{n}", "SUB-1Y"), metadata=tokens("fulfill")))
        .entitlements[0]
        .entitlement_id
        for n in (1, 2)
    ]

    def crossing(n: int) -> ful.FulfillOrderRequest:
        request = order(f"cross-{n}", "SEAT")
        targets = (first, second) if n % 2 else (second, first)
        del request.lines[:]
        request.lines.extend(
            ful.OrderLine(sku_id="SEAT", quantity=1, entitlement_id=t) for t in targets
        )
        return request

    rounds = 20
    await asyncio.gather(
        *(
            fulfillment_stub.FulfillOrder(crossing(n), metadata=tokens("fulfill"))
            for n in range(rounds)
        )
    )
    for entitlement_id in (first, second):
        got = await fulfillment_stub.GetEntitlement(
            ful.GetEntitlementRequest(entitlement_id=entitlement_id), metadata=tokens("read")
        )
        assert got.entitlement.seats == 1 + rounds
