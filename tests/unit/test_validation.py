"""Validation of products, SKUs and orders: every violation names its field path."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from keyturn.server.domain.catalog import (
    AddFeatures,
    AddSeats,
    Cancel,
    ChangeEdition,
    ConvertTrial,
    Create,
    Edition,
    Feature,
    Operation,
    Product,
    RemoveFeatures,
    RemoveSeats,
    Renew,
    Sku,
)
from keyturn.server.domain.entitlement import Customer
from keyturn.server.domain.errors import (
    DomainError,
    FieldViolation,
    Reason,
    invalid_request,
    raise_if_invalid,
)
from keyturn.server.domain.orders import MAX_LINES, MAX_QUANTITY, OrderLine, OrderRequest
from keyturn.server.domain.orders import validate_order as _validate_order
from keyturn.server.domain.validation import (
    validate_product,
    validate_sku_against_product,
    validate_sku_shape,
)

PRODUCT = Product(
    product_id="acme-cad",
    display_name="Acme CAD",
    editions=(
        Edition("standard", "Standard", (Feature("export"), Feature("projects", 10))),
        Edition("pro", "Pro", (Feature("export"), Feature("projects"), Feature("render"))),
    ),
)
CREATE = Create(edition_id="standard", seats_per_unit=1, term="P1Y")
SKU = Sku(sku_id="ACME-STD-1Y", product_id="acme-cad", operations=(CREATE,))
ORDER = OrderRequest(
    source="stripe",
    order_id="in_1234",
    customer=Customer("cus_1", "Ada Lovelace", "ada@example.com"),
    ship_to_email="it@example.com",
    lines=(OrderLine("ACME-STD-1Y", 2), OrderLine("ACME-ADD", 1, entitlement_id="ent_1")),
)


def fields(violations: list[FieldViolation]) -> list[str]:
    return [v.field for v in violations]


def sku_fields(*operations: Operation, sku_id: str = "SKU-1") -> list[str]:
    return fields(validate_sku_shape(Sku(sku_id, "acme-cad", operations)))


def order_fields(order: OrderRequest) -> list[str]:
    return fields(_validate_order(order))


# --- products ---------------------------------------------------------------


def test_a_valid_product_has_no_violations() -> None:
    assert validate_product(PRODUCT) == []


@pytest.mark.parametrize(
    ("product", "expected"),
    [
        (replace(PRODUCT, product_id=""), ["product.product_id"]),
        (replace(PRODUCT, product_id="Acme"), ["product.product_id"]),
        (replace(PRODUCT, product_id="1acme"), ["product.product_id"]),
        (replace(PRODUCT, product_id="a" * 65), ["product.product_id"]),
        (replace(PRODUCT, display_name="x" * 201), ["product.display_name"]),
        (replace(PRODUCT, editions=()), ["product.editions"]),
        (
            replace(PRODUCT, editions=(Edition("std"), Edition("Bad!"))),
            ["product.editions[1].edition_id"],
        ),
        (
            replace(PRODUCT, editions=(Edition("std"), Edition("pro"), Edition("std"))),
            ["product.editions[2].edition_id"],
        ),
        (
            replace(PRODUCT, editions=(Edition("std", "y" * 201),)),
            ["product.editions[0].display_name"],
        ),
        (
            replace(PRODUCT, editions=(Edition("std", features=(Feature("ok"), Feature("No"))),)),
            ["product.editions[0].features[1].name"],
        ),
        (
            replace(PRODUCT, editions=(Edition("std", features=(Feature("a"), Feature("a"))),)),
            ["product.editions[0].features[1].name"],
        ),
        (
            replace(PRODUCT, editions=(Edition("std", features=(Feature("a", -1),)),)),
            ["product.editions[0].features[0].limit"],
        ),
    ],
)
def test_product_violations_name_their_field(product: Product, expected: list[str]) -> None:
    assert fields(validate_product(product)) == expected


def test_a_zero_feature_limit_is_allowed() -> None:
    product = replace(PRODUCT, editions=(Edition("std", features=(Feature("a", 0),)),))
    assert validate_product(product) == []


def test_every_product_violation_is_reported_at_once() -> None:
    product = Product(
        product_id="",
        display_name="x" * 201,
        editions=(Edition("ok", features=(Feature("BAD"),)), Edition("ok")),
    )
    assert fields(validate_product(product)) == [
        "product.product_id",
        "product.display_name",
        "product.editions[0].features[0].name",
        "product.editions[1].edition_id",
    ]


def test_a_product_path_prefix_is_used() -> None:
    violations = validate_product(replace(PRODUCT, product_id=""), path="products[3]")
    assert fields(violations) == ["products[3].product_id"]


# --- SKUs -------------------------------------------------------------------


def test_a_valid_sku_has_no_violations() -> None:
    assert validate_sku_shape(SKU) == []
    assert validate_sku_against_product(SKU, PRODUCT) == []


def test_every_operation_kind_can_be_valid() -> None:
    operations: tuple[Operation, ...] = (
        Create("pro", 5, None, features=(Feature("render", 2),)),
        Renew("P1Y"),
        AddSeats(2),
        RemoveSeats(1),
        ChangeEdition("standard"),
        AddFeatures((Feature("render"),)),
        RemoveFeatures(("render",)),
        ConvertTrial(None),
        ConvertTrial("P1M"),
        Cancel(),
    )
    assert sku_fields(*operations) == []


@pytest.mark.parametrize(
    ("sku_id", "ok"),
    [
        ("A", True),
        ("acme.cad_std:1y-x", True),
        ("9" * 128, True),
        ("", False),
        ("-ACME", False),
        ("ACME STD", False),
        ("ACME/STD", False),
        ("9" * 129, False),
    ],
)
def test_sku_ids(sku_id: str, ok: bool) -> None:
    assert sku_fields(CREATE, sku_id=sku_id) == ([] if ok else ["sku.sku_id"])


@pytest.mark.parametrize(
    ("operations", "expected"),
    [
        ((), ["sku.operations"]),
        ((Renew("P1Y"),) * 17, ["sku.operations"]),
        ((CREATE, CREATE), ["sku.operations[1].create"]),
        ((Create("Std", 1, "P1Y"),), ["sku.operations[0].create.edition_id"]),
        ((Create("std", 0, "P1Y"),), ["sku.operations[0].create.seats_per_unit"]),
        ((Create("std", 100_001, "P1Y"),), ["sku.operations[0].create.seats_per_unit"]),
        ((Create("std", 1, "1 year"),), ["sku.operations[0].create.term"]),
        ((Create("std", 1, "P0D"),), ["sku.operations[0].create.term"]),
        ((Create("std", 1, None, trial=True),), ["sku.operations[0].create.perpetual"]),
        (
            (Create("std", 1, "P1Y", features=(Feature("x"), Feature("x"))),),
            ["sku.operations[0].create.features[1].name"],
        ),
        (
            (Create("std", 1, "P1Y", lease_duration=timedelta(seconds=59)),),
            ["sku.operations[0].create.lease_duration"],
        ),
        (
            (Create("std", 1, "P1Y", lease_duration=timedelta(days=30, seconds=1)),),
            ["sku.operations[0].create.lease_duration"],
        ),
        ((CREATE, Renew("P1X")), ["sku.operations[1].renew.term"]),
        ((AddSeats(0),), ["sku.operations[0].add_seats.seats_per_unit"]),
        ((RemoveSeats(-1),), ["sku.operations[0].remove_seats.seats_per_unit"]),
        ((ChangeEdition(""),), ["sku.operations[0].change_edition.edition_id"]),
        ((AddFeatures(()),), ["sku.operations[0].add_features.features"]),
        (
            (AddFeatures((Feature("ok"), Feature("ok", -2))),),
            [
                "sku.operations[0].add_features.features[1].name",
                "sku.operations[0].add_features.features[1].limit",
            ],
        ),
        ((RemoveFeatures(()),), ["sku.operations[0].remove_features.feature_names"]),
        (
            (RemoveFeatures(("ok", "Not Ok")),),
            ["sku.operations[0].remove_features.feature_names[1]"],
        ),
        ((ConvertTrial("soon"),), ["sku.operations[0].convert_trial.term"]),
    ],
)
def test_sku_violations_name_their_field(
    operations: tuple[Operation, ...], expected: list[str]
) -> None:
    assert sku_fields(*operations) == expected


def test_lease_duration_bounds_are_inclusive() -> None:
    assert sku_fields(Create("std", 1, "P1Y", lease_duration=timedelta(minutes=1))) == []
    assert sku_fields(Create("std", 1, "P1Y", lease_duration=timedelta(days=30))) == []


def test_a_sku_path_prefix_is_used() -> None:
    sku = Sku("", "acme-cad", (CREATE, AddSeats(0)))
    assert fields(validate_sku_shape(sku, path="skus[2]")) == [
        "skus[2].sku_id",
        "skus[2].operations[1].add_seats.seats_per_unit",
    ]


def test_every_sku_violation_is_reported_at_once() -> None:
    sku = Sku("bad id", "Bad", (Renew("x"), Create("std", 0, "P1Y")), display_name="d" * 201)
    assert fields(validate_sku_shape(sku)) == [
        "sku.sku_id",
        "sku.display_name",
        "sku.product_id",
        "sku.operations[0].renew.term",
        "sku.operations[1].create",
        "sku.operations[1].create.seats_per_unit",
    ]


def test_editions_a_sku_names_must_exist_in_its_product() -> None:
    sku = Sku(
        "SKU-1",
        "acme-cad",
        (Create("gold", 1, "P1Y"), ChangeEdition("pro"), ChangeEdition("platinum")),
    )
    violations = validate_sku_against_product(sku, PRODUCT)
    assert fields(violations) == [
        "sku.operations[0].create.edition_id",
        "sku.operations[2].change_edition.edition_id",
    ]
    assert "gold" in violations[0].description


# --- orders -----------------------------------------------------------------


def test_a_valid_order_has_no_violations() -> None:
    assert order_fields(ORDER) == []


def test_emails_are_optional() -> None:
    order = replace(ORDER, customer=Customer("cus_1"), ship_to_email="")
    assert order_fields(order) == []


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        (replace(ORDER, source=""), ["source"]),
        (replace(ORDER, source="Stripe"), ["source"]),
        (replace(ORDER, source="s" * 65), ["source"]),
        (replace(ORDER, order_id=""), ["order_id"]),
        (replace(ORDER, order_id="has space"), ["order_id"]),
        (replace(ORDER, order_id="o" * 129), ["order_id"]),
        (replace(ORDER, customer=Customer("")), ["customer.customer_id"]),
        (replace(ORDER, customer=Customer("c", "n" * 201)), ["customer.name"]),
        (replace(ORDER, customer=Customer("c", "", "not-an-email")), ["customer.email"]),
        (replace(ORDER, customer=Customer("c", "", "a@b")), ["customer.email"]),
        (replace(ORDER, ship_to_email="two@@example.com"), ["ship_to_email"]),
        (replace(ORDER, ship_to_email="a" * 250 + "@example.com"), ["ship_to_email"]),
        (replace(ORDER, lines=()), ["lines"]),
        (replace(ORDER, lines=(OrderLine("ACME", 1),) * (MAX_LINES + 1)), ["lines"]),
        (replace(ORDER, lines=(OrderLine("ACME", 1), OrderLine("", 1))), ["lines[1].sku_id"]),
        (replace(ORDER, lines=(OrderLine("bad sku", 1),)), ["lines[0].sku_id"]),
        (replace(ORDER, lines=(OrderLine("ACME", 0),)), ["lines[0].quantity"]),
        (replace(ORDER, lines=(OrderLine("ACME", MAX_QUANTITY + 1),)), ["lines[0].quantity"]),
        (
            replace(ORDER, lines=(OrderLine("ACME", 1, entitlement_id="e" * 65),)),
            ["lines[0].entitlement_id"],
        ),
        (
            replace(ORDER, lines=(OrderLine("ACME", 1, external_reference="stripe: sub"),)),
            ["lines[0].external_reference"],
        ),
        (
            replace(ORDER, lines=(OrderLine("ACME", 1, external_reference="r" * 201),)),
            ["lines[0].external_reference"],
        ),
    ],
)
def test_order_violations_name_their_field(order: OrderRequest, expected: list[str]) -> None:
    assert order_fields(order) == expected


def test_quantity_bounds_are_inclusive() -> None:
    lines = (OrderLine("ACME", 1), OrderLine("ACME", MAX_QUANTITY))
    assert order_fields(replace(ORDER, lines=lines)) == []
    assert order_fields(replace(ORDER, lines=(OrderLine("ACME", 1),) * MAX_LINES)) == []


def test_every_order_violation_is_reported_at_once() -> None:
    order = OrderRequest(
        source="",
        order_id="",
        customer=Customer(""),
        ship_to_email="nope",
        lines=(OrderLine("ok", 1), OrderLine("", 0)),
    )
    assert order_fields(order) == [
        "source",
        "order_id",
        "customer.customer_id",
        "ship_to_email",
        "lines[1].sku_id",
        "lines[1].quantity",
    ]


# --- the error that carries violations -------------------------------------------


def test_invalid_request_carries_every_violation_and_names_the_first() -> None:
    violations = [FieldViolation("a.b", "is wrong"), FieldViolation("c", "is bad")]
    error = invalid_request(violations)
    assert error.reason is Reason.INVALID_REQUEST
    assert error.violations == tuple(violations)
    assert error.metadata == {"field": "a.b"}
    assert error.message == "a.b: is wrong (and 1 more)"


def test_raise_if_invalid() -> None:
    raise_if_invalid([])
    with pytest.raises(DomainError) as caught:
        raise_if_invalid(validate_sku_shape(replace(SKU, sku_id="")))
    assert caught.value.reason is Reason.INVALID_REQUEST
    assert [v.field for v in caught.value.violations] == ["sku.sku_id"]
    assert caught.value.message.startswith("sku.sku_id: ")
