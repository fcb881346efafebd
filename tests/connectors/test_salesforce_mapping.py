"""Salesforce records as Keyturn orders: what each Type and its lines order, the
subscription each names, and what is refused. Pure: no network."""

from __future__ import annotations

from typing import Any

import pytest
from salesforce_harness import new_id, new_order, opportunity_record

from keyturn.client.connectors.salesforce_mapping import (
    OPPORTUNITY,
    ORDER,
    Ignored,
    UnmappedProduct,
    UnusableOrder,
    order_for_record,
)
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

MAP = {"CAD-STD": "CAD-STD-1Y", "CAD-PRO": "CAD-PRO-1Y"}
CONTRACT = new_id("800")


def lines_of(record: dict[str, Any]) -> list[tuple[str, int, str]]:
    order = order_for_record(ORDER, record, MAP.get)
    assert isinstance(order, ful.FulfillOrderRequest)
    assert (order.source, order.order_id) == ("salesforce", record["Id"])
    return [(line.sku_id, line.quantity, line.external_reference) for line in order.lines]


def order(order_type: str | None, lines: list[tuple[str, float]], **fields: Any) -> dict[str, Any]:
    return new_order(order_type, lines, fields.pop("contract_id", CONTRACT), **fields)


REF = f"salesforce:{CONTRACT}"


@pytest.mark.parametrize(
    ("order_type", "lines", "expected"),
    [
        ("New", [("CAD-STD", 5)], [("CAD-STD-1Y", 5, REF)]),
        (None, [("CAD-STD", 2), ("CAD-STD", 3)], [("CAD-STD-1Y", 5, REF)]),
        ("Renewal", [("CAD-PRO", 5)], [("CAD-PRO-1Y:renew", 1, REF)]),
        ("Amendment", [("CAD-STD", 4)], [("CAD-STD-1Y:add-seats", 4, REF)]),
        ("amendment", [("CAD-STD", -4)], [("CAD-STD-1Y:remove-seats", 4, REF)]),
        (
            "Existing Customer - Downgrade",
            [("CAD-PRO", -6), ("CAD-STD", 4)],
            [("CAD-STD-1Y:switch", 1, REF), ("CAD-STD-1Y:remove-seats", 2, REF)],
        ),
        (
            "Existing Customer - Replacement",
            [("CAD-STD", -3), ("CAD-PRO", 3)],
            [("CAD-PRO-1Y:switch", 1, REF)],
        ),
        ("Cancellation", [("CAD-PRO", -6)], [("CAD-PRO-1Y:cancel", 1, REF)]),
    ],
)
def test_each_type_orders_its_lifecycle_skus(
    order_type: str | None, lines: list[tuple[str, float]], expected: list[tuple[str, int, str]]
) -> None:
    assert lines_of(order(order_type, lines)) == expected


def test_the_subscription_without_a_contract_is_the_first_order() -> None:
    first = order("New", [("CAD-STD", 1)], contract_id=None)
    assert lines_of(first) == [("CAD-STD-1Y", 1, f"salesforce:{first['Id']}")]
    later = order("Renewal", [("CAD-STD", 1)], contract_id=None, original_order_id=first["Id"])
    assert lines_of(later) == [("CAD-STD-1Y:renew", 1, f"salesforce:{first['Id']}")]


def test_the_customer_and_where_keys_go() -> None:
    request = order_for_record(ORDER, order("New", [("CAD-STD", 1)], bill_to=None), MAP.get)
    assert isinstance(request, ful.FulfillOrderRequest)
    assert request.customer.email == request.ship_to_email == "it@initech.example"
    opportunity = opportunity_record(
        opportunity_id=new_id("006"), opportunity_type="New Customer", lines=[("CAD-PRO", 2)]
    )
    won = order_for_record(OPPORTUNITY, opportunity, MAP.get)
    assert isinstance(won, ful.FulfillOrderRequest)
    assert (won.customer.email, won.ship_to_email) == ("buyer@globex.example", "")
    assert won.lines[0].external_reference == f"salesforce:{opportunity['Id']}"


def test_drafts_and_open_opportunities_need_no_order() -> None:
    draft = order_for_record(ORDER, order("New", [("CAD-STD", 1)], status="Draft"), MAP.get)
    assert draft == Ignored(f"order {draft_id(draft)} is Draft, not Activated")
    opportunity = opportunity_record(
        opportunity_id=new_id("006"), opportunity_type=None, lines=[("CAD-PRO", 2)], won=False
    )
    assert isinstance(order_for_record(OPPORTUNITY, opportunity, MAP.get), Ignored)
    unchanged = order("Amendment", [("CAD-STD", 1), ("CAD-STD", -1)])
    assert order_for_record(ORDER, unchanged, MAP.get) == Ignored(
        f"amendment {unchanged['Id']} changes no quantity"
    )


def draft_id(ignored: object) -> str:
    assert isinstance(ignored, Ignored)
    return ignored.reason.split()[1]


@pytest.mark.parametrize(
    ("record", "error", "why"),
    [
        (order("New", [("CAD-ENT", 1)]), UnmappedProduct, "'CAD-ENT' is not in the salesforce"),
        (order("Upsell", [("CAD-STD", 1)]), UnusableOrder, "Type 'Upsell' is none of"),
        (order("Renewal", [("CAD-STD", 1)], contract_id=None), UnusableOrder, "no ContractId"),
        (order("New", [("CAD-STD", -1)]), UnusableOrder, "positive quantity"),
        (order("Renewal", [("CAD-STD", 1), ("CAD-PRO", 1)]), UnusableOrder, "one subscription"),
        (
            order("Amendment", [("CAD-STD", 1), ("CAD-PRO", 1)]),
            UnusableOrder,
            "replace one product by another",
        ),
        (order("New", [("CAD-STD", 0)]), UnusableOrder, "positive quantity"),
    ],
)
def test_what_cannot_be_ordered(record: dict[str, Any], error: type[Exception], why: str) -> None:
    with pytest.raises(error, match=why):
        order_for_record(ORDER, record, MAP.get)


def test_the_query_names_what_the_mapping_reads_and_only_an_id() -> None:
    record_id = new_id("801")
    assert ORDER.soql(record_id) == (
        "SELECT Id, Type, AccountId, Account.Name, ContractId, StatusCode, OriginalOrderId, "
        "BillToContact.Email, ShipToContact.Email, "
        f"(SELECT Id, Quantity, Product2.ProductCode FROM OrderItems) FROM Order WHERE Id = '{record_id}'"
    )
    with pytest.raises(UnusableOrder):
        ORDER.soql("801' OR Id != '")
