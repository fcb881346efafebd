"""The comparison rules of `keyturn reconcile` and its source readers, without a server:
what each kind of mismatch says and orders, where no order can correct it, and the
exports' formats (Chargify's times, missing columns, bad values)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyturn.client.connectors.product_map import parse_product_map
from keyturn.client.connectors.reconcile import (
    MAX_ORDER_ID,
    Held,
    Kind,
    Mismatch,
    Subscription,
    order_id,
    reconcile,
)
from keyturn.client.connectors.reconcile_sources import (
    SourceError,
    chargify_subscriptions,
    csv_subscriptions,
    stripe_subscription,
)
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

NOW = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
YEAR = timedelta(days=365)
SKU = "CAD-STD-1Y"
REF = "stripe:sub_1"
BUYER = ful.Customer(customer_id="cus_1")


def held(
    *,
    seats: int = 1,
    end: datetime | None = NOW + YEAR,
    status: ful.EntitlementStatus.ValueType = ful.ENTITLEMENT_STATUS_ACTIVE,
    base_sku: str = SKU,
    per_unit: int = 1,
    term: timedelta | None = YEAR,
    grace: timedelta = timedelta(0),
) -> Held:
    ent = ful.Entitlement(entitlement_id="ent_1", seats=seats, status=status)
    if end is None:
        ent.perpetual = True
    else:
        ent.end_time.FromDatetime(end)
    ent.grace_period.FromTimedelta(grace)
    ent.update_time.FromDatetime(NOW - timedelta(hours=1))
    return Held(ent, REF, base_sku, per_unit, term)


def billed(quantity: int = 1, end: datetime | None = NOW + YEAR, sku: str = SKU) -> Subscription:
    return Subscription(REF, sku, quantity, end, BUYER, note="" if sku else "no lookup key")


def only(subscriptions: list[Subscription], entitlements: list[Held]) -> Mismatch:
    [mismatch] = reconcile(subscriptions, entitlements, now=NOW).mismatches
    return mismatch


def test_agreeing_sides_are_clean_and_order_nothing() -> None:
    result = reconcile([billed(3)], [held(seats=3)], now=NOW)
    assert (result.clean, result.orders) == (True, [])


def test_seats_are_compared_per_unit_of_the_create() -> None:
    # 10 seats per unit: 3 units billed are 30 seats; 20 held is one unit short.
    mismatch = only([billed(3)], [held(seats=20, per_unit=10)])
    assert (mismatch.billing, mismatch.keyturn, mismatch.correction) == (
        "30 seats (3 x 10)",
        "20 seats",
        f"{SKU}:add-seats x 1",
    )
    assert reconcile([billed(3)], [held(seats=30, per_unit=10)], now=NOW).clean
    odd = only([billed(3)], [held(seats=25, per_unit=10)])
    assert (odd.correction, odd.line) == ("none: 5 seats is not a whole number of units", None)


def test_an_end_date_later_than_billing_orders_nothing() -> None:
    mismatch = only([billed(end=NOW + YEAR - timedelta(days=40))], [held()])
    assert (mismatch.kind, mismatch.correction, mismatch.line) == (
        Kind.END_DATE,
        "none: an end date never moves back",
        None,
    )


def test_a_renewal_lands_as_close_as_its_term_allows_and_says_how_far_off() -> None:
    far = only([billed(end=NOW + 3 * YEAR)], [held()])
    assert far.correction == f"{SKU}:renew x 2"
    over = only([billed(end=NOW + YEAR + timedelta(days=200))], [held()])
    assert over.correction == f"{SKU}:renew x 1 (overshoots by about 165 days)"
    short = only([billed(end=NOW + 3 * YEAR + timedelta(days=100))], [held()])
    assert short.correction == f"{SKU}:renew x 2 (falls about 100 days short)"


def test_an_expired_entitlement_is_renewed_from_now() -> None:
    # Ended 30 days ago, past its 7-day grace: the default anchor renews from now.
    lapsed = held(end=NOW - timedelta(days=30), grace=timedelta(days=7))
    assert only([billed(end=NOW + YEAR)], [lapsed]).correction == f"{SKU}:renew x 1"
    # Within its grace the renewal extends the end date, which falls 3 days short.
    within = held(end=NOW - timedelta(days=3), grace=timedelta(days=7))
    assert only([billed(end=NOW + YEAR)], [within]).correction == (
        f"{SKU}:renew x 1 (falls about 3 days short)"
    )


def test_what_no_order_can_correct() -> None:
    cancelled = only([billed()], [held(status=ful.ENTITLEMENT_STATUS_CANCELLED)])
    assert (cancelled.kind, cancelled.line) == (Kind.CANCELLED, None)
    unmapped = only([billed(sku="")], [])
    assert (unmapped.kind, unmapped.correction) == (Kind.UNMAPPED, "none: no lookup key")
    perpetual = only([billed()], [held(end=None)])
    assert (perpetual.keyturn, perpetual.correction) == ("perpetual", "none: it never ends")
    unknown = only([billed(end=NOW + 2 * YEAR)], [held(term=None)])
    assert unknown.correction.startswith("none: the renewal term is unknown")
    orphan = only([], [held(base_sku="")])
    assert (orphan.kind, orphan.line) == (Kind.EXTRA, None)


def test_only_live_entitlements_are_extra() -> None:
    for status in (ful.ENTITLEMENT_STATUS_EXPIRED, ful.ENTITLEMENT_STATUS_CANCELLED):
        assert reconcile([], [held(status=status)], now=NOW).clean
    suspended = only([], [held(status=ful.ENTITLEMENT_STATUS_SUSPENDED)])
    assert (suspended.keyturn, suspended.correction) == ("suspended", f"{SKU}:cancel x 1")


def test_corrective_order_ids_follow_the_entitlements_state() -> None:
    first = held()
    ent = first.entitlement
    assert order_id(REF, ent) == order_id(REF, ent)  # the same state: a replay
    changed = ful.Entitlement()
    changed.CopyFrom(ent)
    changed.update_time.FromDatetime(NOW)
    assert order_id(REF, changed) != order_id(REF, ent)
    assert order_id(REF, None) == f"{REF}@create"
    long = order_id("netsuite:" + "x" * 190, ent)
    assert len(long) <= MAX_ORDER_ID
    assert long.startswith("sha256:")


def test_stripe_subscriptions_of_either_api_shape() -> None:
    item = {"quantity": 4, "price": {"id": "price_1", "lookup_key": SKU}}
    old = stripe_subscription(
        {
            "id": "sub_1",
            "customer": "cus_1",
            "current_period_end": 1796169600,
            "items": {"data": [item]},
        }
    )
    new = stripe_subscription(
        {
            "id": "sub_1",
            "customer": {"id": "cus_1", "object": "customer"},
            "items": {"data": [{**item, "current_period_end": 1796169600}]},
        }
    )
    assert old == new
    assert (old.reference, old.sku, old.quantity, old.period_end) == (
        REF,
        SKU,
        4,
        datetime(2026, 12, 2, tzinfo=UTC),
    )
    nameless = stripe_subscription({"id": "sub_2", "items": {"data": [{"price": {"id": "p"}}]}})
    assert (nameless.sku, nameless.note) == ("", "the price has no lookup_key (it names the SKU)")


def test_a_chargify_export(tmp_path: Path) -> None:
    export = tmp_path / "subscriptions.csv"
    export.write_text(
        "id,state,product_handle,product_name,current_period_ends_at,customer_id,"
        "customer_email,customer_organization,quantity\n"
        "101,active,cad-standard,Acme CAD,2027-06-03 12:43:50 -0400,9,a@x.example,Initech,\n"
        "102,canceled,cad-standard,Acme CAD,2026-06-03 12:43:50 -0400,9,a@x.example,Initech,\n"
        "103,past_due,cad-pro,Acme CAD Pro,2027-01-01T00:00:00Z,8,,Globex,5\n",
        encoding="utf-8",
    )
    products = parse_product_map("chargify:\n  cad-standard: CAD-STD-1Y\n")
    found = list(chargify_subscriptions(export, products))
    assert [(s.reference, s.sku, s.quantity, s.period_end, s.note) for s in found] == [
        ("chargify:101", SKU, 1, datetime(2027, 6, 3, 16, 43, 50, tzinfo=UTC), ""),
        (
            "chargify:103",
            "",
            5,
            datetime(2027, 1, 1, tzinfo=UTC),
            "product handle 'cad-pro' is not in the product map",
        ),
    ]
    assert found[0].customer == ful.Customer(customer_id="9", name="Initech", email="a@x.example")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("subscription_id,sku,quantity\nx:1,A,1\n", "no column period_end"),
        ("subscription_id,sku,quantity,period_end\nx:1,A,two,\n", "quantity 'two'"),
        ("subscription_id,sku,quantity,period_end\nx:1,A,0,\n", "quantity '0'"),
        ("subscription_id,sku,quantity,period_end\nx:1,A,1,next May\n", "'next May' is not"),
        ("subscription_id,sku,quantity,period_end\n,A,1,\n", "subscription_id is empty"),
    ],
)
def test_a_csv_that_is_not_as_documented(tmp_path: Path, text: str, problem: str) -> None:
    export = tmp_path / "subscriptions.csv"
    export.write_text(text, encoding="utf-8")
    with pytest.raises(SourceError, match=problem):
        list(csv_subscriptions(export))
