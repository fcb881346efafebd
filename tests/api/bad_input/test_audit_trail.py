"""ListAuditEvents: filters too long or not text, a time window that ends before it
starts or a time no date holds, page tokens of another query or forged.

The generated cases (generated.py) cover every string and paging field of the request.
"""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

from .cases import invalid, page_token
from .generated import generated_cases
from .running import refusal_test

RPC = "ListAuditEvents"
SCOPE = "audit:" + "\x1f" * 5  # the scope of a token issued with no filter


def at(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


LIST_AUDIT_EVENTS = [
    invalid(RPC, "actor-129-chars", ful.ListAuditEventsRequest(actor="a" * 129), "actor"),
    invalid(RPC, "action-65-chars", ful.ListAuditEventsRequest(action="a" * 65), "action"),
    invalid(
        RPC,
        "resource-301-chars",
        ful.ListAuditEventsRequest(resource="skus/" + "s" * 296),
        "resource",
    ),
    invalid(RPC, "actor-with-a-newline", ful.ListAuditEventsRequest(actor="token:\nx"), "actor"),
    invalid(
        RPC,
        "end-time-before-start-time",
        ful.ListAuditEventsRequest(start_time=at(2_000_000_000), end_time=at(1_000_000_000)),
        "end_time",
    ),
    invalid(
        RPC,
        "end-time-equal-to-start-time",
        ful.ListAuditEventsRequest(start_time=at(1_000_000_000), end_time=at(1_000_000_000)),
        "end_time",
    ),
    invalid(
        RPC,
        "start-time-past-year-9999",
        ful.ListAuditEventsRequest(start_time=at(10**12)),
        "start_time",
    ),
    invalid(
        RPC,
        "both-times-before-year-1",
        ful.ListAuditEventsRequest(start_time=at(-(10**12)), end_time=at(-(10**12))),
        "start_time",
        "end_time",
    ),
    invalid(
        RPC,
        "page-token-of-list-products",
        ful.ListAuditEventsRequest(page_token=page_token({"s": "products", "a": "acme-cad"})),
        "page_token",
    ),
    invalid(
        RPC,
        "page-token-of-other-filters",
        ful.ListAuditEventsRequest(
            action="sku.put", page_token=page_token({"s": SCOPE, "a": "10"})
        ),
        "page_token",
    ),
    invalid(
        RPC,
        "page-token-forged-non-numeric-cursor",
        ful.ListAuditEventsRequest(page_token=page_token({"s": SCOPE, "a": "abc"})),
        "page_token",
    ),
    invalid(
        RPC,
        "page-token-forged-30-digit-cursor",
        ful.ListAuditEventsRequest(page_token=page_token({"s": SCOPE, "a": "9" * 30})),
        "page_token",
    ),
]

CASES = [*generated_cases(RPC), *LIST_AUDIT_EVENTS]

test_bad_input_is_refused_and_writes_nothing = refusal_test(CASES)
