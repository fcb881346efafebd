"""ListActivations and DeactivateSeat: unknown states, entitlements and activations, page
tokens of other queries, reasons too long or missing.

The generated cases (generated.py) cover every string, paging and required field of
these requests; the wrong-scope token is test_transport's.
"""

from __future__ import annotations

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

from .cases import Code, invalid, page_token, refused
from .generated import generated_cases
from .running import refusal_test
from .world import UNKNOWN_ENTITLEMENT, World

UNKNOWN_ACTIVATION = "act_01arz3ndektsv4rrffq69g5fav"


def listing(**fields: object) -> ful.ListActivationsRequest:
    return ful.ListActivationsRequest(**fields)  # type: ignore[arg-type]


def deactivation(w: World, **fields: str) -> ful.DeactivateSeatRequest:
    values = {
        "entitlement_id": w.entitlement_id,
        "activation_id": w.activation_id,
        "reason": "laptop stolen",
    }
    values.update(fields)
    return ful.DeactivateSeatRequest(**values)


LIST_ACTIVATIONS = [
    invalid(
        "ListActivations",
        "unknown-state",
        listing(customer_id="cust-1", states=[ful.ACTIVATION_STATE_LIVE, 99]),
        "states[1]",
    ),
    invalid(
        "ListActivations",
        "unspecified-state",
        listing(customer_id="cust-1", states=[ful.ACTIVATION_STATE_UNSPECIFIED]),
        "states[0]",
    ),
    invalid(
        "ListActivations",
        "customer-id-10k-chars-without-entitlement",
        listing(customer_id="c" * 10_000),
        "customer_id",
    ),
    invalid(
        "ListActivations",
        "page-token-of-list-entitlements",
        lambda w: listing(customer_id="cust-1", page_token=w.entitlements_page_token),
        "page_token",
    ),
    invalid(
        "ListActivations",
        "page-token-of-another-customer",
        listing(
            customer_id="cust-2",
            page_token=page_token({"s": "activations:\x1fcust-1\x1f\x1f\x1f", "a": "act_0"}),
        ),
        "page_token",
    ),
    refused(
        "ListActivations",
        "unknown-entitlement",
        listing(entitlement_id=UNKNOWN_ENTITLEMENT),
        Code.NOT_FOUND,
        "ENTITLEMENT_NOT_FOUND",
        entitlement_id=UNKNOWN_ENTITLEMENT,
    ),
]

DEACTIVATE_SEAT = [
    refused(
        "DeactivateSeat",
        "unknown-activation",
        lambda w: deactivation(w, activation_id=UNKNOWN_ACTIVATION),
        Code.NOT_FOUND,
        "ACTIVATION_NOT_FOUND",
        activation_id=UNKNOWN_ACTIVATION,
    ),
    refused(
        "DeactivateSeat",
        "activation-of-another-entitlement",
        lambda w: deactivation(w, entitlement_id=w.perpetual_id),
        Code.NOT_FOUND,
        "ACTIVATION_NOT_FOUND",
        activation_id=lambda w: w.activation_id,
    ),
    refused(
        "DeactivateSeat",
        "unknown-entitlement",
        lambda w: deactivation(w, entitlement_id=UNKNOWN_ENTITLEMENT),
        Code.NOT_FOUND,
        "ENTITLEMENT_NOT_FOUND",
        entitlement_id=UNKNOWN_ENTITLEMENT,
    ),
    invalid(
        "DeactivateSeat", "reason-501-chars", lambda w: deactivation(w, reason="r" * 501), "reason"
    ),
    invalid(
        "DeactivateSeat",
        "reason-with-a-newline",
        lambda w: deactivation(w, reason="stolen\nlaptop"),
        "reason",
    ),
    invalid(
        "DeactivateSeat",
        "every-field-too-long",
        lambda w: deactivation(
            w, entitlement_id="e" * 65, activation_id="a" * 65, reason="r" * 501
        ),
        "entitlement_id",
        "activation_id",
        "reason",
    ),
]

CASES = [
    *generated_cases("ListActivations", "DeactivateSeat"),
    *LIST_ACTIVATIONS,
    *DEACTIVATE_SEAT,
]

test_bad_input_is_refused_and_writes_nothing = refusal_test(CASES)
