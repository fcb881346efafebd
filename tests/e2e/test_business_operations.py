"""Every business operation of a vendor, end to end, with the SKUs of the shipped catalog.

The catalog is `examples/catalog.yaml` exactly as shipped: it is read with the
server's own catalog-file reader and put through CatalogService, so a broken
example file fails these tests. Orders go through FulfillmentService, devices
through LicensingService, all on a real server on a loopback port, on SQLite
and on PostgreSQL. Time moves by shifting the app's clock, never by sleeping.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import jwt
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.api.catalog_convert import sku_out
from keyturn.server.app.context import AppContext
from keyturn.server.catalog_file import CatalogFile
from keyturn.server.clock import SystemClock
from keyturn.server.domain.durations import parse_iso_duration

from conftest import Tokens
from support.audited_calls import CallLog, Recording, audit_matches
from support.catalog import put_shipped_catalog
from support.rows import changed_tables, row_counts, table_digests
from support.rpc import RpcFailure, failure_of

PRODUCT = "acme-cad"
SOURCE = "shop"
CUSTOMER = ful.Customer(customer_id="cust-42", name="Initech", email="it@initech.example")
LAPSE_GRACE = timedelta(seconds=30)  # the server's default lapse grace of floating leases

# The SKUs of the shipped catalog that these tests sell, one per business operation.
NEW_SUBSCRIPTION = "CAD-STD-1Y"
PERPETUAL = "CAD-PRO-PERPETUAL"
TRIAL = "CAD-PRO-TRIAL"
CONVERT_TRIAL = "CAD-TRIAL-CONVERT-1Y"
RENEW = "CAD-RENEW-1Y"
RENEW_PLUS_SYNC = "CAD-RENEW-1Y-PLUS-SYNC"
RENEW_DOWN_STD = "CAD-RENEW-1Y-DOWN-STD"
ADD_SEAT = "CAD-SEAT"
REMOVE_SEAT = "CAD-SEAT-REMOVE"
ADDON_SYNC = "CAD-ADDON-SYNC"
ADDON_SYNC_REMOVE = "CAD-ADDON-SYNC-REMOVE"
UPGRADE_PRO = "CAD-UPGRADE-PRO"
DOWNGRADE_STD = "CAD-DOWNGRADE-STD"
CANCEL = "CAD-CANCEL"
SUSPEND = "CAD-SUSPEND"
REINSTATE = "CAD-REINSTATE"
USED_SKUS = {
    NEW_SUBSCRIPTION,
    PERPETUAL,
    TRIAL,
    CONVERT_TRIAL,
    RENEW,
    RENEW_PLUS_SYNC,
    RENEW_DOWN_STD,
    ADD_SEAT,
    REMOVE_SEAT,
    ADDON_SYNC,
    ADDON_SYNC_REMOVE,
    UPGRADE_PRO,
    DOWNGRADE_STD,
    CANCEL,
    SUSPEND,
    REINSTATE,
}

CREATED = ful.ENTITLEMENT_EVENT_TYPE_CREATED
RENEWED = ful.ENTITLEMENT_EVENT_TYPE_RENEWED
SEATS_CHANGED = ful.ENTITLEMENT_EVENT_TYPE_SEATS_CHANGED
EDITION_CHANGED = ful.ENTITLEMENT_EVENT_TYPE_EDITION_CHANGED
FEATURES_CHANGED = ful.ENTITLEMENT_EVENT_TYPE_FEATURES_CHANGED
TRIAL_CONVERTED = ful.ENTITLEMENT_EVENT_TYPE_TRIAL_CONVERTED
CANCELLED = ful.ENTITLEMENT_EVENT_TYPE_CANCELLED
SEAT_ACTIVATED = ful.ENTITLEMENT_EVENT_TYPE_SEAT_ACTIVATED

Features = dict[str, int | None]


# --- small helpers ------------------------------------------------------------


def when(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def term_after(term: str, start: datetime, quantity: int = 1) -> datetime:
    """The end of `quantity` units of an ISO-8601 term from `start` (calendar arithmetic)."""
    return parse_iso_duration(term).times(quantity).after(start)


def features_of(features: Iterable[Any]) -> Features:
    """Feature messages (catalog, fulfillment or licensing) as name -> limit."""
    return {f.name: (f.limit if f.HasField("limit") else None) for f in features}


def line(
    sku_id: str, quantity: int = 1, entitlement_id: str = "", reference: str = ""
) -> ful.OrderLine:
    return ful.OrderLine(
        sku_id=sku_id,
        quantity=quantity,
        entitlement_id=entitlement_id,
        external_reference=reference,
    )


def order_of(order_id: str, *lines: ful.OrderLine) -> ful.FulfillOrderRequest:
    return ful.FulfillOrderRequest(
        source=SOURCE, order_id=order_id, customer=CUSTOMER, lines=list(lines)
    )


def clock_of(app: AppContext) -> SystemClock:
    clock = app.clock
    assert isinstance(clock, SystemClock)
    return clock


def move_clock_to(app: AppContext, instant: datetime) -> None:
    """Shift the server's clock so that it reads `instant` now."""
    clock = clock_of(app)
    clock.offset += instant - clock.now()


def move_clock_by(app: AppContext, delta: timedelta) -> None:
    clock_of(app).offset += delta


def activation(key: str, fingerprint: str) -> lic.ActivateSeatRequest:
    return lic.ActivateSeatRequest(
        license_key=key, product_id=PRODUCT, fingerprint=fingerprint, label=fingerprint
    )


def verify_lease(token: str, jwks_json: str) -> dict[str, Any]:
    """Verify a lease offline, as a shipped app does (signature, audience, issuer, expiry)."""
    keys = jwt.PyJWKSet.from_dict(json.loads(jwks_json))
    kid = jwt.get_unverified_header(token)["kid"]
    claims: dict[str, Any] = jwt.decode(
        token, keys[kid].key, algorithms=["EdDSA"], audience=PRODUCT, issuer="keyturn"
    )
    return claims


def as_read(entitlement: ful.Entitlement) -> ful.Entitlement:
    """The entitlement as a read returns it: without the license key."""
    copy = ful.Entitlement()
    copy.CopyFrom(entitlement)
    copy.license_key = ""
    return copy


@dataclass(frozen=True)
class Shipped:
    """The shipped example catalog as read from disk."""

    file: CatalogFile

    def edition_features(self, edition_id: str) -> Features:
        (product,) = [p for p in self.file.products if p.product_id == PRODUCT]
        edition = product.edition(edition_id)
        assert edition is not None, f"the shipped product has no edition {edition_id!r}"
        return {f.name: f.limit for f in edition.features}

    def sku(self, sku_id: str) -> cat.Sku:
        (sku,) = [s for s in self.file.skus if s.sku_id == sku_id]
        return sku_out(sku)

    def added_features(self, sku_id: str) -> Features:
        """The features the add_features operations of a SKU add."""
        added: Features = {}
        for op in self.sku(sku_id).operations:
            if op.WhichOneof("kind") == "add_features":
                added.update(features_of(op.add_features.features))
        assert added, f"{sku_id} adds no features"
        return added

    def removed_features(self, sku_id: str) -> set[str]:
        removed: set[str] = set()
        for op in self.sku(sku_id).operations:
            if op.WhichOneof("kind") == "remove_features":
                removed.update(op.remove_features.feature_names)
        assert removed, f"{sku_id} removes no features"
        return removed


class Vendor:
    """The vendor's side of the API: orders, reads, and asserting refusals."""

    def __init__(
        self,
        app: AppContext,
        fulfillment: fulfillment_pb2_grpc.FulfillmentServiceStub,
        licensing: licensing_pb2_grpc.LicensingServiceStub,
        tokens: Tokens,
    ) -> None:
        self.app = app
        self.fulfillment = fulfillment
        self.licensing = licensing
        self.tokens = tokens

    async def fulfil(self, order_id: str, *lines: ful.OrderLine) -> ful.FulfillOrderResponse:
        return await self.send(order_of(order_id, *lines))

    async def send(self, request: ful.FulfillOrderRequest) -> ful.FulfillOrderResponse:
        response: ful.FulfillOrderResponse = await self.fulfillment.FulfillOrder(
            request, metadata=self.tokens("fulfill")
        )
        return response

    async def create(
        self, order_id: str, sku_id: str, quantity: int = 1, reference: str = ""
    ) -> ful.Entitlement:
        response = await self.fulfil(order_id, line(sku_id, quantity, reference=reference))
        assert not response.replayed
        (entitlement,) = response.entitlements
        return entitlement

    async def entitlement(self, entitlement_id: str) -> ful.Entitlement:
        response = await self.fulfillment.GetEntitlement(
            ful.GetEntitlementRequest(entitlement_id=entitlement_id), metadata=self.tokens("read")
        )
        entitlement: ful.Entitlement = response.entitlement
        return entitlement

    async def listed(
        self,
        status: ful.EntitlementStatus.ValueType = ful.ENTITLEMENT_STATUS_UNSPECIFIED,
        reference: str = "",
    ) -> list[ful.Entitlement]:
        """Entitlements of the product with this status now and/or this external reference."""
        response = await self.fulfillment.ListEntitlements(
            ful.ListEntitlementsRequest(
                product_id=PRODUCT, status=status, external_reference=reference
            ),
            metadata=self.tokens("read"),
        )
        assert response.next_page_token == ""
        return list(response.entitlements)

    async def events(self, entitlement_id: str) -> list[ful.EntitlementEvent]:
        """The whole history, page after page (small pages, so paging is exercised)."""
        events: list[ful.EntitlementEvent] = []
        token = ""
        while True:
            page = await self.fulfillment.ListEntitlementEvents(
                ful.ListEntitlementEventsRequest(
                    entitlement_id=entitlement_id, page_size=2, page_token=token
                ),
                metadata=self.tokens("read"),
            )
            events.extend(page.events)
            token = page.next_page_token
            if not token:
                return events

    async def history(self, entitlement_id: str) -> list[tuple[int, str]]:
        """(event type, order id or activation id) of every event, oldest first."""
        return [(e.type, e.order_id or e.activation_id) for e in await self.events(entitlement_id)]

    async def refused(self, call: Awaitable[object]) -> RpcFailure:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        return failure_of(caught.value)

    async def refused_without_writes(self, request: ful.FulfillOrderRequest) -> RpcFailure:
        """The failure of an order, after checking that no table changed at all."""
        before = await table_digests(self.app.store)
        failure = await self.refused(self.send(request))
        assert changed_tables(before, await table_digests(self.app.store)) == {}
        return failure

    async def jwks(self) -> str:
        keys = await self.licensing.GetSigningKeys(lic.GetSigningKeysRequest())
        jwks_json: str = keys.jwks_json
        return jwks_json


@pytest.fixture
def call_log() -> CallLog:
    return CallLog()


@pytest.fixture
def catalog_stub(
    catalog_stub: catalog_pb2_grpc.CatalogServiceStub, call_log: CallLog, tokens: Tokens
) -> catalog_pb2_grpc.CatalogServiceStub:
    """The stub of conftest, its write calls noted for `changes_are_audited`."""
    recording: catalog_pb2_grpc.CatalogServiceStub = Recording(  # type: ignore[assignment]
        catalog_stub, call_log, tokens.actor_of
    )
    return recording


@pytest.fixture
def fulfillment_stub(
    fulfillment_stub: fulfillment_pb2_grpc.FulfillmentServiceStub,
    call_log: CallLog,
    tokens: Tokens,
) -> fulfillment_pb2_grpc.FulfillmentServiceStub:
    recording: fulfillment_pb2_grpc.FulfillmentServiceStub = Recording(  # type: ignore[assignment]
        fulfillment_stub, call_log, tokens.actor_of
    )
    return recording


@pytest.fixture(autouse=True)
async def changes_are_audited(app: AppContext, call_log: CallLog) -> AsyncIterator[None]:
    """After each test: every change it made (each order fulfilled, each catalog change)
    left its audit record naming the token that made it, and nothing else did."""
    yield
    await audit_matches(app.store, call_log)


@pytest.fixture
async def shipped(catalog_stub: catalog_pb2_grpc.CatalogServiceStub, tokens: Tokens) -> Shipped:
    """The shipped catalog, put through CatalogService product by product, SKU by SKU."""
    auth = tokens("catalog")
    catalog = await put_shipped_catalog(catalog_stub, auth)
    listed = await catalog_stub.ListSkus(
        cat.ListSkusRequest(product_id=PRODUCT, page_size=500), metadata=auth
    )
    stored = {s.sku_id: list(s.operations) for s in listed.skus}
    assert stored == {s.sku_id: list(sku_out(s).operations) for s in catalog.skus}
    missing = USED_SKUS - set(stored)
    assert not missing, f"the shipped catalog lacks {sorted(missing)}"
    return Shipped(catalog)


@pytest.fixture
def vendor(
    app: AppContext,
    shipped: Shipped,
    fulfillment_stub: fulfillment_pb2_grpc.FulfillmentServiceStub,
    licensing_stub: licensing_pb2_grpc.LicensingServiceStub,
    tokens: Tokens,
) -> Vendor:
    return Vendor(app, fulfillment_stub, licensing_stub, tokens)


# --- 1. new subscription ---------------------------------------------------------


async def test_new_subscription(vendor: Vendor, shipped: Shipped) -> None:
    response = await vendor.fulfil("o-new", line(NEW_SUBSCRIPTION, 3))
    assert not response.replayed
    (created,) = response.entitlements
    start = when(created.start_time)
    assert created.seats == 3
    assert when(created.end_time) == term_after("P1Y", start)
    assert created.grace_period.ToTimedelta() == timedelta(days=7)
    assert created.status == ful.ENTITLEMENT_STATUS_ACTIVE
    assert (created.product_id, created.edition_id) == (PRODUCT, "standard")
    assert features_of(created.features) == shipped.edition_features("standard")
    assert created.license_model == cat.LICENSE_MODEL_FLOATING
    assert created.lease_duration.ToTimedelta() == timedelta(minutes=15)
    assert not created.trial
    assert not created.perpetual
    assert created.seats_in_use == 0
    assert created.seats_over == 0
    assert created.customer == CUSTOMER
    assert created.ship_to_email == CUSTOMER.email
    assert created.license_key
    assert [
        (r.line_index, r.sku_id, r.entitlement_id, list(r.operations))
        for r in response.order.results
    ] == [(0, NEW_SUBSCRIPTION, created.entitlement_id, ["create"])]

    fetched = await vendor.entitlement(created.entitlement_id)
    expected = ful.Entitlement()
    expected.CopyFrom(created)
    expected.license_key = ""  # reads never reveal the key
    assert fetched == expected
    assert await vendor.history(created.entitlement_id) == [(CREATED, "o-new")]

    # The key works: a device takes one of the three seats.
    seat = await vendor.licensing.ActivateSeat(activation(created.license_key, "device-0001"))
    assert (seat.entitlement.seats, seat.entitlement.seats_in_use) == (3, 1)


# --- 2. new trial --------------------------------------------------------------


async def test_new_trial(vendor: Vendor, shipped: Shipped) -> None:
    response = await vendor.fulfil("o-trial", line(TRIAL))
    (trial,) = response.entitlements
    assert trial.status == ful.ENTITLEMENT_STATUS_TRIAL
    assert trial.trial
    assert when(trial.end_time) == term_after("P14D", when(trial.start_time))
    assert trial.edition_id == "pro"
    assert features_of(trial.features) == shipped.edition_features("pro")
    assert trial.seats == 1
    assert list(response.order.results[0].operations) == ["create"]
    fetched = await vendor.entitlement(trial.entitlement_id)
    assert (fetched.status, fetched.trial, fetched.end_time) == (
        ful.ENTITLEMENT_STATUS_TRIAL,
        True,
        trial.end_time,
    )
    assert await vendor.history(trial.entitlement_id) == [(CREATED, "o-trial")]


# --- 3. convert trial ------------------------------------------------------------


async def test_convert_live_trial(vendor: Vendor) -> None:
    trial = await vendor.create("o-trial", TRIAL)
    before = clock_of(vendor.app).now()
    response = await vendor.fulfil(
        "o-convert", line(CONVERT_TRIAL, entitlement_id=trial.entitlement_id)
    )
    after = clock_of(vendor.app).now()
    (paid,) = response.entitlements
    assert paid.entitlement_id == trial.entitlement_id
    assert paid.status == ful.ENTITLEMENT_STATUS_ACTIVE
    assert not paid.trial
    start = when(paid.start_time)
    assert before <= start <= after  # the paid term counts from the conversion
    assert when(paid.end_time) == term_after("P1Y", start)
    assert (paid.edition_id, paid.seats) == (trial.edition_id, trial.seats)
    assert list(response.order.results[0].operations) == ["convert_trial"]
    assert await vendor.entitlement(trial.entitlement_id) == paid

    # Converting what is no trial (any more, or ever) is refused and writes nothing.
    never = await vendor.create("o-paid", NEW_SUBSCRIPTION)
    for target in (trial.entitlement_id, never.entitlement_id):
        failure = await vendor.refused_without_writes(
            order_of(f"o-convert-{target}", line(CONVERT_TRIAL, entitlement_id=target))
        )
        assert (failure.code, failure.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "NOT_A_TRIAL",
        )
        assert failure.metadata == {"entitlement_id": target, "line": "0"}
    assert await vendor.entitlement(trial.entitlement_id) == paid
    assert await vendor.entitlement(never.entitlement_id) == as_read(never)
    assert await vendor.history(trial.entitlement_id) == [
        (CREATED, "o-trial"),
        (TRIAL_CONVERTED, "o-convert"),
    ]


async def test_convert_expired_trial(vendor: Vendor) -> None:
    trial = await vendor.create("o-trial", TRIAL)
    move_clock_to(vendor.app, when(trial.end_time) + timedelta(days=3))
    expired = await vendor.entitlement(trial.entitlement_id)
    assert expired.status == ful.ENTITLEMENT_STATUS_EXPIRED
    assert await vendor.listed(status=ful.ENTITLEMENT_STATUS_EXPIRED) == [expired]
    before = clock_of(vendor.app).now()
    response = await vendor.fulfil(
        "o-convert", line(CONVERT_TRIAL, entitlement_id=trial.entitlement_id)
    )
    after = clock_of(vendor.app).now()
    (paid,) = response.entitlements
    start = when(paid.start_time)
    assert before <= start <= after
    assert when(paid.end_time) == term_after("P1Y", start)
    assert paid.status == ful.ENTITLEMENT_STATUS_ACTIVE
    assert not paid.trial
    assert await vendor.listed(status=ful.ENTITLEMENT_STATUS_ACTIVE) == [paid]
    assert await vendor.listed(status=ful.ENTITLEMENT_STATUS_EXPIRED) == []
    assert await vendor.history(trial.entitlement_id) == [
        (CREATED, "o-trial"),
        (TRIAL_CONVERTED, "o-convert"),
    ]
    # The key works again.
    seat = await vendor.licensing.ActivateSeat(activation(trial.license_key, "device-0001"))
    assert seat.entitlement.status == lic.ENTITLEMENT_STATUS_ACTIVE


# --- 4. renew --------------------------------------------------------------------


async def test_renew_live_extends_from_the_end_date(vendor: Vendor) -> None:
    sub = await vendor.create("o-new", NEW_SUBSCRIPTION, quantity=3)
    end = when(sub.end_time)
    response = await vendor.fulfil("o-renew", line(RENEW, entitlement_id=sub.entitlement_id))
    (renewed,) = response.entitlements
    assert when(renewed.end_time) == term_after("P1Y", end)
    assert renewed.start_time == sub.start_time
    assert renewed.status == ful.ENTITLEMENT_STATUS_ACTIVE
    assert renewed.seats == 3
    assert list(response.order.results[0].operations) == ["renew"]

    twice = await vendor.fulfil("o-renew-2", line(RENEW, 2, entitlement_id=sub.entitlement_id))
    assert when(twice.entitlements[0].end_time) == term_after("P1Y", when(renewed.end_time), 2)
    assert await vendor.entitlement(sub.entitlement_id) == twice.entitlements[0]
    assert await vendor.history(sub.entitlement_id) == [
        (CREATED, "o-new"),
        (RENEWED, "o-renew"),
        (RENEWED, "o-renew-2"),
    ]


async def test_renew_expired_starts_from_now(vendor: Vendor) -> None:
    sub = await vendor.create("o-new", NEW_SUBSCRIPTION)
    grace = sub.grace_period.ToTimedelta()
    move_clock_to(vendor.app, when(sub.end_time) + grace + timedelta(days=1))
    expired = await vendor.entitlement(sub.entitlement_id)
    assert expired.status == ful.ENTITLEMENT_STATUS_EXPIRED
    assert await vendor.listed(status=ful.ENTITLEMENT_STATUS_EXPIRED) == [expired]
    failure = await vendor.refused(
        vendor.licensing.ActivateSeat(activation(sub.license_key, "device-0001"))
    )
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ENTITLEMENT_EXPIRED",
    )
    before = clock_of(vendor.app).now()
    response = await vendor.fulfil("o-renew", line(RENEW, entitlement_id=sub.entitlement_id))
    after = clock_of(vendor.app).now()
    (renewed,) = response.entitlements
    start = when(renewed.start_time)
    assert before <= start <= after
    assert when(renewed.end_time) == term_after("P1Y", start)
    assert renewed.status == ful.ENTITLEMENT_STATUS_ACTIVE
    assert await vendor.listed(status=ful.ENTITLEMENT_STATUS_ACTIVE) == [renewed]
    assert await vendor.listed(status=ful.ENTITLEMENT_STATUS_EXPIRED) == []
    assert await vendor.history(sub.entitlement_id) == [(CREATED, "o-new"), (RENEWED, "o-renew")]
    seat = await vendor.licensing.ActivateSeat(activation(sub.license_key, "device-0001"))
    assert seat.entitlement.end_time == renewed.end_time


async def test_renew_within_grace_extends_from_the_end_date(vendor: Vendor) -> None:
    sub = await vendor.create("o-new", NEW_SUBSCRIPTION)
    end = when(sub.end_time)
    seat = await vendor.licensing.ActivateSeat(activation(sub.license_key, "device-0001"))
    move_clock_to(vendor.app, end + sub.grace_period.ToTimedelta() - timedelta(days=1))
    in_grace = await vendor.entitlement(sub.entitlement_id)
    assert clock_of(vendor.app).now() > end
    assert in_grace.status == ful.ENTITLEMENT_STATUS_ACTIVE  # still live: within grace
    assert await vendor.listed(status=ful.ENTITLEMENT_STATUS_ACTIVE) == [in_grace]
    # Leases still renew during the grace period.
    lease = await vendor.licensing.RenewLease(lic.RenewLeaseRequest(lease_token=seat.lease.token))
    assert lease.entitlement.status == lic.ENTITLEMENT_STATUS_ACTIVE
    response = await vendor.fulfil("o-renew", line(RENEW, entitlement_id=sub.entitlement_id))
    (renewed,) = response.entitlements
    assert when(renewed.end_time) == term_after("P1Y", end)
    assert renewed.start_time == sub.start_time
    assert renewed.status == ful.ENTITLEMENT_STATUS_ACTIVE


async def test_renewing_a_perpetual_is_refused(vendor: Vendor) -> None:
    perpetual = await vendor.create("o-perpetual", PERPETUAL)
    assert perpetual.perpetual
    assert not perpetual.HasField("end_time")
    failure = await vendor.refused_without_writes(
        order_of("o-renew", line(RENEW, entitlement_id=perpetual.entitlement_id))
    )
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ENTITLEMENT_PERPETUAL",
    )
    assert failure.metadata == {"entitlement_id": perpetual.entitlement_id, "line": "0"}


# --- 5. renew with upselling -------------------------------------------------------


async def test_renew_with_upselling_sku(vendor: Vendor, shipped: Shipped) -> None:
    sub = await vendor.create("o-new", NEW_SUBSCRIPTION)
    response = await vendor.fulfil(
        "o-upsell", line(RENEW_PLUS_SYNC, entitlement_id=sub.entitlement_id)
    )
    (renewed,) = response.entitlements
    assert when(renewed.end_time) == term_after("P1Y", when(sub.end_time))
    added = shipped.added_features(RENEW_PLUS_SYNC)
    assert "cloud-sync" in added
    assert features_of(renewed.features) == {**shipped.edition_features("standard"), **added}
    assert renewed.edition_id == "standard"
    assert list(response.order.results[0].operations) == ["renew", "add_features"]
    assert await vendor.entitlement(sub.entitlement_id) == renewed
    assert await vendor.history(sub.entitlement_id) == [
        (CREATED, "o-new"),
        (RENEWED, "o-upsell"),
        (FEATURES_CHANGED, "o-upsell"),
    ]


async def test_renew_and_add_seats_in_one_order(vendor: Vendor) -> None:
    sub = await vendor.create("o-new", NEW_SUBSCRIPTION, quantity=3)
    target = sub.entitlement_id
    response = await vendor.fulfil(
        "o-upsell", line(RENEW, entitlement_id=target), line(ADD_SEAT, 3, entitlement_id=target)
    )
    (renewed,) = response.entitlements  # one entitlement changed by both lines
    assert renewed.seats == 6
    assert when(renewed.end_time) == term_after("P1Y", when(sub.end_time))
    assert [
        (r.line_index, r.sku_id, r.entitlement_id, list(r.operations))
        for r in response.order.results
    ] == [
        (0, RENEW, target, ["renew"]),
        (1, ADD_SEAT, target, ["add_seats"]),
    ]
    assert await vendor.entitlement(target) == renewed
    events = await vendor.events(target)
    assert [(e.type, e.order_id) for e in events] == [
        (CREATED, "o-new"),
        (RENEWED, "o-upsell"),
        (SEATS_CHANGED, "o-upsell"),
    ]
    # Each event records the entitlement as it stood right after its own change.
    assert (events[1].entitlement.seats, events[1].entitlement.end_time) == (3, renewed.end_time)
    assert (events[2].entitlement.seats, events[2].entitlement.end_time) == (6, renewed.end_time)


# --- 6. renew with a reduced tier ----------------------------------------------------


async def test_renew_with_reduced_tier_sku(vendor: Vendor, shipped: Shipped) -> None:
    sub = await vendor.create("o-new", NEW_SUBSCRIPTION)
    target = sub.entitlement_id
    standard = shipped.edition_features("standard")
    # On Pro with both sync add-ons; then both removed, and cloud-sync alone sold again.
    await vendor.fulfil("o-addon", line(ADDON_SYNC, entitlement_id=target))
    await vendor.fulfil("o-up", line(UPGRADE_PRO, entitlement_id=target))
    await vendor.fulfil("o-addon-off", line(ADDON_SYNC_REMOVE, entitlement_id=target))
    upsold = await vendor.fulfil("o-upsell", line(RENEW_PLUS_SYNC, entitlement_id=target))
    pro = upsold.entitlements[0]
    assert pro.edition_id == "pro"
    re_added = shipped.added_features(RENEW_PLUS_SYNC)
    still_removed = set(shipped.added_features(ADDON_SYNC)) - set(re_added)
    assert still_removed  # sync-storage-gb: an add-on once, removed since
    assert still_removed <= shipped.removed_features(ADDON_SYNC_REMOVE)

    response = await vendor.fulfil("o-down", line(RENEW_DOWN_STD, entitlement_id=target))
    (down,) = response.entitlements
    assert down.edition_id == "standard"
    # The standard edition's features, plus the add-ons, minus the removals.
    assert features_of(down.features) == {**standard, **re_added}
    assert "export-dwg" not in features_of(down.features)  # a Pro feature
    assert when(down.end_time) == term_after("P1Y", when(pro.end_time))
    assert list(response.order.results[0].operations) == ["renew", "change_edition"]
    assert await vendor.entitlement(target) == down
    assert await vendor.history(target) == [
        (CREATED, "o-new"),
        (FEATURES_CHANGED, "o-addon"),
        (EDITION_CHANGED, "o-up"),
        (FEATURES_CHANGED, "o-addon-off"),
        (RENEWED, "o-upsell"),
        (FEATURES_CHANGED, "o-upsell"),
        (RENEWED, "o-down"),
        (EDITION_CHANGED, "o-down"),
    ]


async def test_renew_and_remove_seats_in_one_order(vendor: Vendor) -> None:
    sub = await vendor.create("o-new", NEW_SUBSCRIPTION, quantity=3)
    target = sub.entitlement_id
    response = await vendor.fulfil(
        "o-reduce", line(RENEW, entitlement_id=target), line(REMOVE_SEAT, 2, entitlement_id=target)
    )
    (reduced,) = response.entitlements
    assert reduced.seats == 1
    assert when(reduced.end_time) == term_after("P1Y", when(sub.end_time))
    assert [list(r.operations) for r in response.order.results] == [["renew"], ["remove_seats"]]
    assert await vendor.entitlement(target) == reduced
    assert await vendor.history(target) == [
        (CREATED, "o-new"),
        (RENEWED, "o-reduce"),
        (SEATS_CHANGED, "o-reduce"),
    ]


# --- 7. seats ----------------------------------------------------------------------


async def test_add_and_remove_seats(vendor: Vendor) -> None:
    sub = await vendor.create("o-new", NEW_SUBSCRIPTION, quantity=3)
    target = sub.entitlement_id
    added = await vendor.fulfil("o-add", line(ADD_SEAT, 2, entitlement_id=target))
    assert added.entitlements[0].seats == 5
    assert list(added.order.results[0].operations) == ["add_seats"]
    removed = await vendor.fulfil("o-remove", line(REMOVE_SEAT, 4, entitlement_id=target))
    assert removed.entitlements[0].seats == 1
    assert list(removed.order.results[0].operations) == ["remove_seats"]
    # Dates and edition are untouched by seat changes.
    fetched = await vendor.entitlement(target)
    assert (fetched.seats, fetched.end_time, fetched.edition_id) == (1, sub.end_time, "standard")

    failure = await vendor.refused_without_writes(
        order_of("o-remove-last", line(REMOVE_SEAT, entitlement_id=target))
    )
    assert (failure.code, failure.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SEAT_MINIMUM")
    assert failure.metadata == {"entitlement_id": target, "line": "0", "seats": "1"}
    assert await vendor.history(target) == [
        (CREATED, "o-new"),
        (SEATS_CHANGED, "o-add"),
        (SEATS_CHANGED, "o-remove"),
    ]


# --- 8. add-on features ----------------------------------------------------------------


async def test_addon_survives_edition_change_and_removed_feature_stays_removed(
    vendor: Vendor, shipped: Shipped
) -> None:
    sub = await vendor.create("o-new", NEW_SUBSCRIPTION)
    target = sub.entitlement_id
    addon = shipped.added_features(ADDON_SYNC)
    standard, pro = shipped.edition_features("standard"), shipped.edition_features("pro")

    with_addon = await vendor.fulfil("o-addon", line(ADDON_SYNC, entitlement_id=target))
    assert features_of(with_addon.entitlements[0].features) == {**standard, **addon}
    upgraded = await vendor.fulfil("o-up", line(UPGRADE_PRO, entitlement_id=target))
    assert upgraded.entitlements[0].edition_id == "pro"
    assert features_of(upgraded.entitlements[0].features) == {**pro, **addon}

    removed = await vendor.fulfil("o-addon-off", line(ADDON_SYNC_REMOVE, entitlement_id=target))
    assert features_of(removed.entitlements[0].features) == pro
    downgraded = await vendor.fulfil("o-down", line(DOWNGRADE_STD, entitlement_id=target))
    assert downgraded.entitlements[0].edition_id == "standard"
    assert features_of(downgraded.entitlements[0].features) == standard
    assert await vendor.entitlement(target) == downgraded.entitlements[0]
    assert await vendor.history(target) == [
        (CREATED, "o-new"),
        (FEATURES_CHANGED, "o-addon"),
        (EDITION_CHANGED, "o-up"),
        (FEATURES_CHANGED, "o-addon-off"),
        (EDITION_CHANGED, "o-down"),
    ]


async def test_removed_edition_feature_stays_removed_across_edition_changes(
    vendor: Vendor,
    shipped: Shipped,
    catalog_stub: catalog_pb2_grpc.CatalogServiceStub,
    tokens: Tokens,
) -> None:
    # The shipped removal SKU only removes add-ons, which no edition has; this test-only SKU
    # removes a feature that both editions grant, so an edition change could bring it back.
    assert "export-pdf" in shipped.edition_features("standard")
    assert "export-pdf" in shipped.edition_features("pro")
    no_pdf = cat.Sku(
        sku_id="TEST-NO-PDF",
        product_id=PRODUCT,
        display_name="test: PDF export removed",
        operations=[
            cat.Operation(remove_features=cat.RemoveFeaturesOperation(feature_names=["export-pdf"]))
        ],
    )
    await catalog_stub.PutSku(cat.PutSkuRequest(sku=no_pdf), metadata=tokens("catalog"))
    sub = await vendor.create("o-new", NEW_SUBSCRIPTION)
    target = sub.entitlement_id
    await vendor.fulfil("o-no-pdf", line("TEST-NO-PDF", entitlement_id=target))
    upgraded = await vendor.fulfil("o-up", line(UPGRADE_PRO, entitlement_id=target))
    pro = shipped.edition_features("pro")
    assert features_of(upgraded.entitlements[0].features) == {
        k: v for k, v in pro.items() if k != "export-pdf"
    }
    downgraded = await vendor.fulfil("o-down", line(RENEW_DOWN_STD, entitlement_id=target))
    standard = shipped.edition_features("standard")
    assert features_of(downgraded.entitlements[0].features) == {
        k: v for k, v in standard.items() if k != "export-pdf"
    }


# --- 9. upgrade edition ---------------------------------------------------------------


async def test_upgrade_keeps_activations(vendor: Vendor, shipped: Shipped) -> None:
    sub = await vendor.create("o-new", NEW_SUBSCRIPTION)
    seat = await vendor.licensing.ActivateSeat(activation(sub.license_key, "device-0001"))
    assert seat.entitlement.edition_id == "standard"
    response = await vendor.fulfil("o-up", line(UPGRADE_PRO, entitlement_id=sub.entitlement_id))
    (upgraded,) = response.entitlements
    assert upgraded.edition_id == "pro"
    assert features_of(upgraded.features) == shipped.edition_features("pro")
    assert upgraded.seats_in_use == 1  # the activation is still there
    assert (upgraded.end_time, upgraded.seats) == (sub.end_time, sub.seats)
    assert list(response.order.results[0].operations) == ["change_edition"]

    renewed = await vendor.licensing.RenewLease(lic.RenewLeaseRequest(lease_token=seat.lease.token))
    claims = verify_lease(renewed.lease.token, await vendor.jwks())
    assert claims["sub"] == seat.activation_id
    assert claims["edition"] == "pro"
    assert claims["features"] == shipped.edition_features("pro")
    assert renewed.entitlement.edition_id == "pro"
    assert renewed.entitlement.seats_in_use == 1
    assert await vendor.history(sub.entitlement_id) == [
        (CREATED, "o-new"),
        (SEAT_ACTIVATED, seat.activation_id),
        (EDITION_CHANGED, "o-up"),
    ]


# --- 10. cancel ----------------------------------------------------------------------


async def test_cancel(vendor: Vendor) -> None:
    sub = await vendor.create("o-new", NEW_SUBSCRIPTION, quantity=3)
    target = sub.entitlement_id
    seat = await vendor.licensing.ActivateSeat(activation(sub.license_key, "device-0001"))
    response = await vendor.fulfil("o-cancel", line(CANCEL, entitlement_id=target))
    (cancelled,) = response.entitlements
    assert cancelled.status == ful.ENTITLEMENT_STATUS_CANCELLED
    assert (cancelled.end_time, cancelled.seats) == (sub.end_time, sub.seats)
    assert list(response.order.results[0].operations) == ["cancel"]
    assert await vendor.entitlement(target) == cancelled

    licensing = vendor.licensing
    refusals = [
        await vendor.refused(licensing.ActivateSeat(activation(sub.license_key, "device-0002"))),
        await vendor.refused(licensing.ActivateSeat(activation(sub.license_key, "device-0001"))),
        await vendor.refused(
            licensing.RenewLease(lic.RenewLeaseRequest(lease_token=seat.lease.token))
        ),
    ]
    assert {(f.code, f.reason) for f in refusals} == {
        (grpc.StatusCode.FAILED_PRECONDITION, "ENTITLEMENT_CANCELLED")
    }

    for sku_id in (RENEW, ADD_SEAT, UPGRADE_PRO, CANCEL):
        failure = await vendor.refused_without_writes(
            order_of(f"o-after-{sku_id}", line(sku_id, entitlement_id=target))
        )
        assert (failure.code, failure.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "ENTITLEMENT_CANCELLED",
        ), sku_id
        assert failure.metadata == {"entitlement_id": target, "line": "0"}
    assert await vendor.history(target) == [
        (CREATED, "o-new"),
        (SEAT_ACTIVATED, seat.activation_id),
        (CANCELLED, "o-cancel"),
    ]


# --- 10b. suspend on a failed payment, reinstate once paid --------------------------


async def test_suspend_and_reinstate_keep_the_devices(vendor: Vendor) -> None:
    sub = await vendor.create("o-new", NEW_SUBSCRIPTION, quantity=2, reference="stripe:sub_9")
    seat = await vendor.licensing.ActivateSeat(activation(sub.license_key, "device-0001"))
    by_reference = ful.OrderLine(sku_id=SUSPEND, quantity=1, external_reference="stripe:sub_9")
    response = await vendor.fulfil("o-failed", by_reference)
    (suspended,) = response.entitlements
    assert suspended.status == ful.ENTITLEMENT_STATUS_SUSPENDED
    assert (suspended.seats_in_use, suspended.end_time) == (1, sub.end_time)
    licensing = vendor.licensing
    refusals = [
        await vendor.refused(licensing.ActivateSeat(activation(sub.license_key, "device-0002"))),
        await vendor.refused(
            licensing.RenewLease(lic.RenewLeaseRequest(lease_token=seat.lease.token))
        ),
    ]
    assert {(f.code, f.reason) for f in refusals} == {
        (grpc.StatusCode.FAILED_PRECONDITION, "ENTITLEMENT_SUSPENDED")
    }
    paid = ful.OrderLine(sku_id=REINSTATE, quantity=1, external_reference="stripe:sub_9")
    (reinstated,) = (await vendor.fulfil("o-paid", paid)).entitlements
    assert reinstated.status == ful.ENTITLEMENT_STATUS_ACTIVE
    renewed = await licensing.RenewLease(lic.RenewLeaseRequest(lease_token=seat.lease.token))
    assert verify_lease(renewed.lease.token, await vendor.jwks())["sub"] == seat.activation_id
    assert renewed.entitlement.seats_in_use == 1
    assert await vendor.history(sub.entitlement_id) == [
        (CREATED, "o-new"),
        (SEAT_ACTIVATED, seat.activation_id),
        (ful.ENTITLEMENT_EVENT_TYPE_SUSPENDED, "o-failed"),
        (ful.ENTITLEMENT_EVENT_TYPE_REINSTATED, "o-paid"),
    ]


# --- 11. view the entitlement ---------------------------------------------------------


async def test_view_entitlement_and_its_history(vendor: Vendor) -> None:
    other = await vendor.create("o-other", NEW_SUBSCRIPTION, reference="stripe:sub_other")
    sub = await vendor.create("o-new", NEW_SUBSCRIPTION, quantity=2, reference="stripe:sub_123")
    target = sub.entitlement_id
    await vendor.fulfil("o-renew", line(RENEW, entitlement_id=target))
    seat = await vendor.licensing.ActivateSeat(activation(sub.license_key, "device-0001"))
    await vendor.fulfil("o-seats", line(ADD_SEAT, entitlement_id=target))
    await vendor.fulfil("o-upsell", line(RENEW_PLUS_SYNC, reference="stripe:sub_123"))

    fetched = await vendor.entitlement(target)
    assert (fetched.seats, fetched.seats_in_use, fetched.license_key) == (3, 1, "")
    assert list(fetched.external_references) == ["stripe:sub_123"]
    first_end = term_after("P1Y", when(sub.end_time))
    assert when(fetched.end_time) == term_after("P1Y", first_end)

    assert await vendor.listed(reference="stripe:sub_123") == [fetched]
    assert [e.entitlement_id for e in await vendor.listed(reference="stripe:sub_other")] == [
        other.entitlement_id
    ]

    events = await vendor.events(target)
    assert [(e.type, e.order_source, e.order_id, e.activation_id) for e in events] == [
        (CREATED, SOURCE, "o-new", ""),
        (RENEWED, SOURCE, "o-renew", ""),
        (SEAT_ACTIVATED, "", "", seat.activation_id),
        (SEATS_CHANGED, SOURCE, "o-seats", ""),
        (RENEWED, SOURCE, "o-upsell", ""),
        (FEATURES_CHANGED, SOURCE, "o-upsell", ""),
    ]
    assert all(e.entitlement_id == target for e in events)
    sequences = [e.sequence for e in events]
    assert sequences == sorted(set(sequences))
    # Each event shows the entitlement as it stood right after the change.
    assert [e.entitlement.seats for e in events] == [2, 2, 2, 3, 3, 3]
    assert [e.entitlement.seats_in_use for e in events] == [0, 0, 1, 1, 1, 1]
    assert when(events[0].entitlement.end_time) == when(sub.end_time)
    assert when(events[1].entitlement.end_time) == first_end
    assert events[4].entitlement.end_time == fetched.end_time
    assert "cloud-sync" not in features_of(events[4].entitlement.features)
    assert features_of(events[5].entitlement.features) == features_of(fetched.features)
    assert "cloud-sync" in features_of(fetched.features)


# --- external references ----------------------------------------------------------------


async def test_renew_by_external_reference_and_attach_one(vendor: Vendor) -> None:
    sub = await vendor.create("o-new", NEW_SUBSCRIPTION, reference="stripe:sub_123")
    assert list(sub.external_references) == ["stripe:sub_123"]
    response = await vendor.fulfil("o-renew", line(RENEW, reference="stripe:sub_123"))
    (renewed,) = response.entitlements
    assert renewed.entitlement_id == sub.entitlement_id
    assert response.order.results[0].entitlement_id == sub.entitlement_id
    assert when(renewed.end_time) == term_after("P1Y", when(sub.end_time))

    attached = await vendor.fulfil(
        "o-seat", line(ADD_SEAT, entitlement_id=sub.entitlement_id, reference="crm:opp_9")
    )
    assert attached.entitlements[0].seats == 2
    assert sorted(attached.entitlements[0].external_references) == ["crm:opp_9", "stripe:sub_123"]
    listed = await vendor.fulfillment.ListEntitlements(
        ful.ListEntitlementsRequest(external_reference="crm:opp_9"), metadata=vendor.tokens("read")
    )
    assert [e.entitlement_id for e in listed.entitlements] == [sub.entitlement_id]
    # A reference attached elsewhere cannot be attached again.
    other = await vendor.create("o-other", NEW_SUBSCRIPTION, reference="stripe:sub_456")
    failure = await vendor.refused_without_writes(
        order_of(
            "o-steal", line(ADD_SEAT, entitlement_id=sub.entitlement_id, reference="stripe:sub_456")
        )
    )
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "EXTERNAL_REFERENCE_TAKEN",
    )
    assert failure.metadata == {"external_reference": "stripe:sub_456", "line": "0"}
    assert list((await vendor.entitlement(other.entitlement_id)).external_references) == [
        "stripe:sub_456"
    ]
    # The new reference now targets it too.
    by_new = await vendor.fulfil("o-seat-2", line(ADD_SEAT, reference="crm:opp_9"))
    assert (by_new.entitlements[0].entitlement_id, by_new.entitlements[0].seats) == (
        sub.entitlement_id,
        3,
    )
    assert await vendor.history(sub.entitlement_id) == [
        (CREATED, "o-new"),
        (RENEWED, "o-renew"),
        (SEATS_CHANGED, "o-seat"),
        (SEATS_CHANGED, "o-seat-2"),
    ]


# --- seats reduced below seats in use -----------------------------------------------------


async def test_removing_seats_in_use_refuses_the_newest_at_renewal(vendor: Vendor) -> None:
    sub = await vendor.create("o-new", NEW_SUBSCRIPTION, quantity=3)
    target = sub.entitlement_id
    # Activate one device a second after the other, ending at the real time (so that the
    # leases' nbf is not in the future for the offline check below).
    move_clock_by(vendor.app, -timedelta(seconds=3))
    seats = []
    for name in ("device-oldest", "device-middle", "device-newest"):
        move_clock_by(vendor.app, timedelta(seconds=1))
        seats.append(await vendor.licensing.ActivateSeat(activation(sub.license_key, name)))
    oldest, middle, newest = seats
    assert newest.entitlement.seats_in_use == 3

    response = await vendor.fulfil("o-reduce", line(REMOVE_SEAT, 2, entitlement_id=target))
    (reduced,) = response.entitlements
    assert (reduced.seats, reduced.seats_in_use, reduced.seats_over) == (1, 3, 2)
    # No lease is cut off: all three still verify, and all still count as in use.
    jwks = await vendor.jwks()
    for seat in seats:
        assert verify_lease(seat.lease.token, jwks)["sub"] == seat.activation_id
    fetched = await vendor.entitlement(target)
    assert (fetched.seats, fetched.seats_in_use, fetched.seats_over) == (1, 3, 2)
    # No new device gets a seat meanwhile.
    failure = await vendor.refused(
        vendor.licensing.ActivateSeat(activation(sub.license_key, "device-fourth"))
    )
    assert (failure.code, failure.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "SEATS_EXHAUSTED")

    # At their next renewal the two most recently activated are refused; the oldest renews.
    for refused in (newest, middle):
        failure = await vendor.refused(
            vendor.licensing.RenewLease(lic.RenewLeaseRequest(lease_token=refused.lease.token))
        )
        assert (failure.code, failure.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "SEATS_EXHAUSTED",
        )
    kept = await vendor.licensing.RenewLease(lic.RenewLeaseRequest(lease_token=oldest.lease.token))
    assert kept.entitlement.seats == 1

    # The oldest keeps renewing while the other two leases run out.
    move_clock_by(vendor.app, timedelta(minutes=10))
    kept = await vendor.licensing.RenewLease(lic.RenewLeaseRequest(lease_token=kept.lease.token))
    still_over = await vendor.entitlement(target)
    assert (still_over.seats_in_use, still_over.seats_over) == (3, 2)
    last_expiry = max(when(s.lease.expire_time) for s in (middle, newest))
    move_clock_to(vendor.app, last_expiry + LAPSE_GRACE + timedelta(seconds=1))
    assert when(kept.lease.expire_time) > clock_of(vendor.app).now()
    fitted = await vendor.entitlement(target)
    assert (fitted.seats, fitted.seats_in_use, fitted.seats_over) == (1, 1, 0)
    again = await vendor.licensing.RenewLease(lic.RenewLeaseRequest(lease_token=kept.lease.token))
    assert again.entitlement.seats_in_use == 1


# --- atomic orders ---------------------------------------------------------------------------


async def test_order_whose_second_line_fails_writes_nothing(vendor: Vendor) -> None:
    live = await vendor.create("o-live", NEW_SUBSCRIPTION, quantity=3)
    gone = await vendor.create("o-gone", NEW_SUBSCRIPTION)
    await vendor.fulfil("o-cancel", line(CANCEL, entitlement_id=gone.entitlement_id))
    unknown = "ent_00000000000000000000000000"
    counts = await row_counts(vendor.app.store)
    cases = [
        # The first line would renew, add seats and attach a reference; the second fails.
        (unknown, grpc.StatusCode.NOT_FOUND, "ENTITLEMENT_NOT_FOUND"),
        (gone.entitlement_id, grpc.StatusCode.FAILED_PRECONDITION, "ENTITLEMENT_CANCELLED"),
    ]
    for second_target, code, reason in cases:
        order_id = f"o-mixed-{reason.lower()}"
        failure = await vendor.refused_without_writes(
            order_of(
                order_id,
                line(RENEW_PLUS_SYNC, entitlement_id=live.entitlement_id, reference="crm:opp_1"),
                line(ADD_SEAT, 2, entitlement_id=live.entitlement_id),
                line(RENEW, entitlement_id=second_target),
            )
        )
        assert (failure.code, failure.reason) == (code, reason)
        assert failure.metadata == {"entitlement_id": second_target, "line": "2"}
        missing = await vendor.refused(
            vendor.fulfillment.GetOrder(
                ful.GetOrderRequest(source=SOURCE, order_id=order_id),
                metadata=vendor.tokens("read"),
            )
        )
        assert missing.reason == "ORDER_NOT_FOUND"
    assert await row_counts(vendor.app.store) == counts
    assert await vendor.entitlement(live.entitlement_id) == as_read(live)
    assert await vendor.listed(reference="crm:opp_1") == []
    assert await vendor.history(live.entitlement_id) == [(CREATED, "o-live")]


# --- idempotency of a change order --------------------------------------------------------------


async def test_change_order_sent_twice_renews_once_and_other_content_conflicts(
    vendor: Vendor,
) -> None:
    sub = await vendor.create("o-new", NEW_SUBSCRIPTION)
    request = order_of("o-renew", line(RENEW, entitlement_id=sub.entitlement_id))
    first = await vendor.send(request)
    before = await table_digests(vendor.app.store)
    again = await vendor.send(request)
    assert changed_tables(before, await table_digests(vendor.app.store)) == {}
    assert (first.replayed, again.replayed) == (False, True)
    assert when(again.entitlements[0].end_time) == term_after("P1Y", when(sub.end_time))
    same = ful.FulfillOrderResponse()
    same.CopyFrom(again)
    same.replayed = False
    assert same == first
    stored = await vendor.fulfillment.GetOrder(
        ful.GetOrderRequest(source=SOURCE, order_id="o-renew"), metadata=vendor.tokens("read")
    )
    assert stored.order == first.order

    # The same order key with other content is a conflict, and changes nothing either.
    failure = await vendor.refused_without_writes(
        order_of("o-renew", line(RENEW, 2, entitlement_id=sub.entitlement_id))
    )
    assert (failure.code, failure.reason) == (grpc.StatusCode.ALREADY_EXISTS, "ORDER_CONFLICT")
    assert failure.metadata == {"source": SOURCE, "order_id": "o-renew"}
    assert await vendor.history(sub.entitlement_id) == [(CREATED, "o-new"), (RENEWED, "o-renew")]


async def test_ten_concurrent_sends_of_a_renew_order_renew_once(vendor: Vendor) -> None:
    sub = await vendor.create("o-new", NEW_SUBSCRIPTION)
    request = order_of("o-renew", line(RENEW, entitlement_id=sub.entitlement_id))
    responses = await asyncio.gather(*(vendor.send(request) for _ in range(10)))
    assert sum(not r.replayed for r in responses) == 1
    expected_end = term_after("P1Y", when(sub.end_time))
    assert {when(r.entitlements[0].end_time) for r in responses} == {expected_end}
    assert when((await vendor.entitlement(sub.entitlement_id)).end_time) == expected_end
    assert await vendor.history(sub.entitlement_id) == [(CREATED, "o-new"), (RENEWED, "o-renew")]
    counts = await row_counts(vendor.app.store)
    assert (counts["orders"], counts["entitlement_events"]) == (2, 2)
