"""ListEntitlements, ListEntitlementEvents and WatchEntitlementEvents: filters, page
tokens taken from another list or forged, and sequences beyond the last event.

The generated cases (generated.py) cover every string, enum, paging and required
field of these requests.
"""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import Message

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

from .builders import cancelled_id, events_of, list_entitlements, world_id
from .cases import K10, Code, invalid, page_token, refused
from .generated import generated_cases
from .running import refusal_test
from .world import UNKNOWN_ENTITLEMENT, World

# --- ListEntitlements, ListEntitlementEvents, WatchEntitlementEvents --------------------------


def entitlements_token_with(**filters: object) -> Callable[[World], ful.ListEntitlementsRequest]:
    """The world's real ListEntitlements token (issued for customer_id=cust-1) with `filters`."""
    return lambda w: ful.ListEntitlementsRequest(
        page_token=w.entitlements_page_token,
        **filters,  # type: ignore[arg-type]
    )


LIST_ENTITLEMENTS = [
    invalid(
        "ListEntitlements",
        "page-token-of-another-customer",
        entitlements_token_with(customer_id="cust-2"),
        "page_token",
    ),
    invalid(
        "ListEntitlements",
        "page-token-without-its-filter",
        entitlements_token_with(),
        "page_token",
    ),
    invalid(
        "ListEntitlements",
        "page-token-with-an-extra-filter",
        entitlements_token_with(customer_id="cust-1", status=ful.ENTITLEMENT_STATUS_ACTIVE),
        "page_token",
    ),
    invalid(
        "ListEntitlements",
        "page-token-of-list-entitlement-events",
        lambda w: list_entitlements(page_token=w.events_page_token),
        "page_token",
    ),
    invalid(
        "ListEntitlements",
        "page-token-of-list-products",
        list_entitlements(page_token=page_token({"s": "products", "a": "acme-cad"})),
        "page_token",
    ),
    invalid(
        "ListEntitlements",
        "page-token-forged-nul-cursor",
        list_entitlements(
            page_token=page_token({"s": "entitlements:" + "\x1f" * 4, "a": "ent_\x00"})
        ),
        "page_token",
    ),
    invalid(
        "ListEntitlements",
        "email-not-an-email",
        list_entitlements(email="not-an-email"),
        "email",
    ),
    invalid("ListEntitlements", "email-two-ats", list_entitlements(email="a@b@c.example"), "email"),
    invalid(
        "ListEntitlements",
        "email-255-chars",
        list_entitlements(email="a" * 60 + "@" + "b" * 186 + ".example"),
        "email",
    ),
    invalid(
        "ListEntitlements",
        "customer-id-129-chars",
        list_entitlements(customer_id="c" * 129),
        "customer_id",
    ),
    invalid(
        "ListEntitlements",
        "customer-id-with-space",
        list_entitlements(customer_id="cust 1"),
        "customer_id",
    ),
    invalid(
        "ListEntitlements",
        "product-id-uppercase",
        list_entitlements(product_id="Acme-CAD"),
        "product_id",
    ),
    invalid(
        "ListEntitlements",
        "product-id-starts-with-digit",
        list_entitlements(product_id="1acme"),
        "product_id",
    ),
    invalid(
        "ListEntitlements",
        "product-id-65-chars",
        list_entitlements(product_id="p" * 65),
        "product_id",
    ),
    invalid(
        "ListEntitlements",
        "external-reference-201-chars",
        list_entitlements(external_reference="r" * 201),
        "external_reference",
    ),
    invalid(
        "ListEntitlements",
        "every-text-filter-bad",
        list_entitlements(
            customer_id=K10, email="not-an-email", product_id="Not A Slug", external_reference=K10
        ),
        "customer_id",
        "email",
        "product_id",
        "external_reference",
    ),
    invalid(
        "ListEntitlements",
        "status-99-and-bad-email",
        list_entitlements(status=99, email="not-an-email"),
        "status",
        "email",
    ),
]


def events_cursor(cursor: str) -> Callable[[World], ful.ListEntitlementEventsRequest]:
    """A token shaped as the server's for the cancelled entitlement, with any cursor."""
    return lambda w: ful.ListEntitlementEventsRequest(
        entitlement_id=w.cancelled_id,
        page_token=page_token({"s": f"events:{w.cancelled_id}", "a": cursor}),
    )


LIST_ENTITLEMENT_EVENTS = [
    invalid(
        "ListEntitlementEvents",
        "entitlement-id-65-chars",
        ful.ListEntitlementEventsRequest(entitlement_id="e" * 65),
        "entitlement_id",
    ),
    refused(
        "ListEntitlementEvents",
        "unknown-entitlement",
        ful.ListEntitlementEventsRequest(entitlement_id=UNKNOWN_ENTITLEMENT),
        Code.NOT_FOUND,
        "ENTITLEMENT_NOT_FOUND",
        entitlement_id=UNKNOWN_ENTITLEMENT,
    ),
    invalid(
        "ListEntitlementEvents",
        "negative-page-size-of-unknown-entitlement",
        ful.ListEntitlementEventsRequest(entitlement_id=UNKNOWN_ENTITLEMENT, page_size=-1),
        "page_size",
    ),
    invalid(
        "ListEntitlementEvents",
        "page-token-of-another-entitlement",
        lambda w: events_of(world_id, token=w.events_page_token)(w),
        "page_token",
    ),
    invalid(
        "ListEntitlementEvents",
        "page-token-of-list-entitlements",
        lambda w: events_of(cancelled_id, token=w.entitlements_page_token)(w),
        "page_token",
    ),
    invalid(
        "ListEntitlementEvents",
        "page-token-forged-non-numeric-cursor",
        events_cursor("abc"),
        "page_token",
    ),
    invalid(
        "ListEntitlementEvents",
        "page-token-forged-negative-cursor",
        events_cursor("-1"),
        "page_token",
    ),
    invalid(
        "ListEntitlementEvents",
        "page-token-forged-superscript-digit-cursor",
        events_cursor("\u00b2"),
        "page_token",
    ),
    invalid(
        "ListEntitlementEvents",
        "page-token-forged-30-digit-cursor",
        events_cursor("9" * 30),
        "page_token",
    ),
]


def watch_after(sequence: Callable[[World], int]) -> Callable[[World], Message]:
    return lambda w: ful.WatchEntitlementEventsRequest(after_sequence=sequence(w))


def last_sequence(w: World) -> str:
    return str(w.last_sequence)


WATCH_ENTITLEMENT_EVENTS = [
    invalid(
        "WatchEntitlementEvents",
        "negative-after-sequence",
        ful.WatchEntitlementEventsRequest(after_sequence=-1),
        "after_sequence",
    ),
    invalid(
        "WatchEntitlementEvents",
        "int64-min-after-sequence",
        ful.WatchEntitlementEventsRequest(after_sequence=-(2**63)),
        "after_sequence",
    ),
    refused(
        "WatchEntitlementEvents",
        "after-sequence-one-beyond-the-last",
        watch_after(lambda w: w.last_sequence + 1),
        Code.OUT_OF_RANGE,
        "SEQUENCE_OUT_OF_RANGE",
        last_sequence=last_sequence,
    ),
    refused(
        "WatchEntitlementEvents",
        "int64-max-after-sequence",
        ful.WatchEntitlementEventsRequest(after_sequence=2**63 - 1),
        Code.OUT_OF_RANGE,
        "SEQUENCE_OUT_OF_RANGE",
        last_sequence=last_sequence,
    ),
]


CASES = [
    *generated_cases("ListEntitlements", "ListEntitlementEvents", "WatchEntitlementEvents"),
    *LIST_ENTITLEMENTS,
    *LIST_ENTITLEMENT_EVENTS,
    *WATCH_ENTITLEMENT_EVENTS,
]

test_bad_input_is_refused_and_writes_nothing = refusal_test(CASES)
