"""Order fingerprints: the idempotency check of FulfillOrder."""

from __future__ import annotations

from dataclasses import replace

import pytest

from keyturn.server.domain.entitlement import Customer
from keyturn.server.domain.orders import OrderLine, OrderRequest


def order() -> OrderRequest:
    """A fresh, equal order each call (no shared objects)."""
    return OrderRequest(
        source="stripe",
        order_id="in_1234",
        customer=Customer("cus_1", "Ada Lovelace", "ada@example.com"),
        ship_to_email="it@example.com",
        lines=(
            OrderLine("ACME-STD-1Y", 2),
            OrderLine("ACME-SEATS", 3, entitlement_id="ent_1"),
            OrderLine("ACME-RENEW", 1, external_reference="stripe:sub_1"),
        ),
    )


BASE = order()
LINES = BASE.lines


def test_equal_orders_have_equal_fingerprints() -> None:
    assert order() is not order()
    assert order().fingerprint() == order().fingerprint()


def test_a_fingerprint_is_a_sha256_hex_digest() -> None:
    fingerprint = BASE.fingerprint()
    assert len(fingerprint) == 64
    assert set(fingerprint) <= set("0123456789abcdef")


@pytest.mark.parametrize(
    "changed",
    [
        replace(BASE, source="netsuite"),
        replace(BASE, order_id="in_1235"),
        replace(BASE, customer=Customer("cus_2", "Ada Lovelace", "ada@example.com")),
        replace(BASE, customer=Customer("cus_1", "Ada King", "ada@example.com")),
        replace(BASE, customer=Customer("cus_1", "Ada Lovelace", "ADA@example.com")),
        replace(BASE, ship_to_email=""),
        replace(BASE, lines=LINES[:2]),
        replace(BASE, lines=(*LINES, OrderLine("ACME-STD-1Y", 2))),
        replace(BASE, lines=(LINES[1], LINES[0], LINES[2])),
        replace(BASE, lines=(replace(LINES[0], quantity=3), *LINES[1:])),
        replace(BASE, lines=(replace(LINES[0], sku_id="ACME-PRO-1Y"), *LINES[1:])),
        replace(BASE, lines=(LINES[0], replace(LINES[1], entitlement_id="ent_2"), LINES[2])),
        replace(BASE, lines=(*LINES[:2], replace(LINES[2], external_reference="stripe:sub_2"))),
        replace(
            BASE,
            lines=(*LINES[:2], replace(LINES[2], external_reference="", entitlement_id="x")),
        ),
    ],
)
def test_any_change_changes_the_fingerprint(changed: OrderRequest) -> None:
    assert changed != BASE
    assert changed.fingerprint() != BASE.fingerprint()


def test_fields_are_not_confused_with_each_other() -> None:
    # The same strings in different fields must not produce the same digest.
    a = replace(BASE, customer=Customer("x", "y", ""), ship_to_email="")
    b = replace(BASE, customer=Customer("y", "x", ""), ship_to_email="")
    assert a.fingerprint() != b.fingerprint()


def test_delivery_email_prefers_ship_to() -> None:
    assert BASE.delivery_email == "it@example.com"
    assert replace(BASE, ship_to_email="").delivery_email == "ada@example.com"
