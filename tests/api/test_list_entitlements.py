"""ListEntitlements through a real server on both backends: filters, status by the clock, paging.

Status is computed from the dates when read, so the tests move the server's
clock (`app.clock.offset`) instead of waiting. Orders are placed one clock second
apart, so that every entitlement has a creation instant of its own and "oldest
first" has one right answer.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import duration_pb2

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.server.app.context import AppContext
from keyturn.server.clock import SystemClock
from keyturn.server.domain.catalog import Create
from keyturn.server.domain.entitlement import Customer, create_entitlement
from keyturn.server.domain.ids import new_id

from conftest import Tokens
from support.rpc import PRODUCT_ID, create_sku, product

Fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub
Catalog = catalog_pb2_grpc.CatalogServiceStub

OTHER_PRODUCT = "other-app"
GRACE = timedelta(days=7)
TRIAL = ful.ENTITLEMENT_STATUS_TRIAL
ACTIVE = ful.ENTITLEMENT_STATUS_ACTIVE
EXPIRED = ful.ENTITLEMENT_STATUS_EXPIRED
CANCELLED = ful.ENTITLEMENT_STATUS_CANCELLED

ALICE = ful.Customer(customer_id="cust-a", name="Alpha", email="a@alpha.example")
BOB = ful.Customer(customer_id="cust-b", name="Beta", email="b@beta.example")
CAROL = ful.Customer(customer_id="cust-c", name="Gamma", email="c@gamma.example")


def _change_sku(sku_id: str, operation: cat.Operation) -> cat.Sku:
    return cat.Sku(
        sku_id=sku_id, product_id=PRODUCT_ID, display_name=sku_id, operations=[operation]
    )


def _grace_sku() -> cat.Sku:
    sku = create_sku("SUB-GRACE")
    sku.operations[0].create.grace_period.CopyFrom(
        duration_pb2.Duration(seconds=int(GRACE.total_seconds()))
    )
    return sku


SKUS = (
    create_sku("SUB"),
    _grace_sku(),
    create_sku("TRIAL", term="P14D", trial=True),
    create_sku("PERP", term=""),
    create_sku("OTHER", product_id=OTHER_PRODUCT),
    _change_sku("CANCEL", cat.Operation(cancel=cat.CancelOperation())),
    _change_sku("ADD-SEATS", cat.Operation(add_seats=cat.AddSeatsOperation(seats_per_unit=1))),
    _change_sku("RENEW", cat.Operation(renew=cat.RenewOperation(term="P1Y"))),
    _change_sku("CONVERT", cat.Operation(convert_trial=cat.ConvertTrialOperation(term="P1Y"))),
)


def flat(pages: Iterable[list[str]]) -> list[str]:
    return list(itertools.chain.from_iterable(pages))


def system_clock(app: AppContext) -> SystemClock:
    assert isinstance(app.clock, SystemClock)
    return app.clock


@dataclass
class Shop:
    """Places orders through the API, one clock second apart."""

    app: AppContext
    fulfillment: Fulfillment
    tokens: Tokens
    orders: int = 0

    async def buy(
        self,
        sku_id: str,
        customer: ful.Customer = ALICE,
        ship_to: str = "",
        reference: str = "",
        target: str = "",
        lines: int = 1,
    ) -> list[ful.Entitlement]:
        system_clock(self.app).offset += timedelta(seconds=1)
        self.orders += 1
        request = ful.FulfillOrderRequest(
            source="test",
            order_id=f"order-{self.orders}",
            customer=customer,
            ship_to_email=ship_to,
            lines=[
                ful.OrderLine(
                    sku_id=sku_id, quantity=1, entitlement_id=target, external_reference=reference
                )
                for _ in range(lines)
            ],
        )
        response = await self.fulfillment.FulfillOrder(request, metadata=self.tokens("fulfill"))
        return list(response.entitlements)

    async def one(
        self,
        sku_id: str,
        customer: ful.Customer = ALICE,
        ship_to: str = "",
        reference: str = "",
    ) -> ful.Entitlement:
        (entitlement,) = await self.buy(sku_id, customer, ship_to, reference)
        return entitlement

    async def page(self, **fields: object) -> ful.ListEntitlementsResponse:
        request = ful.ListEntitlementsRequest(**fields)  # type: ignore[arg-type]
        return await self.fulfillment.ListEntitlements(request, metadata=self.tokens("read"))

    async def ids(self, **filters: object) -> list[str]:
        """Every entitlement matching the filters, from one page (checking it is the only one)."""
        response = await self.page(page_size=500, **filters)
        assert response.next_page_token == ""
        status = filters.get("status")
        if status:
            assert {e.status for e in response.entitlements} <= {status}
        return [e.entitlement_id for e in response.entitlements]

    async def all_pages(self, page_size: int, **filters: object) -> list[list[str]]:
        pages: list[list[str]] = []
        token = ""
        while True:
            response = await self.page(page_size=page_size, page_token=token, **filters)
            pages.append([e.entitlement_id for e in response.entitlements])
            token = response.next_page_token
            if not token:
                return pages
            assert len(pages) < 100


@pytest.fixture
async def shop(
    app: AppContext, catalog_stub: Catalog, fulfillment_stub: Fulfillment, tokens: Tokens
) -> Shop:
    auth = tokens("catalog")
    for each in (product(), product(OTHER_PRODUCT)):
        await catalog_stub.PutProduct(cat.PutProductRequest(product=each), metadata=auth)
    for sku in SKUS:
        await catalog_stub.PutSku(cat.PutSkuRequest(sku=sku), metadata=auth)
    return Shop(app, fulfillment_stub, tokens)


@dataclass
class Six:
    """Six entitlements of three customers, in creation order."""

    sub_a: ful.Entitlement  # Alice, shipped to her own address, stripe:sub_a
    trial_a: ful.Entitlement  # Alice, trial of 14 days, shipped to ops@alpha
    perp_b: ful.Entitlement  # Bob, perpetual, shipped to Alice's address
    other_b: ful.Entitlement  # Bob, of the other product, shipped to ops@alpha
    grace_c: ful.Entitlement  # Carol, 7 days of grace, crm:c-1 and (attached later) crm:c-2
    cancel_c: ful.Entitlement  # Carol, cancelled

    def ids(self, *names: str) -> list[str]:
        return [getattr(self, name).entitlement_id for name in names]

    @property
    def all(self) -> list[str]:
        return self.ids("sub_a", "trial_a", "perp_b", "other_b", "grace_c", "cancel_c")


async def six_entitlements(shop: Shop) -> Six:
    sub_a = await shop.one("SUB", reference="stripe:sub_a")
    trial_a = await shop.one("TRIAL", ship_to="ops@alpha.example")
    perp_b = await shop.one("PERP", customer=BOB, ship_to="a@alpha.example")
    other_b = await shop.one("OTHER", customer=BOB, ship_to="ops@alpha.example")
    grace_c = await shop.one("SUB-GRACE", customer=CAROL, reference="crm:c-1")
    cancel_c = await shop.one("SUB", customer=CAROL)
    await shop.buy("CANCEL", customer=CAROL, target=cancel_c.entitlement_id)
    await shop.buy("ADD-SEATS", target=grace_c.entitlement_id, reference="crm:c-2")
    assert sub_a.ship_to_email == "a@alpha.example"  # defaulted to the customer's email
    return Six(sub_a, trial_a, perp_b, other_b, grace_c, cancel_c)


async def test_each_filter_alone_and_combined(shop: Shop) -> None:
    six = await six_entitlements(shop)
    cases: list[tuple[dict[str, object], list[str]]] = [
        ({}, six.all),
        ({"customer_id": "cust-a"}, six.ids("sub_a", "trial_a")),
        ({"customer_id": "cust-b"}, six.ids("perp_b", "other_b")),
        ({"customer_id": "cust-c"}, six.ids("grace_c", "cancel_c")),
        ({"customer_id": "cust-z"}, []),
        # The customer's email or the ship-to email.
        ({"email": "a@alpha.example"}, six.ids("sub_a", "trial_a", "perp_b")),
        ({"email": "ops@alpha.example"}, six.ids("trial_a", "other_b")),
        ({"email": "b@beta.example"}, six.ids("perp_b", "other_b")),
        ({"email": "nobody@alpha.example"}, []),
        ({"product_id": PRODUCT_ID}, six.ids("sub_a", "trial_a", "perp_b", "grace_c", "cancel_c")),
        ({"product_id": OTHER_PRODUCT}, six.ids("other_b")),
        ({"product_id": "no-such-product"}, []),
        ({"status": TRIAL}, six.ids("trial_a")),
        ({"status": ACTIVE}, six.ids("sub_a", "perp_b", "other_b", "grace_c")),
        ({"status": EXPIRED}, []),
        ({"status": CANCELLED}, six.ids("cancel_c")),
        ({"external_reference": "stripe:sub_a"}, six.ids("sub_a")),
        ({"external_reference": "crm:c-1"}, six.ids("grace_c")),
        ({"external_reference": "crm:c-2"}, six.ids("grace_c")),  # attached by a later order
        ({"external_reference": "stripe:unknown"}, []),
        ({"customer_id": "cust-a", "status": TRIAL}, six.ids("trial_a")),
        ({"customer_id": "cust-a", "status": CANCELLED}, []),
        ({"email": "a@alpha.example", "status": ACTIVE}, six.ids("sub_a", "perp_b")),
        ({"email": "ops@alpha.example", "product_id": OTHER_PRODUCT}, six.ids("other_b")),
        ({"customer_id": "cust-b", "product_id": PRODUCT_ID}, six.ids("perp_b")),
        ({"customer_id": "cust-b", "email": "a@alpha.example"}, six.ids("perp_b")),
        ({"customer_id": "cust-a", "external_reference": "crm:c-1"}, []),
        ({"customer_id": "cust-c", "external_reference": "crm:c-2"}, six.ids("grace_c")),
        ({"status": CANCELLED, "product_id": OTHER_PRODUCT}, []),
        (
            {
                "customer_id": "cust-a",
                "email": "a@alpha.example",
                "product_id": PRODUCT_ID,
                "status": ACTIVE,
                "external_reference": "stripe:sub_a",
            },
            six.ids("sub_a"),
        ),
    ]
    for filters, expected in cases:
        assert await shop.ids(**filters) == expected, filters

    # What a listed entitlement says is what GetEntitlement says (never the key).
    listed = (await shop.page(external_reference="crm:c-2")).entitlements[0]
    got = await shop.fulfillment.GetEntitlement(
        ful.GetEntitlementRequest(entitlement_id=six.grace_c.entitlement_id),
        metadata=shop.tokens("read"),
    )
    assert listed == got.entitlement
    assert list(listed.external_references) == ["crm:c-1", "crm:c-2"]
    assert listed.seats == 2
    assert listed.license_key == ""
    assert listed.grace_period.ToTimedelta() == GRACE


async def test_status_follows_the_clock_and_the_grace_boundary(shop: Shop) -> None:
    six = await six_entitlements(shop)
    clock = system_clock(shop.app)

    async def statuses() -> dict[ful.EntitlementStatus.ValueType, list[str]]:
        found = {s: await shop.ids(status=s) for s in (TRIAL, ACTIVE, EXPIRED, CANCELLED)}
        listed = (await shop.page()).entitlements
        assert sorted(flat(found.values())) == sorted(e.entitlement_id for e in listed)
        return found

    def move_to(instant: datetime) -> None:
        clock.offset = instant - datetime.now(UTC)

    # The trial (14 days) has run out; the rest has not.
    clock.offset += timedelta(days=15)
    assert await statuses() == {
        TRIAL: [],
        ACTIVE: six.ids("sub_a", "perp_b", "other_b", "grace_c"),
        EXPIRED: six.ids("trial_a"),
        CANCELLED: six.ids("cancel_c"),
    }

    # A day after the one-year terms end: the one with grace is still live, cancelled stays so.
    grace_end = six.grace_c.end_time.ToDatetime(tzinfo=UTC)
    move_to(grace_end + timedelta(days=1))
    assert await statuses() == {
        TRIAL: [],
        ACTIVE: six.ids("perp_b", "grace_c"),
        EXPIRED: six.ids("sub_a", "trial_a", "other_b"),
        CANCELLED: six.ids("cancel_c"),
    }

    # Just before the end of its grace it is live; from that instant on it has expired.
    move_to(grace_end + GRACE - timedelta(seconds=30))
    assert await shop.ids(status=ACTIVE) == six.ids("perp_b", "grace_c")
    assert await shop.ids(status=EXPIRED, customer_id="cust-c") == []
    move_to(grace_end + GRACE)
    assert await shop.ids(status=ACTIVE) == six.ids("perp_b")
    assert await shop.ids(status=EXPIRED, customer_id="cust-c") == six.ids("grace_c")
    (listed,) = (await shop.page(external_reference="crm:c-1")).entitlements
    assert listed.status == EXPIRED

    # Renewing an expired entitlement and converting an expired trial make them live again.
    await shop.buy("RENEW", target=six.sub_a.entitlement_id)
    await shop.buy("CONVERT", target=six.trial_a.entitlement_id)
    assert await statuses() == {
        TRIAL: [],
        ACTIVE: six.ids("sub_a", "trial_a", "perp_b"),
        EXPIRED: six.ids("other_b", "grace_c"),
        CANCELLED: six.ids("cancel_c"),
    }

    # Back to the start: the statuses are computed from the dates, none was stored.
    clock.offset = timedelta(0)
    assert await statuses() == {
        TRIAL: [],
        ACTIVE: six.ids("sub_a", "trial_a", "perp_b", "other_b", "grace_c"),
        EXPIRED: [],
        CANCELLED: six.ids("cancel_c"),
    }


async def test_expired_entitlements_page_by_status(shop: Shop) -> None:
    six = await six_entitlements(shop)
    system_clock(shop.app).offset += timedelta(days=400)
    assert await shop.all_pages(1, status=EXPIRED) == [
        six.ids("sub_a"),
        six.ids("trial_a"),
        six.ids("other_b"),
        six.ids("grace_c"),
    ]
    assert await shop.all_pages(1, status=ACTIVE, email="a@alpha.example") == [six.ids("perp_b")]


async def test_pages_of_two_oldest_first_with_opaque_tokens(shop: Shop) -> None:
    made = [await shop.one("SUB", customer=BOB) for _ in range(5)]
    await shop.one("SUB", customer=CAROL)
    ids = [e.entitlement_id for e in made]

    first = await shop.page(customer_id="cust-b", page_size=2)
    second = await shop.page(customer_id="cust-b", page_size=2, page_token=first.next_page_token)
    third = await shop.page(customer_id="cust-b", page_size=2, page_token=second.next_page_token)
    pages = [first, second, third]
    assert [[e.entitlement_id for e in p.entitlements] for p in pages] == [
        ids[0:2],
        ids[2:4],
        ids[4:5],
    ]
    assert third.next_page_token == ""
    times = [e.create_time.ToDatetime() for p in pages for e in p.entitlements]
    assert times == sorted(times)
    assert len(set(times)) == 5
    for token in (first.next_page_token, second.next_page_token):
        assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
        assert not any(i in token for i in ids)
        assert "cust-b" not in token

    # The same token again gives the same page.
    again = await shop.page(customer_id="cust-b", page_size=2, page_token=first.next_page_token)
    assert again == second
    # Another page size may be asked for with the same token.
    rest = await shop.page(customer_id="cust-b", page_size=10, page_token=first.next_page_token)
    assert [e.entitlement_id for e in rest.entitlements] == ids[2:]
    assert rest.next_page_token == ""


async def test_page_token_stays_valid_when_entitlements_are_created_between_pages(
    shop: Shop,
) -> None:
    older = [await shop.one("SUB", customer=BOB) for _ in range(5)]
    first = await shop.page(customer_id="cust-b", page_size=2)
    newer = await shop.one("SUB", customer=BOB)
    await shop.one("SUB", customer=CAROL)
    seen = [e.entitlement_id for e in first.entitlements]
    token = first.next_page_token
    while token:
        page = await shop.page(customer_id="cust-b", page_size=2, page_token=token)
        seen += [e.entitlement_id for e in page.entitlements]
        token = page.next_page_token
    assert seen == [e.entitlement_id for e in [*older, newer]]

    # A page taken before a create, followed after it, has none twice and skips none.
    first = await shop.page(page_size=3)
    between = await shop.one("PERP", customer=CAROL)
    pages = [[e.entitlement_id for e in first.entitlements]]
    token = first.next_page_token
    while token:
        page = await shop.page(page_size=3, page_token=token)
        pages.append([e.entitlement_id for e in page.entitlements])
        token = page.next_page_token
    everything = flat(pages)
    assert len(everything) == len(set(everything)) == 8
    assert everything[-1] == between.entitlement_id
    assert everything == await shop.ids()


async def add_entitlements(app: AppContext, count: int, customer: ful.Customer) -> list[str]:
    """`count` entitlements of SKU SUB written straight through the store (the API would take
    seconds for as many), one clock millisecond apart; their ids in creation order."""
    ids: list[str] = []
    start = app.clock.now()
    async with app.store.write() as tx:
        sku = await tx.catalog.get_sku("SUB")
        made = await tx.catalog.get_product(PRODUCT_ID)
        assert sku is not None
        assert made is not None
        op = sku.operations[0]
        assert isinstance(op, Create)
        for n in range(count):
            now = start + timedelta(milliseconds=n)
            entitlement = create_entitlement(
                op,
                made,
                1,
                Customer(customer.customer_id, customer.name, customer.email),
                customer.email,
                now,
                new_id("ent", now),
            )
            await tx.entitlements.add(entitlement, None, "bulk", "bulk-1")
            ids.append(entitlement.entitlement_id)
    return ids


async def test_page_size_zero_means_50_and_above_500_is_capped(shop: Shop) -> None:
    ids = await add_entitlements(shop.app, 501, BOB)
    await shop.one("SUB", customer=CAROL)

    default = await shop.page(customer_id="cust-b")
    assert [e.entitlement_id for e in default.entitlements] == ids[:50]
    assert default.next_page_token

    capped = await shop.page(customer_id="cust-b", page_size=501)
    assert [e.entitlement_id for e in capped.entitlements] == ids[:500]
    assert capped.next_page_token
    rest = await shop.page(
        customer_id="cust-b", page_size=2**31 - 1, page_token=capped.next_page_token
    )
    assert [e.entitlement_id for e in rest.entitlements] == ids[500:]
    assert rest.next_page_token == ""
