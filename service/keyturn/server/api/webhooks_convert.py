"""Webhook messages to and from subscriptions and delivery attempts."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from keyturn.fulfillment.v1 import fulfillment_pb2 as pb
from keyturn.server.app.event_views import EventView
from keyturn.server.domain.errors import FieldViolation, raise_if_invalid
from keyturn.server.domain.webhooks import Delivery, Subscription, SubscriptionSpec, WebhookState

from .fulfillment_convert import EVENT_TYPE_OUT, event_out
from .timestamps import timestamp

EVENT_TYPE_IN = {number: kind for kind, number in EVENT_TYPE_OUT.items()}
STATE_IN = {
    pb.WEBHOOK_STATE_ACTIVE: WebhookState.ACTIVE,
    pb.WEBHOOK_STATE_PAUSED: WebhookState.PAUSED,
}
STATE_OUT = {state: number for number, state in STATE_IN.items()}


def spec_in(message: pb.WebhookSubscription) -> SubscriptionSpec:
    """The caller's part of a subscription; an unknown event type stays unknown, for the
    use case to refuse with the others."""
    return SubscriptionSpec(
        url=message.url,
        event_types=tuple(EVENT_TYPE_IN.get(v, f"unknown ({v})") for v in message.event_types),
        product_ids=tuple(message.product_ids),
        description=message.description,
    )


def state_in(value: int, *, default: WebhookState | None = None) -> WebhookState | None:
    """The state asked for; `default` when unset; None when unknown (refused by the use
    case)."""
    if value == pb.WEBHOOK_STATE_UNSPECIFIED:
        return default
    return STATE_IN.get(value)  # type: ignore[call-overload, no-any-return]


def check_output_only(message: pb.WebhookSubscription, *, creating: bool) -> None:
    """Fields Keyturn sets may not be sent (a caller that sends them expects an effect)."""
    found = [FieldViolation("subscription.pause_reason", "is set by Keyturn")] * bool(
        message.pause_reason
    )
    if creating and message.subscription_id:
        found.insert(0, FieldViolation("subscription.subscription_id", "is set by Keyturn"))
    raise_if_invalid(found)


def subscription_out(subscription: Subscription) -> pb.WebhookSubscription:
    spec = subscription.spec
    message = pb.WebhookSubscription(
        subscription_id=subscription.subscription_id,
        url=spec.url,
        event_types=sorted(EVENT_TYPE_OUT[t] for t in spec.event_types),
        product_ids=sorted(spec.product_ids),
        description=spec.description,
        state=STATE_OUT[subscription.state],
        pause_reason=subscription.pause_reason,
        cursor=subscription.cursor,
        attempts=subscription.attempts,
        create_time=timestamp(subscription.create_time),
        update_time=timestamp(subscription.update_time),
    )
    if subscription.next_attempt_time is not None:
        message.next_attempt_time.CopyFrom(timestamp(subscription.next_attempt_time))
    if subscription.failing_since is not None:
        message.failing_since.CopyFrom(timestamp(subscription.failing_since))
    return message


def delivery_out(delivery: Delivery) -> pb.WebhookDelivery:
    return pb.WebhookDelivery(
        webhook_id=delivery.webhook_id,
        sequence=delivery.sequence,
        attempt_time=timestamp(delivery.attempt_time),
        http_status=delivery.http_status,
        delivered=delivery.delivered,
        response_excerpt=delivery.response_excerpt,
        redelivery=delivery.redelivery,
    )


def event_json(view: EventView) -> dict[str, Any]:
    """An event as JSON, exactly as WatchEntitlementEvents gives it over HTTP/JSON."""
    return json_format.MessageToDict(event_out(view))
