"""The audit trail through a real server, on every database: each kind of change leaves
its record naming its actor, refused changes leave none, and ListAuditEvents filters and
pages newest first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.app.audit import acting_as
from keyturn.server.app.context import AppContext
from keyturn.server.app.signing_keys import rotate_signing_keys
from keyturn.server.app.tokens import create_token, revoke_token
from keyturn.server.clock import SystemClock

from conftest import Tokens
from support.catalog import put_catalog
from support.rpc import PRODUCT_ID, create_sku, failure_of, order, product

Catalog = catalog_pb2_grpc.CatalogServiceStub
Fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub
Row = tuple[str, str, str, str]  # actor, action, resource, entitlement id


async def trail(
    stub: Fulfillment, tokens: Tokens, page_size: int = 0, **filters: object
) -> list[ful.AuditEvent]:
    """Every record matching `filters`, page after page."""
    found: list[ful.AuditEvent] = []
    token = ""
    while True:
        page = await stub.ListAuditEvents(
            ful.ListAuditEventsRequest(page_size=page_size, page_token=token, **filters),  # type: ignore[arg-type]
            metadata=tokens("read"),
        )
        found.extend(page.audit_events)
        token = page.next_page_token
        if not token:
            return found


def rows(events: list[ful.AuditEvent]) -> list[Row]:
    return [(e.actor, e.action, e.resource, e.entitlement_id) for e in events]


def by_token(tokens: Tokens, scope: str) -> str:
    return f"token:{tokens.ids[scope]}"


async def refused(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    failure = failure_of(caught.value)
    return failure.code, failure.reason


async def test_every_kind_of_change_leaves_its_record_by_its_actor(
    app: AppContext,
    catalog_stub: Catalog,
    fulfillment_stub: Fulfillment,
    licensing_stub: licensing_pb2_grpc.LicensingServiceStub,
    tokens: Tokens,
) -> None:
    auth, fulfil = tokens("catalog"), tokens("fulfill")
    before = await trail(fulfillment_stub, tokens)  # the fixture's tokens, the system's
    assert {(e.actor, e.action) for e in before} == {("system", "token.create")}
    await put_catalog(
        catalog_stub, auth, create_sku("SUB-1Y", seats=2), create_sku("PERP", term="")
    )
    two_lines = order("o-1", "SUB-1Y")
    two_lines.lines.append(ful.OrderLine(sku_id="PERP", quantity=1))
    fulfilled = await fulfillment_stub.FulfillOrder(two_lines, metadata=fulfil)
    sub, perpetual = (r.entitlement_id for r in fulfilled.order.results)
    replay = await fulfillment_stub.FulfillOrder(two_lines, metadata=fulfil)
    assert replay.replayed  # writes no record
    await fulfillment_stub.ResendCredentials(
        ful.ResendCredentialsRequest(entitlement_id=sub), metadata=fulfil
    )
    perp = (await catalog_stub.GetSku(cat.GetSkuRequest(sku_id="PERP"), metadata=auth)).sku
    await catalog_stub.DeleteSku(cat.DeleteSkuRequest(sku_id="PERP", etag=perp.etag), metadata=auth)
    with acting_as("cli:tester"):
        token, _ = await create_token(app, {"read"}, "for the audit", lifetime=None)
        assert await revoke_token(app, token.token_id) == token.token_id
        rotation = await rotate_signing_keys(app)
    # A device's seat leaves no audit record: its event names the device.
    key = fulfilled.entitlements[0].license_key
    seat = await licensing_stub.ActivateSeat(
        lic.ActivateSeatRequest(license_key=key, product_id=PRODUCT_ID, fingerprint="device-1")
    )
    await licensing_stub.ReleaseSeat(lic.ReleaseSeatRequest(lease_token=seat.lease.token))

    events = (await trail(fulfillment_stub, tokens))[: -len(before)]
    catalog, orders = by_token(tokens, "catalog"), by_token(tokens, "fulfill")
    assert rows(events) == [
        ("cli:tester", "signing_key.rotate", f"signing-keys/{rotation.new_kid}", ""),
        ("cli:tester", "token.revoke", f"tokens/{token.token_id}", ""),
        ("cli:tester", "token.create", f"tokens/{token.token_id}", ""),
        (catalog, "sku.delete", "skus/PERP", ""),
        (orders, "credentials.resend", f"entitlements/{sub}", sub),
        (orders, "order.fulfil", "orders/test/o-1", perpetual),
        (orders, "order.fulfil", "orders/test/o-1", sub),
        (catalog, "sku.put", "skus/PERP", ""),
        (catalog, "sku.put", "skus/SUB-1Y", ""),
        (catalog, "product.put", f"products/{PRODUCT_ID}", ""),
    ]
    assert [e.audit_id for e in events] == sorted((e.audit_id for e in events), reverse=True)
    details = {(e.action, e.entitlement_id): json_format.MessageToDict(e.details) for e in events}
    assert details["order.fulfil", sub] == {
        "lines": [0],
        "skus": ["SUB-1Y"],
        "operations": ["create"],
    }
    assert details["token.create", ""]["scopes"] == ["read"]
    assert details["signing_key.rotate", ""]["retired"] == rotation.retired
    assert details["sku.delete", ""] == {"product_id": PRODUCT_ID, "etag": perp.etag}

    history = await fulfillment_stub.ListEntitlementEvents(
        ful.ListEntitlementEventsRequest(entitlement_id=sub), metadata=tokens("read")
    )
    device = f"device:{seat.activation_id}"
    assert [(e.type, e.actor) for e in history.events] == [
        (ful.ENTITLEMENT_EVENT_TYPE_CREATED, orders),
        (ful.ENTITLEMENT_EVENT_TYPE_SEAT_ACTIVATED, device),
        (ful.ENTITLEMENT_EVENT_TYPE_SEAT_RELEASED, device),
    ]


async def test_a_refused_change_leaves_no_record(
    catalog_stub: Catalog, fulfillment_stub: Fulfillment, tokens: Tokens
) -> None:
    auth = tokens("catalog")
    await put_catalog(catalog_stub, auth, create_sku("SUB-1Y"))
    before = await trail(fulfillment_stub, tokens)
    stale = create_sku("SUB-1Y")
    stale.etag = "0000000000000000"
    assert await refused(catalog_stub.PutSku(cat.PutSkuRequest(sku=stale), metadata=auth)) == (
        grpc.StatusCode.ABORTED,
        "ETAG_MISMATCH",
    )
    assert await refused(
        catalog_stub.DeleteSku(cat.DeleteSkuRequest(sku_id="SUB-1Y", etag="0" * 16), metadata=auth)
    ) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    bad = product("Not A Slug")
    code, _ = await refused(
        catalog_stub.PutProduct(cat.PutProductRequest(product=bad), metadata=auth)
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert await refused(
        fulfillment_stub.FulfillOrder(order("o-1", "NO-SUCH-SKU"), metadata=tokens("fulfill"))
    ) == (grpc.StatusCode.NOT_FOUND, "SKU_NOT_FOUND")
    assert await refused(
        fulfillment_stub.ResendCredentials(
            ful.ResendCredentialsRequest(entitlement_id="ent_missing"), metadata=tokens("fulfill")
        )
    ) == (grpc.StatusCode.NOT_FOUND, "ENTITLEMENT_NOT_FOUND")
    assert await trail(fulfillment_stub, tokens) == before


def stamp(value: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(value)
    return result


async def test_list_audit_events_filters_and_pages_newest_first(
    app: AppContext, catalog_stub: Catalog, fulfillment_stub: Fulfillment, tokens: Tokens
) -> None:
    clock = app.clock
    assert isinstance(clock, SystemClock)
    auth, fulfil = tokens("catalog"), tokens("fulfill")
    await put_catalog(catalog_stub, auth, create_sku("SUB-1Y"), create_sku("SUB-2Y", term="P2Y"))
    clock.offset += timedelta(hours=1)
    middle = clock.now()
    first = await fulfillment_stub.FulfillOrder(order("o-1", "SUB-1Y"), metadata=fulfil)
    await fulfillment_stub.FulfillOrder(order("o-2", "SUB-2Y", source="shop"), metadata=fulfil)
    await fulfillment_stub.FulfillOrder(order("o-3", "SUB-1Y", source="shop"), metadata=fulfil)
    clock.offset += timedelta(hours=1)
    late = clock.now()
    await catalog_stub.PutSku(
        cat.PutSkuRequest(sku=create_sku("SUB-3Y", term="P3Y")), metadata=auth
    )
    everything = await trail(fulfillment_stub, tokens)
    catalog, orders = by_token(tokens, "catalog"), by_token(tokens, "fulfill")

    # Paging: small pages hold the same records, newest first, none twice.
    for size in (1, 2, 3):
        assert rows(await trail(fulfillment_stub, tokens, page_size=size)) == rows(everything)
    ids = [e.audit_id for e in everything]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == len(ids)

    assert [e.resource for e in await trail(fulfillment_stub, tokens, actor=orders)] == [
        "orders/shop/o-3",
        "orders/shop/o-2",
        "orders/test/o-1",
    ]
    assert {e.actor for e in await trail(fulfillment_stub, tokens, action="sku.put")} == {catalog}
    assert len(await trail(fulfillment_stub, tokens, action="sku.put", page_size=1)) == 3
    entitlement = first.entitlements[0].entitlement_id
    assert rows(await trail(fulfillment_stub, tokens, entitlement_id=entitlement)) == [
        (orders, "order.fulfil", "orders/test/o-1", entitlement)
    ]
    assert [e.resource for e in await trail(fulfillment_stub, tokens, resource="orders/shop/")] == [
        "orders/shop/o-3",
        "orders/shop/o-2",
    ]
    assert [
        e.resource for e in await trail(fulfillment_stub, tokens, resource="orders/SHOP/")
    ] == []
    assert rows(await trail(fulfillment_stub, tokens, resource="skus/SUB-1Y")) == [
        (catalog, "sku.put", "skus/SUB-1Y", "")
    ]
    assert await trail(fulfillment_stub, tokens, resource="skus/SUB") == []  # exact
    window = await trail(fulfillment_stub, tokens, start_time=stamp(middle), end_time=stamp(late))
    assert [e.action for e in window] == ["order.fulfil"] * 3
    assert [e.resource for e in await trail(fulfillment_stub, tokens, start_time=stamp(late))] == [
        "skus/SUB-3Y"
    ]
    assert all(
        e.create_time.ToDatetime(tzinfo=UTC) < middle
        for e in await trail(fulfillment_stub, tokens, end_time=stamp(middle))
    )
    both = await trail(fulfillment_stub, tokens, actor=catalog, resource="skus/")
    assert [e.resource for e in both] == ["skus/SUB-3Y", "skus/SUB-2Y", "skus/SUB-1Y"]


async def test_a_page_token_of_other_filters_is_refused(
    catalog_stub: Catalog, fulfillment_stub: Fulfillment, tokens: Tokens
) -> None:
    await put_catalog(catalog_stub, tokens("catalog"), create_sku("A"), create_sku("B"))
    page = await fulfillment_stub.ListAuditEvents(
        ful.ListAuditEventsRequest(page_size=1, action="sku.put"), metadata=tokens("read")
    )
    assert page.next_page_token
    other = ful.ListAuditEventsRequest(
        page_size=1, action="product.put", page_token=page.next_page_token
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fulfillment_stub.ListAuditEvents(other, metadata=tokens("read"))
    failure = failure_of(caught.value)
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert failure.fields == ["page_token"]
