"""What a posted Sales Order becomes (netsuite_orders) and which signatures the endpoint
accepts (netsuite_webhook.verify_signature): pure functions, every rule on small cases."""

from __future__ import annotations

from typing import Any

import pytest

from keyturn.client.connectors.netsuite_orders import UnusableOrder, order_for_sales_order
from keyturn.client.connectors.netsuite_webhook import (
    SignatureError,
    signature,
    verify_signature,
)
from keyturn.client.connectors.product_map import parse_product_map
from keyturn.client.connectors.webhook_server import Ignored

PRODUCTS = parse_product_map('netsuite:\n  "1041": CAD-STD-1Y\n  "1042": CAD-PRO-1Y\n')
Json = dict[str, Any]


def posted(*lines: Json, **body: Any) -> Json:
    """A body as keyturn_post.js posts it."""
    return {
        "recordType": "salesorder",
        "id": "5001",
        "tranId": "SO1001",
        "status": "B",
        "revision": "",
        "action": "",
        "orderType": "",
        "subscription": "",
        "customer": {"id": "88", "name": "Initech", "email": "it@initech.example"},
        "lines": list(lines),
        **body,
    }


def line(item: str = "1041", quantity: int = 5, **fields: Any) -> Json:
    return {"line": "1", "item": item, "itemType": "NonInvtPart", "quantity": quantity,
            "action": "", "subscription": "", **fields}  # fmt: skip


def lines_of(payload: Json) -> list[tuple[str, int, str]]:
    order = order_for_sales_order(payload, PRODUCTS)
    assert not isinstance(order, Ignored)
    return [(x.sku_id, x.quantity, x.external_reference) for x in order.lines]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (posted(line()), [("CAD-STD-1Y", 5, "netsuite:5001")]),
        (posted(line(subscription="C-7")), [("CAD-STD-1Y", 5, "netsuite:C-7")]),
        (posted(line(), orderType="1"), [("CAD-STD-1Y", 5, "netsuite:5001")]),
        (posted(line(), orderType="2", subscription="4000"), [("CAD-STD-1Y:renew", 1, "netsuite:4000")]),
        (posted(line(quantity=3), orderType="3", subscription="4000"), [("CAD-STD-1Y:add-seats", 3, "netsuite:4000")]),
        (posted(line(quantity=-2), orderType="3", subscription="4000"), [("CAD-STD-1Y:remove-seats", 2, "netsuite:4000")]),
        (posted(line(quantity=2), orderType="13", subscription="4000"), [("CAD-STD-1Y:remove-seats", 2, "netsuite:4000")]),
        (posted(line(quantity=-2), orderType="13", subscription="4000"), [("CAD-STD-1Y:remove-seats", 2, "netsuite:4000")]),
        (posted(line("1042", 6), action="switch", subscription="4000"), [("CAD-PRO-1Y:switch", 1, "netsuite:4000")]),
        (posted(line(), action="Cancel", subscription="4000"), [("CAD-STD-1Y:cancel", 1, "netsuite:4000")]),
        (posted(line(), action="suspend", subscription="4000"), [("CAD-STD-1Y:suspend", 1, "netsuite:4000")]),
        (posted(line(), action="reinstate", subscription="4000"), [("CAD-STD-1Y:reinstate", 1, "netsuite:4000")]),
        # The line's action and subscription win over the order's and the order type.
        (
            posted(line(action="renew", subscription="L-1"), action="cancel", orderType="3", subscription="B-1"),
            [("CAD-STD-1Y:renew", 1, "netsuite:L-1")],
        ),
        # Non-item lines and lines marked none are skipped, mapped or not.
        (
            posted(line(), line("", 0, itemType="Subtotal"), line("77", 1, itemType="Discount"), line("9", 1, action="none")),
            [("CAD-STD-1Y", 5, "netsuite:5001")],
        ),
    ],
)  # fmt: skip
def test_each_action_orders_its_lifecycle_sku(payload: Json, expected: list[Any]) -> None:
    assert lines_of(payload) == expected


def test_the_order_id_is_the_internal_id_and_the_revision() -> None:
    for revision, order_id in (("", "5001:0"), ("0", "5001:0"), ("3", "5001:3")):
        order = order_for_sales_order(posted(line(), revision=revision), PRODUCTS)
        assert not isinstance(order, Ignored)
        assert (order.source, order.order_id) == ("netsuite", order_id)
        assert (order.customer.customer_id, order.customer.email) == ("88", "it@initech.example")


def test_an_order_with_nothing_for_keyturn_is_ignored() -> None:
    order = order_for_sales_order(
        posted(line(action="none"), line("", 0, itemType="Description")), PRODUCTS
    )
    assert order == Ignored("no item line for Keyturn")


@pytest.mark.parametrize(
    ("payload", "reason", "words"),
    [
        (posted(line("2099"), line("1041"), line("3001")), "ITEM_NOT_MAPPED", "items 2099, 3001 "),
        (posted(line(), action="renew"), "NO_SUBSCRIPTION", "line 1: renew names no subscription"),
        (posted(line(), action="upgrade"), "UNKNOWN_ACTION", "'upgrade'"),
        (posted(line(quantity=0)), "BAD_QUANTITY", "a create needs a quantity"),
        (posted(line(quantity=0), orderType="3", subscription="4"), "BAD_QUANTITY", "seat change of 0"),
        (posted(line(quantity=1.5)), "BAD_QUANTITY", "not whole"),
        (posted(line(), line("1042")), "SUBSCRIPTION_CREATED_TWICE", "netsuite:5001"),
        (posted(line(), customer={"id": ""}), "NO_CUSTOMER", "no customer"),
        (posted(line(), recordType="invoice"), "NOT_A_SALES_ORDER", "not a posted Sales Order"),
        ({**posted(), "lines": None}, "NO_LINES", "no item lines"),
        ({**posted(), "lines": ["x"]}, "BAD_LINE", "line 1 is not an object"),
    ],
)  # fmt: skip
def test_an_unusable_order_is_refused_with_its_reason(
    payload: Json, reason: str, words: str
) -> None:
    with pytest.raises(UnusableOrder) as refused:
        order_for_sales_order(payload, PRODUCTS)
    assert refused.value.reason == reason
    assert words in str(refused.value)


SECRET = "the-api-secret"
BODY = b'{"id": "5001"}'
NOW = 1_800_000_000


def check(timestamp: str | None, header: str | None, tolerance: int = 300) -> None:
    verify_signature(BODY, timestamp, header, SECRET, tolerance, now=lambda: NOW)


def test_a_signature_within_the_tolerance_verifies_in_either_case_and_among_others() -> None:
    for at in (NOW - 300, NOW, NOW + 300):
        digest = signature(SECRET, str(at), BODY)
        check(str(at), f"v1={digest}")
        check(str(at), f"v1={digest.upper()}")  # N/crypto's HEX may be upper case
        check(str(at), f"v1={'0' * 64}, v1={digest}")  # a rotation: old and new secret


@pytest.mark.parametrize(
    ("timestamp", "header", "words"),
    [
        (None, "v1=00", "are required"),
        (str(NOW), None, "are required"),
        ("12abc", "v1=00", "not Unix seconds"),
        (str(NOW - 301), f"v1={signature(SECRET, str(NOW - 301), BODY)}", "more than 300s"),
        (str(NOW + 301), f"v1={signature(SECRET, str(NOW + 301), BODY)}", "more than 300s"),
        (str(NOW), f"v1={signature('other', str(NOW), BODY)}", "no v1= signature matches"),
        (str(NOW), f"v0={signature(SECRET, str(NOW), BODY)}", "no v1= signature matches"),
        (str(NOW), f"v1={signature(SECRET, str(NOW + 1), BODY)}", "no v1= signature matches"),
    ],
)
def test_a_bad_signature_is_refused(timestamp: str | None, header: str | None, words: str) -> None:
    with pytest.raises(SignatureError) as refused:
        check(timestamp, header)
    assert words in str(refused.value)
