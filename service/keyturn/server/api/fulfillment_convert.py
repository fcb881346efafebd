"""FulfillmentService messages to and from orders and entitlements."""

from __future__ import annotations

from keyturn.fulfillment.v1 import fulfillment_pb2 as pb
from keyturn.server.app.entitlements import filter_violations
from keyturn.server.app.event_views import EventView
from keyturn.server.app.fulfillment import FulfilledOrder
from keyturn.server.app.views import EntitlementView
from keyturn.server.domain.entitlement import Customer, Status
from keyturn.server.domain.errors import FieldViolation, raise_if_invalid
from keyturn.server.domain.events import EventType
from keyturn.server.domain.messages import MessageKind, MessageState, OutboundMessage
from keyturn.server.domain.named_users import NamedUser
from keyturn.server.domain.orders import OrderLine, OrderRequest
from keyturn.server.store.entitlement_repository import EntitlementFilter
from keyturn.server.store.order_repository import StoredOrder

from .catalog_convert import (
    DISPATCH_OUT,
    LICENSE_MODEL_OUT,
    OVERAGE_OUT,
    deactivation_limit_out,
    features_out,
)
from .timestamps import duration, timestamp

STATUS_IN = {
    pb.ENTITLEMENT_STATUS_TRIAL: Status.TRIAL,
    pb.ENTITLEMENT_STATUS_ACTIVE: Status.ACTIVE,
    pb.ENTITLEMENT_STATUS_EXPIRED: Status.EXPIRED,
    pb.ENTITLEMENT_STATUS_CANCELLED: Status.CANCELLED,
    pb.ENTITLEMENT_STATUS_SUSPENDED: Status.SUSPENDED,
}
EVENT_TYPE_OUT: dict[str, pb.EntitlementEventType.ValueType] = {
    EventType.CREATED: pb.ENTITLEMENT_EVENT_TYPE_CREATED,
    EventType.RENEWED: pb.ENTITLEMENT_EVENT_TYPE_RENEWED,
    EventType.SEATS_CHANGED: pb.ENTITLEMENT_EVENT_TYPE_SEATS_CHANGED,
    EventType.EDITION_CHANGED: pb.ENTITLEMENT_EVENT_TYPE_EDITION_CHANGED,
    EventType.FEATURES_CHANGED: pb.ENTITLEMENT_EVENT_TYPE_FEATURES_CHANGED,
    EventType.TRIAL_CONVERTED: pb.ENTITLEMENT_EVENT_TYPE_TRIAL_CONVERTED,
    EventType.CANCELLED: pb.ENTITLEMENT_EVENT_TYPE_CANCELLED,
    EventType.SEAT_ACTIVATED: pb.ENTITLEMENT_EVENT_TYPE_SEAT_ACTIVATED,
    EventType.SEAT_RELEASED: pb.ENTITLEMENT_EVENT_TYPE_SEAT_RELEASED,
    EventType.LEASE_LAPSED: pb.ENTITLEMENT_EVENT_TYPE_LEASE_LAPSED,
    EventType.SUSPENDED: pb.ENTITLEMENT_EVENT_TYPE_SUSPENDED,
    EventType.REINSTATED: pb.ENTITLEMENT_EVENT_TYPE_REINSTATED,
    EventType.SEAT_DEACTIVATED: pb.ENTITLEMENT_EVENT_TYPE_SEAT_DEACTIVATED,
    EventType.NAMED_USER_REMOVED: pb.ENTITLEMENT_EVENT_TYPE_NAMED_USER_REMOVED,
    EventType.NAMED_USER_CHANGED: pb.ENTITLEMENT_EVENT_TYPE_NAMED_USER_CHANGED,
}
STATUS_OUT = {
    Status.TRIAL: pb.ENTITLEMENT_STATUS_TRIAL,
    Status.ACTIVE: pb.ENTITLEMENT_STATUS_ACTIVE,
    Status.EXPIRED: pb.ENTITLEMENT_STATUS_EXPIRED,
    Status.CANCELLED: pb.ENTITLEMENT_STATUS_CANCELLED,
    Status.SUSPENDED: pb.ENTITLEMENT_STATUS_SUSPENDED,
}


def customer_in(message: pb.Customer) -> Customer:
    return Customer(message.customer_id, message.name, message.email)


def customer_out(customer: Customer) -> pb.Customer:
    return pb.Customer(customer_id=customer.customer_id, name=customer.name, email=customer.email)


def order_in(message: pb.FulfillOrderRequest) -> OrderRequest:
    return OrderRequest(
        source=message.source,
        order_id=message.order_id,
        customer=customer_in(message.customer),
        ship_to_email=message.ship_to_email,
        lines=tuple(
            OrderLine(
                sku_id=line.sku_id,
                quantity=line.quantity,
                entitlement_id=line.entitlement_id,
                external_reference=line.external_reference,
                named_user_emails=tuple(line.named_user_emails),
            )
            for line in message.lines
        ),
    )


MESSAGE_KIND_OUT = {
    MessageKind.LICENSE_KEY: pb.MESSAGE_KIND_LICENSE_KEY,
    MessageKind.INVITATION: pb.MESSAGE_KIND_INVITATION,
}
MESSAGE_STATE_OUT = {
    MessageState.QUEUED: pb.MESSAGE_STATE_QUEUED,
    MessageState.SENT: pb.MESSAGE_STATE_SENT,
    MessageState.FAILED: pb.MESSAGE_STATE_FAILED,
}


def message_out(message: OutboundMessage) -> pb.OutboundMessage:
    out = pb.OutboundMessage(
        message_id=message.message_id,
        kind=MESSAGE_KIND_OUT[message.kind],
        entitlement_id=message.entitlement_id,
        to=message.to_email,
        state=MESSAGE_STATE_OUT[message.state],
        attempts=message.attempts,
        last_error=message.last_error,
        create_time=timestamp(message.create_time),
    )
    if message.sent_time is not None:
        out.sent_time.CopyFrom(timestamp(message.sent_time))
    if message.next_attempt_time is not None and message.state is MessageState.QUEUED:
        out.next_attempt_time.CopyFrom(timestamp(message.next_attempt_time))
    return out


def order_out(stored: StoredOrder, messages: list[OutboundMessage]) -> pb.Order:
    request = stored.request
    return pb.Order(
        source=request.source,
        order_id=request.order_id,
        customer=customer_out(request.customer),
        ship_to_email=request.ship_to_email,
        lines=[
            pb.OrderLine(
                sku_id=line.sku_id,
                quantity=line.quantity,
                entitlement_id=line.entitlement_id,
                external_reference=line.external_reference,
                named_user_emails=list(line.named_user_emails),
            )
            for line in request.lines
        ],
        results=[
            pb.OrderLineResult(
                line_index=r.line_index,
                sku_id=r.sku_id,
                entitlement_id=r.entitlement_id,
                operations=list(r.operations),
            )
            for r in stored.results
        ],
        create_time=timestamp(stored.create_time),
        messages=[message_out(m) for m in messages],
    )


def named_user_out(user: NamedUser, invitation_code: str) -> pb.NamedUser:
    message = pb.NamedUser(user_id=user.user_id, email=user.email, invitation_code=invitation_code)
    if user.redeem_time is not None:
        message.redeem_time.CopyFrom(timestamp(user.redeem_time))
    return message


def entitlement_out(view: EntitlementView) -> pb.Entitlement:
    e = view.entitlement
    message = pb.Entitlement(
        entitlement_id=e.entitlement_id,
        product_id=e.product_id,
        edition_id=e.edition_id,
        customer=customer_out(e.customer),
        ship_to_email=e.ship_to_email,
        status=STATUS_OUT[view.status],
        seats=e.seats,
        seats_in_use=view.seats_in_use,
        features=features_out(e.features),
        start_time=timestamp(e.start_time),
        perpetual=e.perpetual,
        trial=e.trial,
        license_model=LICENSE_MODEL_OUT[e.license_model],
        lease_duration=duration(e.lease_duration),
        dispatch=DISPATCH_OUT[e.dispatch],
        external_references=list(e.external_references),
        license_key=view.license_key,
        create_time=timestamp(e.create_time),
        update_time=timestamp(e.update_time),
        seats_over=view.seats_over,
        grace_period=duration(e.grace),
        overage=OVERAGE_OUT[e.overage],
        seat_limit=e.seat_limit,
        named_users=[
            named_user_out(u, view.invitation_codes.get(u.user_id, "")) for u in view.named_users
        ],
        deactivation_limit=deactivation_limit_out(e.deactivation_limit),
    )
    if e.end_time is not None:
        message.end_time.CopyFrom(timestamp(e.end_time))
    return message


def entitlement_filter_in(message: pb.ListEntitlementsRequest) -> EntitlementFilter:
    """The filters, with every bad one reported at once (an unknown status among them)."""
    where = EntitlementFilter(
        customer_id=message.customer_id,
        email=message.email,
        product_id=message.product_id,
        status=STATUS_IN.get(message.status),
        external_reference=message.external_reference,
    )
    violations = filter_violations(where)
    if message.status != pb.ENTITLEMENT_STATUS_UNSPECIFIED and where.status is None:
        violations.append(FieldViolation("status", "unknown status"))
    raise_if_invalid(violations)
    return where


def event_out(view: EventView) -> pb.EntitlementEvent:
    event = view.event
    return pb.EntitlementEvent(
        sequence=event.sequence,
        entitlement_id=event.entitlement_id,
        type=EVENT_TYPE_OUT.get(event.type, pb.ENTITLEMENT_EVENT_TYPE_UNSPECIFIED),
        create_time=timestamp(event.create_time),
        order_source=event.order_source,
        order_id=event.order_id,
        activation_id=event.activation_id,
        entitlement=entitlement_out(view.entitlement),
        actor=event.actor,
    )


def fulfilled_out(result: FulfilledOrder) -> pb.FulfillOrderResponse:
    return pb.FulfillOrderResponse(
        order=order_out(result.order, result.messages),
        entitlements=[entitlement_out(view) for view in result.entitlements],
        replayed=result.replayed,
    )
