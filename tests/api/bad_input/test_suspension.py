"""SuspendEntitlement and ReinstateEntitlement: unknown and cancelled entitlements, an
overlong reason. The generated cases (generated.py) cover every string and the
required entitlement id. Nothing of a refused call may be written."""

from __future__ import annotations

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

from .builders import cancelled_id
from .cases import Code, invalid, refused
from .generated import generated_cases
from .running import refusal_test
from .world import UNKNOWN_ENTITLEMENT


def suspend(entitlement_id: str, reason: str = "") -> ful.SuspendEntitlementRequest:
    return ful.SuspendEntitlementRequest(entitlement_id=entitlement_id, reason=reason)


CASES = [
    *generated_cases("SuspendEntitlement", "ReinstateEntitlement"),
    refused(
        "SuspendEntitlement",
        "unknown-entitlement",
        suspend(UNKNOWN_ENTITLEMENT),
        Code.NOT_FOUND,
        "ENTITLEMENT_NOT_FOUND",
        entitlement_id=UNKNOWN_ENTITLEMENT,
    ),
    refused(
        "ReinstateEntitlement",
        "unknown-entitlement",
        ful.ReinstateEntitlementRequest(entitlement_id=UNKNOWN_ENTITLEMENT),
        Code.NOT_FOUND,
        "ENTITLEMENT_NOT_FOUND",
        entitlement_id=UNKNOWN_ENTITLEMENT,
    ),
    refused(
        "SuspendEntitlement",
        "a-cancelled-entitlement",
        lambda w: suspend(w.cancelled_id, "payment_failed"),
        Code.FAILED_PRECONDITION,
        "ENTITLEMENT_CANCELLED",
        entitlement_id=cancelled_id,
    ),
    refused(
        "ReinstateEntitlement",
        "a-cancelled-entitlement",
        lambda w: ful.ReinstateEntitlementRequest(entitlement_id=w.cancelled_id),
        Code.FAILED_PRECONDITION,
        "ENTITLEMENT_CANCELLED",
        entitlement_id=cancelled_id,
    ),
    invalid(
        "SuspendEntitlement",
        "reason-501-chars",
        lambda w: suspend(w.entitlement_id, "r" * 501),
        "reason",
    ),
    invalid(
        "SuspendEntitlement",
        "reason-a-newline",
        lambda w: suspend(w.entitlement_id, "payment\nfailed"),
        "reason",
    ),
    invalid("SuspendEntitlement", "entitlement-id-65-chars", suspend("e" * 65), "entitlement_id"),
]

test_bad_input_is_refused_and_writes_nothing = refusal_test(CASES)
