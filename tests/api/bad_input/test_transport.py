"""What every RPC gets before its own checks: requests that do not decode, and bearer
tokens that are missing, garbage, of the wrong scope or of the wrong scheme.
A token is judged before the request is: a wrong scope is PERMISSION_DENIED even
for a request that is also invalid or names something unknown.
"""

from __future__ import annotations

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic

from .builders import WELL_FORMED, list_entitlements
from .cases import INVALID_UNDECODABLE, RPCS, Case, Code, invalid, refused
from .running import refusal_test
from .world import OTHER_SCOPE, UNKNOWN_ENTITLEMENT

# A request that does not decode: no field can be named, but the answer is still
# INVALID_ARGUMENT with an ErrorInfo, never a bare INTERNAL.
UNDECODABLE = [
    Case("GetSigningKeys", "undecodable-request", b"\xff\xff\xff", *INVALID_UNDECODABLE),
    Case("PutSku", "undecodable-request", b"\x0a\xff\xff\xff\xff\x0f", *INVALID_UNDECODABLE),
    Case("FulfillOrder", "truncated-request", b"\x0a\x10test", *INVALID_UNDECODABLE),
    Case("WatchEntitlementEvents", "truncated-varint", b"\x08\xff", *INVALID_UNDECODABLE),
    Case("ListEntitlements", "truncated-request", b"\x12\x05ab", *INVALID_UNDECODABLE),
]


def auth_cases() -> list[Case]:
    cases: list[Case] = []
    for rpc, (_, scope) in RPCS.items():
        if scope is None:  # LicensingService takes no bearer token
            continue
        good = WELL_FORMED[rpc]
        cases += [
            refused(rpc, "no-token", good, Code.UNAUTHENTICATED, "MISSING_CREDENTIALS", auth=None),
            refused(
                rpc,
                "garbage-token",
                good,
                Code.UNAUTHENTICATED,
                "INVALID_TOKEN",
                auth=(("authorization", "Bearer kt_garbage"),),
            ),
            refused(
                rpc,
                f"{OTHER_SCOPE[scope]}-scope-token",
                good,
                Code.PERMISSION_DENIED,
                "INSUFFICIENT_SCOPE",
                auth=OTHER_SCOPE[scope],
                required_scope=scope,
            ),
        ]
    bearer = Code.UNAUTHENTICATED, "MISSING_CREDENTIALS"
    return [
        *cases,
        refused(
            "PutSku",
            "basic-auth",
            WELL_FORMED["PutSku"],
            *bearer,
            auth=(("authorization", "Basic a2V5OnR1cm4="),),
        ),
        refused(
            "PutSku",
            "bearer-without-token",
            WELL_FORMED["PutSku"],
            *bearer,
            auth=(("authorization", "Bearer "),),
        ),
        refused(
            "FulfillOrder",
            "catalog-scope-token",
            WELL_FORMED["FulfillOrder"],
            Code.PERMISSION_DENIED,
            "INSUFFICIENT_SCOPE",
            auth="catalog",
            required_scope="fulfill",
        ),
        # PERMISSION_DENIED is decided before NOT_FOUND and before the request is checked.
        refused(
            "GetSku",
            "wrong-scope-before-not-found",
            cat.GetSkuRequest(sku_id="NO-SUCH-SKU"),
            Code.PERMISSION_DENIED,
            "INSUFFICIENT_SCOPE",
            auth="read",
            required_scope="catalog",
        ),
        refused(
            "GetOrder",
            "wrong-scope-before-not-found",
            ful.GetOrderRequest(source="test", order_id="no-such-order"),
            Code.PERMISSION_DENIED,
            "INSUFFICIENT_SCOPE",
            auth="fulfill",
            required_scope="read",
        ),
        refused(
            "ListEntitlements",
            "catalog-scope-token",
            WELL_FORMED["ListEntitlements"],
            Code.PERMISSION_DENIED,
            "INSUFFICIENT_SCOPE",
            auth="catalog",
            required_scope="read",
        ),
        refused(
            "ListEntitlements",
            "wrong-scope-before-invalid-argument",
            list_entitlements(page_size=-1, email="not-an-email"),
            Code.PERMISSION_DENIED,
            "INSUFFICIENT_SCOPE",
            auth="fulfill",
            required_scope="read",
        ),
        refused(
            "ListEntitlementEvents",
            "wrong-scope-before-not-found",
            ful.ListEntitlementEventsRequest(entitlement_id=UNKNOWN_ENTITLEMENT),
            Code.PERMISSION_DENIED,
            "INSUFFICIENT_SCOPE",
            auth="fulfill",
            required_scope="read",
        ),
        refused(
            "WatchEntitlementEvents",
            "wrong-scope-before-out-of-range",
            ful.WatchEntitlementEventsRequest(after_sequence=2**63 - 1),
            Code.PERMISSION_DENIED,
            "INSUFFICIENT_SCOPE",
            auth="fulfill",
            required_scope="read",
        ),
        refused(
            "WatchEntitlementEvents",
            "catalog-scope-token",
            WELL_FORMED["WatchEntitlementEvents"],
            Code.PERMISSION_DENIED,
            "INSUFFICIENT_SCOPE",
            auth="catalog",
            required_scope="read",
        ),
        refused(
            "FulfillOrder",
            "wrong-scope-before-invalid-argument",
            ful.FulfillOrderRequest(),
            Code.PERMISSION_DENIED,
            "INSUFFICIENT_SCOPE",
            auth="read",
            required_scope="fulfill",
        ),
        # LicensingService takes no bearer token: a garbage one changes nothing.
        invalid(
            "RenewLease",
            "garbage-bearer-token-is-ignored",
            lic.RenewLeaseRequest(),
            "lease_token",
            auth=(("authorization", "Bearer kt_garbage"),),
        ),
    ]


CASES = [*UNDECODABLE, *auth_cases()]

test_bad_input_is_refused_and_writes_nothing = refusal_test(CASES)
