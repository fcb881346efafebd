"""The small world every bad-input case runs against, built once per backend.

Two products, a SKU for every operation, one entitlement whose single seat is
taken and its lease, a perpetual entitlement, a cancelled one, one of the second
product, two more that only the year-9000 cases aim at, and page tokens issued
by the list calls. Cases only make failing calls, so the world does not change
unless a call wrongly writes, which the case that made it reports.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
import httpx

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.context import AppContext
from keyturn.server.app.tokens import create_token
from keyturn.server.bootstrap import build_context

from conftest import Tokens, settings_for
from support.rpc import PRODUCT_ID, create_sku, order, product

TAKEN_REFERENCE = "stripe:sub_taken"
PERPETUAL_REFERENCE = "stripe:sub_perpetual"
CANCELLED_REFERENCE = "stripe:sub_cancelled"
OTHER_REFERENCE = "stripe:sub_other"
OTHER_PRODUCT_ID = "other-app"
UNKNOWN_ENTITLEMENT = "ent_01arz3ndektsv4rrffq69g5fav"
WORLD_ORDER_ID = "order-1"
WORLD_FINGERPRINT = "device-0001"
# A token of each scope, and the scope a wrong-scope case sends instead.
OTHER_SCOPE = {"catalog": "read", "fulfill": "read", "read": "fulfill", "webhooks": "read"}
UNKNOWN_SUBSCRIPTION = "whk_01arz3ndektsv4rrffq69g5fav"


def change_sku(sku_id: str, operation: cat.Operation) -> cat.Sku:
    """A SKU that changes an existing entitlement of the main product."""
    return cat.Sku(
        sku_id=sku_id, product_id=PRODUCT_ID, display_name=sku_id, operations=[operation]
    )


def _grace_sku() -> cat.Sku:
    sku = create_sku("GRACE-90D")
    sku.operations[0].create.grace_period.FromSeconds(90 * 86400)
    return sku


WORLD_SKUS = (
    create_sku("STD"),
    create_sku("BIG", seats=100_000),
    create_sku("SPARE"),
    create_sku("PERP", term=""),
    _grace_sku(),
    create_sku("OTHER-STD", product_id=OTHER_PRODUCT_ID),
    change_sku("RENEW", cat.Operation(renew=cat.RenewOperation(term="P1Y"))),
    change_sku("RENEW-100Y", cat.Operation(renew=cat.RenewOperation(term="P100Y"))),
    change_sku(
        "RENEW-50D",
        cat.Operation(renew=cat.RenewOperation(term="P50D", anchor=cat.RENEWAL_ANCHOR_FROM_EXPIRY)),
    ),
    change_sku("ADD-SEATS", cat.Operation(add_seats=cat.AddSeatsOperation(seats_per_unit=100_000))),
    change_sku(
        "REMOVE-SEATS", cat.Operation(remove_seats=cat.RemoveSeatsOperation(seats_per_unit=1))
    ),
    change_sku(
        "CHANGE-EDITION",
        cat.Operation(change_edition=cat.ChangeEditionOperation(edition_id="pro")),
    ),
    change_sku(
        "ADD-FEATURES",
        cat.Operation(add_features=cat.AddFeaturesOperation(features=[cat.Feature(name="extra")])),
    ),
    change_sku(
        "REMOVE-FEATURES",
        cat.Operation(remove_features=cat.RemoveFeaturesOperation(feature_names=["export-pdf"])),
    ),
    change_sku("CONVERT", cat.Operation(convert_trial=cat.ConvertTrialOperation(term="P1Y"))),
    change_sku("CANCEL", cat.Operation(cancel=cat.CancelOperation())),
    change_sku("SUSPEND", cat.Operation(suspend=cat.SuspendOperation())),
    change_sku("REINSTATE", cat.Operation(reinstate=cat.ReinstateOperation())),
)
# The SKUs that change an entitlement, one per operation.
CHANGE_SKUS = [
    "RENEW",
    "ADD-SEATS",
    "REMOVE-SEATS",
    "CHANGE-EDITION",
    "ADD-FEATURES",
    "REMOVE-FEATURES",
    "CONVERT",
    "CANCEL",
    "SUSPEND",
    "REINSTATE",
]


@dataclass
class World:
    app: AppContext
    channel: grpc.aio.Channel
    http: httpx.AsyncClient  # to the same server's HTTP/JSON port
    tokens: Tokens
    entitlement_id: str  # one seat, taken by the lease below
    license_key: str
    lease_token: str
    activation_id: str  # of the lease above
    perpetual_id: str  # has PERPETUAL_REFERENCE
    cancelled_id: str  # has CANCELLED_REFERENCE
    other_product_id: str  # of OTHER_PRODUCT_ID, has OTHER_REFERENCE
    far_id: str  # aimed at only by the renewals into the year 9000
    far_end: datetime
    grace_id: str  # 90 days of grace; aimed at only by a renewal to the end of 9999
    grace_end: datetime
    last_sequence: int  # of the last event written (read again before each case)
    entitlements_page_token: str  # ListEntitlements, customer_id="cust-1", page_size=1
    events_page_token: str  # ListEntitlementEvents of the cancelled entitlement, page_size=1


@asynccontextmanager
async def world_on(database_url: str) -> AsyncIterator[World]:
    """A server on a migrated, empty database, and the world written through it."""
    app = await build_context(settings_for(database_url))
    server = KeyturnServer(app, "127.0.0.1:0", http_listen="127.0.0.1:0")
    await server.start()
    try:
        secrets = {s: (await create_token(app, {s}, f"bad input {s}"))[1] for s in OTHER_SCOPE}
        tokens = Tokens(secrets)
        async with (
            grpc.aio.insecure_channel(server.address) as channel,
            httpx.AsyncClient(base_url=f"http://{server.http_address}", timeout=30) as http,
        ):
            yield await _write_world(app, channel, http, tokens)
    finally:
        await server.stop(grace=1.0)
        await app.store.close()


async def _write_world(
    app: AppContext, channel: grpc.aio.Channel, http: httpx.AsyncClient, tokens: Tokens
) -> World:
    catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
    fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub(channel)
    licensing = licensing_pb2_grpc.LicensingServiceStub(channel)
    auth = tokens("catalog")
    for each in (product(), product(OTHER_PRODUCT_ID)):
        await catalog.PutProduct(cat.PutProductRequest(product=each), metadata=auth)
    for sku in WORLD_SKUS:
        await catalog.PutSku(cat.PutSkuRequest(sku=sku), metadata=auth)

    async def fulfilled(
        order_id: str, sku_id: str, reference: str = "", target: str = ""
    ) -> ful.Entitlement:
        request = order(order_id, sku_id, reference=reference)
        request.lines[0].entitlement_id = target
        response = await fulfillment.FulfillOrder(request, metadata=tokens("fulfill"))
        return response.entitlements[0]

    entitlement = await fulfilled(WORLD_ORDER_ID, "STD", TAKEN_REFERENCE)
    perpetual = await fulfilled("order-perpetual", "PERP", PERPETUAL_REFERENCE)
    cancelled = await fulfilled("order-cancelled", "STD", CANCELLED_REFERENCE)
    cancelled = await fulfilled("order-cancel", "CANCEL", target=cancelled.entitlement_id)
    assert cancelled.status == ful.ENTITLEMENT_STATUS_CANCELLED
    other = await fulfilled("order-other", "OTHER-STD", OTHER_REFERENCE)
    far = await fulfilled("order-far", "STD")
    grace = await fulfilled("order-grace", "GRACE-90D")
    activated = await licensing.ActivateSeat(
        lic.ActivateSeatRequest(
            license_key=entitlement.license_key,
            product_id=PRODUCT_ID,
            fingerprint=WORLD_FINGERPRINT,
            label="laptop",
        )
    )
    listed = await fulfillment.ListEntitlements(
        ful.ListEntitlementsRequest(customer_id="cust-1", page_size=1),
        metadata=tokens("read"),
    )
    events = await fulfillment.ListEntitlementEvents(
        ful.ListEntitlementEventsRequest(entitlement_id=cancelled.entitlement_id, page_size=1),
        metadata=tokens("read"),
    )
    assert listed.next_page_token
    assert events.next_page_token
    async with app.store.read() as tx:
        last_sequence = await tx.events.last_sequence()
    return World(
        app=app,
        channel=channel,
        http=http,
        tokens=tokens,
        entitlement_id=entitlement.entitlement_id,
        license_key=entitlement.license_key,
        lease_token=activated.lease.token,
        activation_id=activated.activation_id,
        perpetual_id=perpetual.entitlement_id,
        cancelled_id=cancelled.entitlement_id,
        other_product_id=other.entitlement_id,
        far_id=far.entitlement_id,
        far_end=far.end_time.ToDatetime(tzinfo=UTC),
        grace_id=grace.entitlement_id,
        grace_end=grace.end_time.ToDatetime(tzinfo=UTC),
        last_sequence=last_sequence,
        entitlements_page_token=listed.next_page_token,
        events_page_token=events.next_page_token,
    )
