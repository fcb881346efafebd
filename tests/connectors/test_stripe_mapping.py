"""order_for_event: every row of the documented mapping table, the events it ignores, and
the events it cannot use. Pure functions: no server, no network."""

from __future__ import annotations

import pytest
from connector_harness import (
    PERPETUAL,
    PRO,
    STANDARD,
    Json,
    checkout_session,
    event,
    invoice,
    invoice_line,
    subscription,
    subscription_item,
)

from keyturn.client.connectors.stripe_mapping import (
    SOURCE,
    UnusableEvent,
    order_for_event,
    reference,
)
from keyturn.client.connectors.webhook_server import Ignored
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

SUB = "sub_1QAcmeCadInitech"
REF = f"stripe:{SUB}"
INITECH = ful.Customer(customer_id="cus_Initech", name="Initech", email="billing@initech.example")
SUBSCRIBER = ful.Customer(customer_id="cus_Initech")  # subscription objects carry only the id


def order(order_id: str, customer: ful.Customer, *lines: ful.OrderLine) -> ful.FulfillOrderRequest:
    return ful.FulfillOrderRequest(
        source="stripe", order_id=order_id, customer=customer, lines=list(lines)
    )


def line(sku_id: str, quantity: int, ref: str = REF) -> ful.OrderLine:
    return ful.OrderLine(sku_id=sku_id, quantity=quantity, external_reference=ref)


def mapped(stripe_event: Json) -> ful.FulfillOrderRequest:
    result = order_for_event(stripe_event)
    assert isinstance(result, ful.FulfillOrderRequest), result
    return result


def updated(previous_items: list[Json], items: list[Json], sub: str = SUB) -> Json:
    return event(
        "customer.subscription.updated",
        subscription(sub, items),
        previous={"items": {"object": "list", "data": previous_items}},
    )


def test_reference_and_source() -> None:
    assert SOURCE == "stripe"
    assert reference("sub_123") == "stripe:sub_123"


@pytest.mark.parametrize("new_shape", [False, True], ids=["subscription", "parent"])
def test_first_invoice_creates_with_the_quantity_and_attaches_the_subscription(
    new_shape: bool,
) -> None:
    paid = invoice(
        "subscription_create",
        SUB,
        [invoice_line(STANDARD, 5, SUB)],
        invoice_id="in_1QFirst",
        new_shape=new_shape,
    )
    assert ("subscription" in paid) is not new_shape
    stripe_event = event("invoice.paid", paid)
    assert mapped(stripe_event) == order("in_1QFirst", INITECH, line(STANDARD, 5))
    # The invoice id, not the event id: a second event about this invoice replays it.
    assert mapped(stripe_event).order_id != stripe_event["id"]


def test_first_invoice_with_an_add_on_names_the_subscription_on_every_line() -> None:
    lines = [invoice_line(STANDARD, 3, SUB), invoice_line("acme-cad-render-farm", 2, SUB)]
    request = mapped(event("invoice.paid", invoice("subscription_create", SUB, lines)))
    assert list(request.lines) == [line(STANDARD, 3), line("acme-cad-render-farm", 2)]


def test_expanded_ids_and_missing_quantity() -> None:
    body = invoice("subscription_create", SUB, [invoice_line(STANDARD, 1, SUB)])
    body["subscription"] = {"id": SUB, "object": "subscription"}
    body["customer"] = {"id": "cus_Initech", "object": "customer"}
    del body["lines"]["data"][0]["quantity"]
    request = mapped(event("invoice.paid", body))
    assert request.customer == INITECH
    assert list(request.lines) == [line(STANDARD, 1)]


def test_first_invoice_skips_one_off_items_and_prorations() -> None:
    setup_fee = invoice_line(None, 1, SUB, line_type="invoiceitem")  # a price without lookup key
    carried = invoice_line(STANDARD, 2, SUB)
    carried["proration"] = True
    new_api_fee = invoice_line(None, 1, SUB)
    del new_api_fee["type"]
    new_api_fee["parent"] = {"type": "invoice_item_details", "invoice_item_details": {}}
    lines = [setup_fee, carried, new_api_fee, invoice_line(STANDARD, 4, SUB)]
    request = mapped(event("invoice.paid", invoice("subscription_create", SUB, lines)))
    assert list(request.lines) == [line(STANDARD, 4)]


@pytest.mark.parametrize("new_shape", [False, True], ids=["subscription", "parent"])
def test_renewal_invoice_renews_once_whatever_the_quantity(new_shape: bool) -> None:
    lines = [invoice_line(STANDARD, 7, SUB)]
    paid = invoice("subscription_cycle", SUB, lines, invoice_id="in_1QCycle", new_shape=new_shape)
    assert mapped(event("invoice.paid", paid)) == order(
        "in_1QCycle", INITECH, line(f"{STANDARD}:renew", 1)
    )


def test_renewal_invoice_names_the_subscription_line_not_a_carried_proration() -> None:
    proration = invoice_line(PRO, 1, SUB, line_type="invoiceitem")
    proration["proration"] = True
    lines = [proration, invoice_line(STANDARD, 2, SUB)]
    request = mapped(event("invoice.paid", invoice("subscription_cycle", SUB, lines)))
    assert list(request.lines) == [line(f"{STANDARD}:renew", 1)]


def test_customer_without_name_or_email() -> None:
    body = invoice("subscription_cycle", SUB, [invoice_line(STANDARD, 1, SUB)], email=None)
    body["customer_name"] = None
    assert mapped(event("invoice.paid", body)).customer == ful.Customer(customer_id="cus_Initech")


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (5, 8, [line(f"{STANDARD}:add-seats", 3)]),
        (8, 6, [line(f"{STANDARD}:remove-seats", 2)]),
    ],
    ids=["up", "down"],
)
def test_quantity_change_adds_or_removes_the_difference(
    before: int, after: int, expected: list[ful.OrderLine]
) -> None:
    stripe_event = updated(
        [subscription_item(STANDARD, before, "si_A")], [subscription_item(STANDARD, after, "si_A")]
    )
    assert mapped(stripe_event) == order(stripe_event["id"], SUBSCRIBER, *expected)


def test_price_switch_names_the_new_lookup_key() -> None:
    stripe_event = updated(
        [subscription_item(STANDARD, 4, "si_A")], [subscription_item(PRO, 4, "si_A")]
    )
    assert mapped(stripe_event) == order(stripe_event["id"], SUBSCRIBER, line(f"{PRO}:switch", 1))


def test_price_switch_with_more_seats_switches_then_adds() -> None:
    stripe_event = updated(
        [subscription_item(STANDARD, 4, "si_A")], [subscription_item(PRO, 6, "si_A")]
    )
    assert list(mapped(stripe_event).lines) == [
        line(f"{PRO}:switch", 1),
        line(f"{PRO}:add-seats", 2),
    ]


def test_only_changed_items_give_lines() -> None:
    stripe_event = updated(
        [subscription_item(STANDARD, 4, "si_A"), subscription_item("acme-addon", 1, "si_B")],
        [subscription_item(STANDARD, 4, "si_A"), subscription_item("acme-addon", 3, "si_B")],
    )
    assert list(mapped(stripe_event).lines) == [line("acme-addon:add-seats", 2)]


def test_deletion_cancels() -> None:
    stripe_event = event(
        "customer.subscription.deleted",
        subscription(SUB, [subscription_item(PRO, 6, "si_A")], status="canceled"),
    )
    assert mapped(stripe_event) == order(stripe_event["id"], SUBSCRIBER, line(f"{PRO}:cancel", 1))


@pytest.mark.parametrize(
    "kind", ["checkout.session.completed", "checkout.session.async_payment_succeeded"]
)
def test_paid_one_off_checkout_orders_the_metadata_sku(kind: str) -> None:
    session = checkout_session(
        "payment", {"keyturn_sku": PERPETUAL, "keyturn_quantity": "3"}, customer="cus_Globex"
    )
    stripe_event = event(kind, session)
    assert mapped(stripe_event) == order(
        stripe_event["id"],
        ful.Customer(customer_id="cus_Globex", name="Globex", email="buyer@globex.example"),
        ful.OrderLine(sku_id=PERPETUAL, quantity=3),
    )


def test_guest_checkout_without_quantity() -> None:
    session = checkout_session("payment", {"keyturn_sku": PERPETUAL})
    request = mapped(event("checkout.session.completed", session))
    assert request.customer.customer_id == "unknown"
    assert list(request.lines) == [ful.OrderLine(sku_id=PERPETUAL, quantity=1)]


@pytest.mark.parametrize(
    ("stripe_event", "why"),
    [
        (event("customer.created", {"id": "cus_1", "object": "customer"}), "customer.created"),
        (
            event(
                "invoice.payment_failed",
                invoice("subscription_create", SUB, [invoice_line(STANDARD, 1, SUB)]),
            ),
            "invoice.payment_failed",
        ),
        (
            event(
                "invoice.paid",
                invoice("subscription_update", SUB, [invoice_line(STANDARD, 2, SUB)]),
            ),
            "'subscription_update'",
        ),
        (
            event(
                "invoice.paid",
                invoice("manual", "", [invoice_line(STANDARD, 2, "")]),
            ),
            "no subscription",
        ),
        (
            event(
                "checkout.session.completed",
                checkout_session("subscription", {"keyturn_sku": STANDARD}),
            ),
            "subscription checkout",
        ),
        (
            event(
                "checkout.session.completed",
                checkout_session("payment", {"keyturn_sku": PERPETUAL}, payment_status="unpaid"),
            ),
            "async_payment_succeeded",
        ),
        (
            event("checkout.session.completed", checkout_session("payment", {})),
            "keyturn_sku",
        ),
        (
            event(
                "customer.subscription.updated",
                subscription(SUB, [subscription_item(STANDARD, 4, "si_A")]),
                previous={"cancel_at_period_end": False},
            ),
            "no change",
        ),
        (
            updated(
                [subscription_item(STANDARD, 4, "si_A")],
                [subscription_item(STANDARD, 4, "si_A")],
            ),
            "nothing to fulfil",
        ),
    ],
    ids=[
        "other-type",
        "payment-failed",
        "proration-invoice",
        "one-off-invoice",
        "subscription-checkout",
        "pending-payment",
        "checkout-without-sku",
        "cancel-at-period-end",
        "items-unchanged",
    ],
)
def test_ignored_events(stripe_event: Json, why: str) -> None:
    result = order_for_event(stripe_event)
    assert isinstance(result, Ignored)
    assert why in result.reason


@pytest.mark.parametrize(
    "stripe_event",
    [
        event("invoice.paid", invoice("subscription_create", SUB, [invoice_line(None, 2, SUB)])),
        event("invoice.paid", invoice("subscription_cycle", SUB, [invoice_line("", 2, SUB)])),
        updated([subscription_item(STANDARD, 1, "si_A")], [subscription_item(None, 2, "si_A")]),
        event(
            "customer.subscription.deleted", subscription(SUB, [subscription_item(None, 1, "x")])
        ),
    ],
    ids=["create", "cycle", "update", "delete"],
)
def test_a_price_without_lookup_key_is_unusable(stripe_event: Json) -> None:
    with pytest.raises(UnusableEvent, match="lookup_key"):
        order_for_event(stripe_event)


def test_a_deleted_subscription_without_items_is_unusable() -> None:
    with pytest.raises(UnusableEvent, match="no items"):
        order_for_event(event("customer.subscription.deleted", subscription(SUB, [])))


def test_an_invoice_line_of_api_2025_03_31_names_its_price_by_id_only() -> None:
    """Newer API versions send `pricing.price_details.price` (an id) instead of `price`:
    no lookup key to name the SKU, so the event is refused loudly, never dropped."""
    body = invoice("subscription_create", SUB, [invoice_line(STANDARD, 2, SUB)], new_shape=True)
    new_line = body["lines"]["data"][0]
    del new_line["price"], new_line["type"], new_line["subscription"]
    new_line["parent"] = {"type": "subscription_item_details", "subscription_item_details": {}}
    new_line["pricing"] = {
        "type": "price_details",
        "price_details": {"price": "price_1QStandard", "product": "prod_AcmeCad"},
    }
    paid = event("invoice.paid", body)
    with pytest.raises(UnusableEvent, match="set a Stripe API key"):
        order_for_event(paid)
    # With a price lookup (Stripe's API), the id names the SKU as the lookup key would.
    asked: list[str] = []

    def lookup(price_id: str) -> str | None:
        asked.append(price_id)
        return STANDARD if price_id == "price_1QStandard" else None

    mapped = order_for_event(paid, lookup)
    assert isinstance(mapped, ful.FulfillOrderRequest)
    assert [(line.sku_id, line.quantity) for line in mapped.lines] == [(STANDARD, 2)]
    assert asked == ["price_1QStandard"]
    new_line["pricing"]["price_details"]["price"] = "price_1QUnknown"
    with pytest.raises(UnusableEvent, match="price_1QUnknown has no lookup_key"):
        order_for_event(paid, lookup)
