"""Request builders, and one well-formed request per RPC that the generated cases spoil.

Each fulfil() gets an order id of its own, so that a case wrongly accepted cannot
turn a later case into a replay or a conflict.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2
from google.protobuf.message import Message

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.server.domain.license_key import generate_invitation_code

from .cases import Request
from .world import UNKNOWN_SUBSCRIPTION, WORLD_FINGERPRINT, WORLD_ORDER_ID, World
from support.rpc import PRODUCT_ID

_order_ids = itertools.count(1)
UNKNOWN_USER = "usr_01arz3ndektsv4rrffq69g5fav"
WEBHOOK_URL = "https://crm.example/keyturn"


def new_product(
    editions: list[cat.Edition] | None = None,
    product_id: str = "new-product",
    display_name: str = "New product",
    etag: str = "",
) -> cat.PutProductRequest:
    if editions is None:
        editions = [edition()]
    return cat.PutProductRequest(
        product=cat.Product(
            product_id=product_id, display_name=display_name, editions=editions, etag=etag
        )
    )


def edition(edition_id: str = "standard", *features: cat.Feature) -> cat.Edition:
    return cat.Edition(edition_id=edition_id, display_name=edition_id, features=features)


def feature(name: str, limit: int | None = None) -> cat.Feature:
    return cat.Feature(name=name) if limit is None else cat.Feature(name=name, limit=limit)


def new_sku(
    *operations: cat.Operation,
    sku_id: str = "NEW-SKU",
    product_id: str = PRODUCT_ID,
    display_name: str = "New SKU",
    etag: str = "",
) -> cat.PutSkuRequest:
    return cat.PutSkuRequest(
        sku=cat.Sku(
            sku_id=sku_id,
            product_id=product_id,
            display_name=display_name,
            operations=operations,
            etag=etag,
        )
    )


def create(**fields: object) -> cat.Operation:
    values: dict[str, object] = {"edition_id": "standard", "seats_per_unit": 1, "term": "P1Y"}
    values.update(fields)
    return cat.Operation(create=cat.CreateOperation(**values))  # type: ignore[arg-type]


def duration(seconds: int, nanos: int = 0) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=seconds, nanos=nanos)


def renew(term: str = "P1Y") -> cat.Operation:
    return cat.Operation(renew=cat.RenewOperation(term=term))


def sku_of(create_op: cat.Operation) -> cat.PutSkuRequest:
    return new_sku(create_op)


def cat_op(path: str) -> str:
    """The path of a field of the first operation of a PutSku request."""
    return f"sku.operations[0].{path}"


def line(sku_id: str = "STD", quantity: int = 1, **fields: str) -> ful.OrderLine:
    return ful.OrderLine(sku_id=sku_id, quantity=quantity, **fields)


CUSTOMER = ful.Customer(customer_id="cust-1", name="Initech", email="it@initech.example")


def fulfil(
    lines: list[ful.OrderLine] | None = None,
    order_id: str | None = None,
    source: str = "test",
    customer: ful.Customer | None = CUSTOMER,
    ship_to_email: str = "",
) -> ful.FulfillOrderRequest:
    request = ful.FulfillOrderRequest(
        source=source,
        order_id=order_id if order_id is not None else f"bad-order-{next(_order_ids)}",
        ship_to_email=ship_to_email,
        lines=[line()] if lines is None else lines,
    )
    if customer is not None:
        request.customer.CopyFrom(customer)
    return request


def customer(**changes: str) -> ful.Customer:
    values = {"customer_id": "cust-1", "name": "Initech", "email": "it@initech.example"}
    values.update(changes)
    return ful.Customer(**values)


def list_entitlements(**fields: object) -> ful.ListEntitlementsRequest:
    return ful.ListEntitlementsRequest(**fields)  # type: ignore[arg-type]


def world_id(w: World) -> str:
    return w.entitlement_id


def perpetual_id(w: World) -> str:
    return w.perpetual_id


def cancelled_id(w: World) -> str:
    return w.cancelled_id


def other_product_id(w: World) -> str:
    return w.other_product_id


def events_of(
    target: Callable[[World], str], page_size: int = 0, token: str = ""
) -> Callable[[World], ful.ListEntitlementEventsRequest]:
    return lambda w: ful.ListEntitlementEventsRequest(
        entitlement_id=target(w), page_size=page_size, page_token=token
    )


def activate(
    license_key: str | None = None,
    product_id: str = PRODUCT_ID,
    fingerprint: str = WORLD_FINGERPRINT,
    label: str = "laptop",
) -> Callable[[World], lic.ActivateSeatRequest]:
    def build(w: World) -> lic.ActivateSeatRequest:
        return lic.ActivateSeatRequest(
            license_key=w.license_key if license_key is None else license_key,
            product_id=product_id,
            fingerprint=fingerprint,
            label=label,
        )

    return build


def check(
    license_key: str | None = None, product_id: str = PRODUCT_ID
) -> Callable[[World], lic.CheckLicenseRequest]:
    def build(w: World) -> lic.CheckLicenseRequest:
        key = w.license_key if license_key is None else license_key
        return lic.CheckLicenseRequest(license_key=key, product_id=product_id)

    return build


REPORT_START = datetime(2026, 1, 1, tzinfo=UTC)


def usage_report(
    entitlement_id: str,
    start: datetime = REPORT_START,
    days: float = 7,
    granularity: int = ful.USAGE_GRANULARITY_DAY,
) -> ful.GetUsageReportRequest:
    request = ful.GetUsageReportRequest(entitlement_id=entitlement_id, granularity=granularity)  # type: ignore[arg-type]
    request.start_time.FromDatetime(start)
    request.end_time.FromDatetime(start + timedelta(days=days))
    return request


# One request per RPC that the world answers with success (RedeemInvitation: the
# world holds no invitation, so a well-formed, unknown code). The generated cases
# spoil one field of it at a time; the auth cases send it with the wrong token.
WELL_FORMED: dict[str, Request] = {
    "PutProduct": new_product(),
    "ListProducts": cat.ListProductsRequest(),
    "PutSku": new_sku(create()),
    "GetSku": cat.GetSkuRequest(sku_id="STD"),
    "ListSkus": cat.ListSkusRequest(),
    "DeleteSku": cat.DeleteSkuRequest(sku_id="SPARE"),
    "FulfillOrder": lambda w: fulfil(),
    "GetOrder": ful.GetOrderRequest(source="test", order_id=WORLD_ORDER_ID),
    "GetEntitlement": lambda w: ful.GetEntitlementRequest(entitlement_id=w.entitlement_id),
    "ListEntitlements": ful.ListEntitlementsRequest(),
    "ListEntitlementEvents": events_of(world_id),
    "ResendCredentials": lambda w: ful.ResendCredentialsRequest(entitlement_id=w.entitlement_id),
    "WatchEntitlementEvents": ful.WatchEntitlementEventsRequest(after_sequence=0),
    "ActivateSeat": activate(),
    "CheckLicense": check(),
    "RenewLease": lambda w: lic.RenewLeaseRequest(lease_token=w.lease_token),
    "ReleaseSeat": lambda w: lic.ReleaseSeatRequest(lease_token=w.lease_token),
    "RedeemInvitation": lic.RedeemInvitationRequest(invitation_code=generate_invitation_code()),
    "GetSigningKeys": lic.GetSigningKeysRequest(),
    "GetUsageReport": lambda w: usage_report(w.entitlement_id),
    "SuspendEntitlement": lambda w: ful.SuspendEntitlementRequest(
        entitlement_id=w.entitlement_id, reason="payment_failed"
    ),
    "ReinstateEntitlement": lambda w: ful.ReinstateEntitlementRequest(
        entitlement_id=w.entitlement_id
    ),
    "ListAuditEvents": ful.ListAuditEventsRequest(
        actor="cli:tester", action="sku.put", entitlement_id="ent_x", resource="skus/"
    ),
    "ListActivations": lambda w: ful.ListActivationsRequest(entitlement_id=w.entitlement_id),
    "DeactivateSeat": lambda w: ful.DeactivateSeatRequest(
        entitlement_id=w.entitlement_id, activation_id=w.activation_id, reason="laptop stolen"
    ),
    # The world has no named user: a well-formed request for an unknown one, which
    # changes nothing whatever the case.
    "RemoveNamedUser": lambda w: ful.RemoveNamedUserRequest(
        entitlement_id=w.entitlement_id, user_id=UNKNOWN_USER
    ),
    "ChangeNamedUserEmail": lambda w: ful.ChangeNamedUserEmailRequest(
        entitlement_id=w.entitlement_id, user_id=UNKNOWN_USER, email="new@initech.example"
    ),
    "LookupCustomer": ful.LookupCustomerRequest(customer_id="cust-1"),
    # The world has no webhook subscription: well-formed requests name an unknown one
    # (NOT_FOUND, nothing written) except those that make or list them.
    "CreateWebhookSubscription": ful.CreateWebhookSubscriptionRequest(
        subscription=ful.WebhookSubscription(url=WEBHOOK_URL, product_ids=[PRODUCT_ID])
    ),
    "GetWebhookSubscription": ful.GetWebhookSubscriptionRequest(
        subscription_id=UNKNOWN_SUBSCRIPTION
    ),
    "ListWebhookSubscriptions": ful.ListWebhookSubscriptionsRequest(),
    "UpdateWebhookSubscription": ful.UpdateWebhookSubscriptionRequest(
        subscription=ful.WebhookSubscription(
            subscription_id=UNKNOWN_SUBSCRIPTION, url=WEBHOOK_URL, state=ful.WEBHOOK_STATE_PAUSED
        )
    ),
    "DeleteWebhookSubscription": ful.DeleteWebhookSubscriptionRequest(
        subscription_id=UNKNOWN_SUBSCRIPTION
    ),
    "ListWebhookDeliveries": ful.ListWebhookDeliveriesRequest(subscription_id=UNKNOWN_SUBSCRIPTION),
    "RedeliverWebhooks": ful.RedeliverWebhooksRequest(
        subscription_id=UNKNOWN_SUBSCRIPTION, webhook_id=f"{UNKNOWN_SUBSCRIPTION}.1"
    ),
}


def built(request: Request, w: World) -> Message:
    """The message a request stands for in world `w`."""
    message = request(w) if callable(request) else request
    assert isinstance(message, Message), "raw bytes have no fields to spoil"
    return message


# The world's shape: its fields with placeholder values, so that requests built from
# it can be walked field by field before the real world exists.
SHAPE = World(
    app=None,  # type: ignore[arg-type]
    channel=None,  # type: ignore[arg-type]
    http=None,  # type: ignore[arg-type]
    tokens=None,  # type: ignore[arg-type]
    entitlement_id="ent_shape",
    license_key="SHAPE-KEY",
    lease_token="shape.lease.token",
    activation_id="act_shape",
    perpetual_id="ent_shape_perpetual",
    cancelled_id="ent_shape_cancelled",
    other_product_id="ent_shape_other",
    far_id="ent_shape_far",
    far_end=datetime(2030, 1, 1, tzinfo=UTC),
    grace_id="ent_shape_grace",
    grace_end=datetime(2030, 1, 1, tzinfo=UTC),
    last_sequence=0,
    entitlements_page_token="shape-token",
    events_page_token="shape-token",
)
