"""FulfillmentService orders that create entitlements, GetOrder, GetEntitlement and
ResendCredentials (orders that change an entitlement: test_order_changes.py).

The generated cases (generated.py) cover every string, enum and required field of
these requests; the cases here are the rules of orders.
"""

from __future__ import annotations

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

from .builders import customer, fulfil, line
from .cases import MB, Code, invalid, refused
from .generated import generated_cases
from .running import refusal_test
from .world import TAKEN_REFERENCE, WORLD_ORDER_ID
from support.rpc import order

FULFILL_ORDER = [
    invalid("FulfillOrder", "source-uppercase", fulfil(source="Stripe"), "source"),
    invalid("FulfillOrder", "order-id-with-space", fulfil(order_id="order 1"), "order_id"),
    invalid(
        "FulfillOrder", "customer-name-1mb", fulfil(customer=customer(name=MB)), "customer.name"
    ),
    invalid(
        "FulfillOrder",
        "customer-name-nul-char",
        fulfil(customer=customer(name="Ini\x00tech")),
        "customer.name",
    ),
    invalid(
        "FulfillOrder",
        "customer-email-not-an-email",
        fulfil(customer=customer(email="not-an-email")),
        "customer.email",
    ),
    invalid(
        "FulfillOrder",
        "customer-email-nul-char",
        fulfil(customer=customer(email="it\x00@initech.example")),
        "customer.email",
    ),
    invalid(
        "FulfillOrder",
        "ship-to-email-not-an-email",
        fulfil(ship_to_email="not-an-email"),
        "ship_to_email",
    ),
    invalid(
        "FulfillOrder", "ship-to-email-no-domain-dot", fulfil(ship_to_email="a@b"), "ship_to_email"
    ),
    invalid(
        "FulfillOrder",
        "ship-to-email-two-ats",
        fulfil(ship_to_email="a@b@c.example"),
        "ship_to_email",
    ),
    invalid(
        "FulfillOrder",
        "ship-to-email-with-space",
        fulfil(ship_to_email="a b@c.example"),
        "ship_to_email",
    ),
    invalid(
        "FulfillOrder",
        "ship-to-email-300-chars",
        fulfil(ship_to_email="a" * 60 + "@" + "b" * 235 + ".example"),
        "ship_to_email",
    ),
    invalid("FulfillOrder", "101-lines", fulfil(lines=[line()] * 101), "lines"),
    invalid("FulfillOrder", "quantity-negative", fulfil([line(quantity=-3)]), "lines[0].quantity"),
    invalid(
        "FulfillOrder", "quantity-100001", fulfil([line(quantity=100_001)]), "lines[0].quantity"
    ),
    invalid(
        "FulfillOrder",
        "quantity-negative-on-second-line",
        fulfil([line(), line(quantity=-1)]),
        "lines[1].quantity",
    ),
    refused(
        "FulfillOrder",
        "unknown-sku",
        fulfil([line(sku_id="NO-SUCH-SKU")]),
        Code.NOT_FOUND,
        "SKU_NOT_FOUND",
        sku_id="NO-SUCH-SKU",
    ),
    refused(
        "FulfillOrder",
        "unknown-sku-after-a-good-line",
        fulfil([line(), line(sku_id="NO-SUCH-SKU")]),
        Code.NOT_FOUND,
        "SKU_NOT_FOUND",
        sku_id="NO-SUCH-SKU",
    ),
    invalid(
        "FulfillOrder",
        "entitlement-id-on-a-create-sku",
        fulfil([line(entitlement_id="ent_01ARZ3NDEKTSV4RRFFQ69G5FAV")]),
        "lines[0].entitlement_id",
    ),
    invalid(
        "FulfillOrder",
        "seats-overflow-100000x100000",
        fulfil([line(sku_id="BIG", quantity=100_000)]),
        "lines[0].quantity",
    ),
    refused(
        "FulfillOrder",
        "same-order-id-different-content",
        order(WORLD_ORDER_ID, "STD", quantity=2, reference=TAKEN_REFERENCE),
        Code.ALREADY_EXISTS,
        "ORDER_CONFLICT",
        source="test",
        order_id=WORLD_ORDER_ID,
    ),
    refused(
        "FulfillOrder",
        "external-reference-reused",
        fulfil([line(external_reference=TAKEN_REFERENCE)]),
        Code.ALREADY_EXISTS,
        "EXTERNAL_REFERENCE_TAKEN",
        external_reference=TAKEN_REFERENCE,
    ),
    refused(
        "FulfillOrder",
        "external-reference-twice-in-one-order",
        fulfil(
            [line(external_reference="stripe:sub_new"), line(external_reference="stripe:sub_new")]
        ),
        Code.ALREADY_EXISTS,
        "EXTERNAL_REFERENCE_TAKEN",
        external_reference="stripe:sub_new",
    ),
]


GET_ORDER = [
    refused(
        "GetOrder",
        "unknown-order",
        ful.GetOrderRequest(source="test", order_id="no-such-order"),
        Code.NOT_FOUND,
        "ORDER_NOT_FOUND",
        source="test",
        order_id="no-such-order",
    ),
]

GET_ENTITLEMENT = [
    refused(
        "GetEntitlement",
        "unknown-entitlement",
        ful.GetEntitlementRequest(entitlement_id="ent_01ARZ3NDEKTSV4RRFFQ69G5FAV"),
        Code.NOT_FOUND,
        "ENTITLEMENT_NOT_FOUND",
        entitlement_id="ent_01ARZ3NDEKTSV4RRFFQ69G5FAV",
    ),
]

RESEND_CREDENTIALS = [
    refused(
        "ResendCredentials",
        "unknown-entitlement",
        ful.ResendCredentialsRequest(entitlement_id="ent_00000000000000000000000000"),
        Code.NOT_FOUND,
        "ENTITLEMENT_NOT_FOUND",
        entitlement_id="ent_00000000000000000000000000",
    ),
]

CASES = [
    *generated_cases("FulfillOrder", "GetOrder", "GetEntitlement", "ResendCredentials"),
    *FULFILL_ORDER,
    *GET_ORDER,
    *GET_ENTITLEMENT,
    *RESEND_CREDENTIALS,
]

test_bad_input_is_refused_and_writes_nothing = refusal_test(CASES)
