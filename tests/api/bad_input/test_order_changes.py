"""FulfillOrder lines that change an entitlement: targets, references, each operation's
rules, the bounds of seats and dates, and orders whose last line fails after good ones
(nothing of the good lines may remain).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

from .builders import cancelled_id, fulfil, line, other_product_id, perpetual_id, world_id
from .cases import Code, invalid, refused
from .running import refusal_test
from .world import (
    CANCELLED_REFERENCE,
    CHANGE_SKUS,
    OTHER_REFERENCE,
    PERPETUAL_REFERENCE,
    TAKEN_REFERENCE,
    UNKNOWN_ENTITLEMENT,
    World,
)


def change(
    sku_id: str,
    target: Callable[[World], str] | None = None,
    quantity: int = 1,
    reference: str = "",
) -> Callable[[World], ful.FulfillOrderRequest]:
    """An order of one line of `sku_id` aimed at `target(world)` (and/or by `reference`)."""

    def build(w: World) -> ful.FulfillOrderRequest:
        entitlement_id = target(w) if target else ""
        return fulfil(
            [line(sku_id, quantity, entitlement_id=entitlement_id, external_reference=reference)]
        )

    return build


def quantity_reaching(end: datetime, target: datetime, days_per_unit: int) -> int:
    """Units of a `days_per_unit` renewal that take `end` to `target` or less than one
    unit past it."""
    return math.ceil((target - end) / timedelta(days=days_per_unit))


def renew_far_into(year: int) -> Callable[[World], ful.FulfillOrderRequest]:
    """RENEW-50D (from expiry) on the far entitlement, enough units to end in `year`."""

    def build(w: World) -> ful.FulfillOrderRequest:
        units = quantity_reaching(w.far_end, datetime(year, 1, 1, tzinfo=UTC), 50)
        return change("RENEW-50D", lambda w: w.far_id, quantity=units)(w)

    return build


def renew_grace_to_end_of_9999(w: World) -> ful.FulfillOrderRequest:
    """An end date in October or November 9999: plus 90 days of grace, past 9999-12-31."""
    units = quantity_reaching(w.grace_end, datetime(9999, 10, 1, tzinfo=UTC), 50)
    end = w.grace_end.toordinal() + 50 * units
    assert datetime(9999, 10, 1).toordinal() <= end <= datetime(9999, 11, 20).toordinal()
    return change("RENEW-50D", lambda w: w.grace_id, quantity=units)(w)


def failing_last_line(last: ful.OrderLine) -> Callable[[World], ful.FulfillOrderRequest]:
    """Three good lines (a create with a new reference, a renewal that attaches another
    reference, added seats), then `last`: nothing of the first three may remain."""

    def build(w: World) -> ful.FulfillOrderRequest:
        return fulfil(
            [
                line("STD", external_reference="stripe:sub_multi_new"),
                line(
                    "RENEW",
                    entitlement_id=w.entitlement_id,
                    external_reference="stripe:sub_multi_attached",
                ),
                line("ADD-SEATS", entitlement_id=w.entitlement_id),
                last,
            ]
        )

    return build


def failing_last_line_to(
    sku_id: str, target: Callable[[World], str]
) -> Callable[[World], ful.FulfillOrderRequest]:
    return lambda w: failing_last_line(line(sku_id, entitlement_id=target(w)))(w)


FULFILL_CHANGES = [
    *[
        invalid(
            "FulfillOrder",
            f"{sku.lower()}-without-target",
            fulfil([line(sku)]),
            "lines[0].entitlement_id",
        )
        for sku in CHANGE_SKUS
    ],
    invalid(
        "FulfillOrder",
        "renew-without-target-on-second-line",
        fulfil([line(), line("RENEW", quantity=2)]),
        "lines[1].entitlement_id",
    ),
    refused(
        "FulfillOrder",
        "renew-unknown-entitlement-id",
        change("RENEW", lambda w: UNKNOWN_ENTITLEMENT),
        Code.NOT_FOUND,
        "ENTITLEMENT_NOT_FOUND",
        entitlement_id=UNKNOWN_ENTITLEMENT,
        line="0",
    ),
    refused(
        "FulfillOrder",
        "cancel-unknown-entitlement-id",
        change("CANCEL", lambda w: "ent_nope"),
        Code.NOT_FOUND,
        "ENTITLEMENT_NOT_FOUND",
        entitlement_id="ent_nope",
        line="0",
    ),
    refused(
        "FulfillOrder",
        "renew-unknown-external-reference",
        change("RENEW", reference="stripe:sub_unknown"),
        Code.NOT_FOUND,
        "ENTITLEMENT_NOT_FOUND",
        external_reference="stripe:sub_unknown",
        line="0",
    ),
    refused(
        "FulfillOrder",
        "add-seats-unknown-external-reference-on-second-line",
        lambda w: fulfil(
            [
                line("RENEW", entitlement_id=w.entitlement_id),
                line("ADD-SEATS", external_reference="stripe:sub_unknown"),
            ]
        ),
        Code.NOT_FOUND,
        "ENTITLEMENT_NOT_FOUND",
        external_reference="stripe:sub_unknown",
        line="1",
    ),
    invalid(
        "FulfillOrder",
        "renew-target-of-another-product",
        change("RENEW", other_product_id),
        "lines[0].entitlement_id",
    ),
    invalid(
        "FulfillOrder",
        "add-seats-reference-of-another-product",
        change("ADD-SEATS", reference=OTHER_REFERENCE),
        "lines[0].external_reference",
    ),
    invalid(
        "FulfillOrder",
        "cancel-target-of-another-product",
        change("CANCEL", other_product_id),
        "lines[0].entitlement_id",
    ),
    refused(
        "FulfillOrder",
        "renew-attaching-a-reference-of-another-entitlement",
        change("RENEW", world_id, reference=PERPETUAL_REFERENCE),
        Code.ALREADY_EXISTS,
        "EXTERNAL_REFERENCE_TAKEN",
        external_reference=PERPETUAL_REFERENCE,
        line="0",
    ),
    refused(
        "FulfillOrder",
        "add-features-attaching-a-reference-of-another-product",
        change("ADD-FEATURES", world_id, reference=OTHER_REFERENCE),
        Code.ALREADY_EXISTS,
        "EXTERNAL_REFERENCE_TAKEN",
        external_reference=OTHER_REFERENCE,
        line="0",
    ),
    refused(
        "FulfillOrder",
        "same-new-reference-attached-to-two-entitlements",
        lambda w: fulfil(
            [
                line("RENEW", entitlement_id=w.entitlement_id, external_reference="stripe:x"),
                line("ADD-SEATS", entitlement_id=w.far_id, external_reference="stripe:x"),
            ]
        ),
        Code.ALREADY_EXISTS,
        "EXTERNAL_REFERENCE_TAKEN",
        external_reference="stripe:x",
        line="1",
    ),
    refused(
        "FulfillOrder",
        "remove-the-only-seat",
        change("REMOVE-SEATS", world_id),
        Code.FAILED_PRECONDITION,
        "SEAT_MINIMUM",
        entitlement_id=world_id,
        seats="1",
        line="0",
    ),
    refused(
        "FulfillOrder",
        "remove-100000-of-1-seat",
        change("REMOVE-SEATS", world_id, quantity=100_000),
        Code.FAILED_PRECONDITION,
        "SEAT_MINIMUM",
        entitlement_id=world_id,
        seats="1",
        line="0",
    ),
    refused(
        "FulfillOrder",
        "remove-seats-by-reference-of-perpetual",
        change("REMOVE-SEATS", reference=PERPETUAL_REFERENCE),
        Code.FAILED_PRECONDITION,
        "SEAT_MINIMUM",
        entitlement_id=perpetual_id,
        seats="1",
        line="0",
    ),
    refused(
        "FulfillOrder",
        "convert-a-paid-entitlement",
        change("CONVERT", world_id),
        Code.FAILED_PRECONDITION,
        "NOT_A_TRIAL",
        entitlement_id=world_id,
        line="0",
    ),
    refused(
        "FulfillOrder",
        "convert-a-perpetual-entitlement",
        change("CONVERT", perpetual_id),
        Code.FAILED_PRECONDITION,
        "NOT_A_TRIAL",
        entitlement_id=perpetual_id,
        line="0",
    ),
    refused(
        "FulfillOrder",
        "renew-a-perpetual-entitlement",
        change("RENEW", perpetual_id),
        Code.FAILED_PRECONDITION,
        "ENTITLEMENT_PERPETUAL",
        entitlement_id=perpetual_id,
        line="0",
    ),
    refused(
        "FulfillOrder",
        "renew-a-perpetual-entitlement-by-reference",
        change("RENEW-100Y", reference=PERPETUAL_REFERENCE, quantity=100_000),
        Code.FAILED_PRECONDITION,
        "ENTITLEMENT_PERPETUAL",
        entitlement_id=perpetual_id,
        line="0",
    ),
    *[
        refused(
            "FulfillOrder",
            f"{sku.lower()}-a-cancelled-entitlement",
            change(sku, cancelled_id),
            Code.FAILED_PRECONDITION,
            "ENTITLEMENT_CANCELLED",
            entitlement_id=cancelled_id,
            line="0",
        )
        for sku in CHANGE_SKUS
    ],
    refused(
        "FulfillOrder",
        "renew-a-cancelled-entitlement-by-reference",
        change("RENEW", reference=CANCELLED_REFERENCE),
        Code.FAILED_PRECONDITION,
        "ENTITLEMENT_CANCELLED",
        entitlement_id=cancelled_id,
        line="0",
    ),
    invalid(
        "FulfillOrder",
        "add-seats-to-1000001",
        change("ADD-SEATS", world_id, quantity=10),
        "lines[0].quantity",
    ),
    invalid(
        "FulfillOrder",
        "add-seats-100000x100000",
        change("ADD-SEATS", world_id, quantity=100_000),
        "lines[0].quantity",
    ),
    invalid(
        "FulfillOrder",
        "add-seats-to-1000001-over-two-lines",
        lambda w: fulfil(
            [
                line("ADD-SEATS", 5, entitlement_id=w.entitlement_id),
                line("ADD-SEATS", 5, entitlement_id=w.entitlement_id),
            ]
        ),
        "lines[1].quantity",
    ),
    invalid(
        "FulfillOrder",
        "renew-100y-x-70-past-year-9000",
        change("RENEW-100Y", world_id, quantity=70),
        "lines[0].quantity",
    ),
    invalid(
        "FulfillOrder",
        "renew-100y-x-100000",
        change("RENEW-100Y", world_id, quantity=100_000),
        "lines[0].quantity",
    ),
    invalid(
        "FulfillOrder",
        "renew-50d-x-100000-past-year-9999",
        change("RENEW-50D", world_id, quantity=100_000),
        "lines[0].quantity",
    ),
    invalid(
        "FulfillOrder",
        "renew-50d-into-year-9500",
        renew_far_into(9500),
        "lines[0].quantity",
    ),
    invalid(
        "FulfillOrder",
        "renew-50d-to-end-of-9999-with-90d-grace",
        renew_grace_to_end_of_9999,
        "lines[0].quantity",
    ),
    refused(
        "FulfillOrder",
        "multi-line-last-renews-a-perpetual",
        failing_last_line_to("RENEW", perpetual_id),
        Code.FAILED_PRECONDITION,
        "ENTITLEMENT_PERPETUAL",
        entitlement_id=perpetual_id,
        line="3",
    ),
    refused(
        "FulfillOrder",
        "multi-line-last-cancels-a-cancelled",
        failing_last_line_to("CANCEL", cancelled_id),
        Code.FAILED_PRECONDITION,
        "ENTITLEMENT_CANCELLED",
        entitlement_id=cancelled_id,
        line="3",
    ),
    refused(
        "FulfillOrder",
        "multi-line-suspends-then-cancels-a-cancelled",
        lambda w: fulfil(
            [
                line("SUSPEND", entitlement_id=w.entitlement_id),
                line("CANCEL", entitlement_id=w.cancelled_id),
            ]
        ),
        Code.FAILED_PRECONDITION,
        "ENTITLEMENT_CANCELLED",
        entitlement_id=cancelled_id,
        line="1",
    ),
    refused(
        "FulfillOrder",
        "multi-line-last-removes-the-only-seat",
        failing_last_line(line("REMOVE-SEATS", external_reference=PERPETUAL_REFERENCE)),
        Code.FAILED_PRECONDITION,
        "SEAT_MINIMUM",
        entitlement_id=perpetual_id,
        seats="1",
        line="3",
    ),
    refused(
        "FulfillOrder",
        "multi-line-last-names-an-unknown-entitlement",
        failing_last_line(line("RENEW", entitlement_id=UNKNOWN_ENTITLEMENT)),
        Code.NOT_FOUND,
        "ENTITLEMENT_NOT_FOUND",
        entitlement_id=UNKNOWN_ENTITLEMENT,
        line="3",
    ),
    refused(
        "FulfillOrder",
        "multi-line-last-takes-a-reference-just-created",
        failing_last_line(
            line("STD", external_reference="stripe:sub_multi_new"),
        ),
        Code.ALREADY_EXISTS,
        "EXTERNAL_REFERENCE_TAKEN",
        external_reference="stripe:sub_multi_new",
        line="3",
    ),
    invalid(
        "FulfillOrder",
        "multi-line-last-has-no-target",
        failing_last_line(line("CONVERT")),
        "lines[3].entitlement_id",
    ),
    invalid(
        "FulfillOrder",
        "multi-line-last-aims-at-another-product",
        failing_last_line(line("RENEW", external_reference=OTHER_REFERENCE)),
        "lines[3].external_reference",
    ),
    invalid(
        "FulfillOrder",
        "multi-line-last-adds-too-many-seats",
        failing_last_line(line("ADD-SEATS", 9, external_reference=TAKEN_REFERENCE)),
        "lines[3].quantity",
    ),
]


CASES = FULFILL_CHANGES

test_bad_input_is_refused_and_writes_nothing = refusal_test(CASES)
