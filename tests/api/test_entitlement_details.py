"""The console's reads (app/entitlement_details.py) through a real server, on every backend:
one entitlement's devices (released ones too, most recently seen first, which hold a seat),
the orders that changed it with the emails they queued for it (not for other entitlements
of the same order), and the entitlement a license key opens, found by its keyed hash.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.entitlement_details import entitlement_details, find_by_license_key
from keyturn.server.clock import SystemClock
from keyturn.server.domain.errors import DomainError, Reason
from keyturn.server.domain.license_key import generate_license_key

from conftest import Tokens
from support.catalog import put_catalog
from support.rpc import create_sku, order


async def test_devices_orders_and_emails_of_one_entitlement(
    server: KeyturnServer,
    catalog_stub: catalog_pb2_grpc.CatalogServiceStub,
    fulfillment_stub: fulfillment_pb2_grpc.FulfillmentServiceStub,
    licensing_stub: licensing_pb2_grpc.LicensingServiceStub,
    tokens: Tokens,
) -> None:
    seat = cat.Sku(
        sku_id="SEAT",
        product_id="acme-cad",
        operations=[cat.Operation(add_seats=cat.AddSeatsOperation(seats_per_unit=1))],
    )
    await put_catalog(catalog_stub, tokens("catalog"), create_sku("SUB", seats=2), seat)
    first = order("o-1", "SUB")
    first.ship_to_email = "it@initech.example"
    first.lines.append(ful.OrderLine(sku_id="SUB", quantity=1))  # a second entitlement
    sold = await fulfillment_stub.FulfillOrder(first, metadata=tokens("fulfill"))
    mine, other = sold.entitlements
    more = order("o-2", "SEAT")
    more.lines[0].entitlement_id = mine.entitlement_id
    await fulfillment_stub.FulfillOrder(more, metadata=tokens("fulfill"))

    leases = {}
    for fingerprint in ("device-aaaa", "device-bbbb"):
        granted = await licensing_stub.ActivateSeat(
            lic.ActivateSeatRequest(
                license_key=mine.license_key,
                product_id=mine.product_id,
                fingerprint=fingerprint,
                label=fingerprint,
            )
        )
        leases[fingerprint] = granted
    assert isinstance(server.ctx.clock, SystemClock)
    server.ctx.clock.offset += timedelta(seconds=1)  # the release is seen after the activations
    await licensing_stub.ReleaseSeat(
        lic.ReleaseSeatRequest(lease_token=leases["device-aaaa"].lease.token)
    )

    details = await entitlement_details(server.ctx, mine.entitlement_id)
    assert details.view.entitlement.entitlement_id == mine.entitlement_id
    assert details.view.seats_in_use == 1
    shown = [(d.activation.fingerprint, d.holds_seat) for d in details.devices]
    assert shown == [("device-aaaa", False), ("device-bbbb", True)], "last seen first"
    released = details.devices[0].activation
    assert released.released_time is not None
    assert released.update_time is not None
    assert [(o.source, o.order_id) for o in details.orders] == [("test", "o-1"), ("test", "o-2")]
    assert all(o.order is not None for o in details.orders)
    emails = details.orders[0].messages
    assert [(m.entitlement_id, m.to_email) for m in emails] == [
        (mine.entitlement_id, "it@initech.example")
    ], "the order's email for this entitlement, not the other's"
    assert details.orders[1].messages == []

    assert (await entitlement_details(server.ctx, other.entitlement_id)).devices == []
    found = await find_by_license_key(server.ctx, mine.license_key.lower())
    assert found is not None
    assert found.entitlement.entitlement_id == mine.entitlement_id
    assert await find_by_license_key(server.ctx, generate_license_key()) is None
    with pytest.raises(DomainError) as refused:
        await find_by_license_key(server.ctx, "not-a-key")
    assert refused.value.reason is Reason.INVALID_REQUEST
    with pytest.raises(DomainError) as missing:
        await entitlement_details(server.ctx, "ent_nope")
    assert missing.value.reason is Reason.ENTITLEMENT_NOT_FOUND
