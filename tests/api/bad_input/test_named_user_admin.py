"""RemoveNamedUser, ChangeNamedUserEmail, LookupCustomer and ResendCredentials' user_id:
ids and emails malformed, unknown users, a lookup with neither key, page tokens of
other queries.

The generated cases (generated.py) cover every string, paging and required field.
"""

from __future__ import annotations

from collections.abc import Callable

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

from .builders import UNKNOWN_USER
from .cases import K10, Code, invalid, refused
from .generated import generated_cases
from .running import refusal_test
from .world import UNKNOWN_ENTITLEMENT, World


def remove(
    user_id: str = UNKNOWN_USER, entitlement_id: str = ""
) -> Callable[[World], ful.RemoveNamedUserRequest]:
    def build(w: World) -> ful.RemoveNamedUserRequest:
        return ful.RemoveNamedUserRequest(
            entitlement_id=entitlement_id or w.entitlement_id, user_id=user_id
        )

    return build


def change(
    email: str, user_id: str = UNKNOWN_USER, entitlement_id: str = ""
) -> Callable[[World], ful.ChangeNamedUserEmailRequest]:
    def build(w: World) -> ful.ChangeNamedUserEmailRequest:
        return ful.ChangeNamedUserEmailRequest(
            entitlement_id=entitlement_id or w.entitlement_id, user_id=user_id, email=email
        )

    return build


REMOVE = [
    invalid("RemoveNamedUser", "user-id-65-chars", remove("u" * 65), "user_id"),
    invalid("RemoveNamedUser", "user-id-with-space", remove("usr 1"), "user_id"),
    invalid(
        "RemoveNamedUser",
        "both-ids-too-long",
        ful.RemoveNamedUserRequest(entitlement_id=K10, user_id=K10),
        "entitlement_id",
        "user_id",
    ),
    refused(
        "RemoveNamedUser",
        "unknown-user",
        remove(),
        Code.NOT_FOUND,
        "NAMED_USER_NOT_FOUND",
        user_id=UNKNOWN_USER,
    ),
    refused(
        "RemoveNamedUser",
        "unknown-entitlement",
        remove(entitlement_id=UNKNOWN_ENTITLEMENT),
        Code.NOT_FOUND,
        "ENTITLEMENT_NOT_FOUND",
        entitlement_id=UNKNOWN_ENTITLEMENT,
    ),
]

CHANGE = [
    invalid("ChangeNamedUserEmail", "email-not-an-email", change("not-an-email"), "email"),
    invalid("ChangeNamedUserEmail", "email-two-ats", change("a@b@c.example"), "email"),
    invalid(
        "ChangeNamedUserEmail",
        "email-255-chars",
        change("a" * 60 + "@" + "b" * 186 + ".example"),
        "email",
    ),
    invalid(
        "ChangeNamedUserEmail",
        "bad-user-id-and-bad-email",
        change("nope", user_id="u" * 65),
        "user_id",
        "email",
    ),
    refused(
        "ChangeNamedUserEmail",
        "unknown-user",
        change("new@initech.example"),
        Code.NOT_FOUND,
        "NAMED_USER_NOT_FOUND",
        user_id=UNKNOWN_USER,
    ),
    refused(
        "ChangeNamedUserEmail",
        "unknown-entitlement",
        change("new@initech.example", entitlement_id=UNKNOWN_ENTITLEMENT),
        Code.NOT_FOUND,
        "ENTITLEMENT_NOT_FOUND",
        entitlement_id=UNKNOWN_ENTITLEMENT,
    ),
]

LOOKUP = [
    invalid(
        "LookupCustomer",
        "neither-customer-id-nor-email",
        ful.LookupCustomerRequest(page_size=10),
        "customer_id",
    ),
    invalid(
        "LookupCustomer",
        "email-not-an-email",
        ful.LookupCustomerRequest(email="not-an-email"),
        "email",
    ),
    invalid(
        "LookupCustomer",
        "customer-id-with-space",
        ful.LookupCustomerRequest(customer_id="cust 1"),
        "customer_id",
    ),
    invalid(
        "LookupCustomer",
        "both-bad",
        ful.LookupCustomerRequest(customer_id="c" * 129, email="a@b@c"),
        "customer_id",
        "email",
    ),
    invalid(
        "LookupCustomer",
        "page-token-of-list-entitlements",
        lambda w: ful.LookupCustomerRequest(
            customer_id="cust-1", page_token=w.entitlements_page_token
        ),
        "page_token",
    ),
]

RESEND = [
    refused(
        "ResendCredentials",
        "unknown-user",
        lambda w: ful.ResendCredentialsRequest(
            entitlement_id=w.entitlement_id, user_id=UNKNOWN_USER
        ),
        Code.NOT_FOUND,
        "NAMED_USER_NOT_FOUND",
        user_id=UNKNOWN_USER,
    ),
    invalid(
        "ResendCredentials",
        "user-id-65-chars",
        lambda w: ful.ResendCredentialsRequest(entitlement_id=w.entitlement_id, user_id="u" * 65),
        "user_id",
    ),
]

CASES = [
    *generated_cases("RemoveNamedUser", "ChangeNamedUserEmail", "LookupCustomer"),
    *REMOVE,
    *CHANGE,
    *LOOKUP,
    *RESEND,
]

test_bad_input_is_refused_and_writes_nothing = refusal_test(CASES)
