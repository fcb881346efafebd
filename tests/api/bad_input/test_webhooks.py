"""The webhook calls: unknown subscriptions and webhook ids, URLs that are no http(s)
URL, secrets that are not Standard Webhooks secrets, unknown event types and states,
fields only Keyturn sets, sequences beyond the log. The generated cases (generated.py)
cover every string, enum and paging field and the required ones. Nothing of a refused
call may be written."""

from __future__ import annotations

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

from .builders import WEBHOOK_URL
from .cases import Code, invalid, refused
from .generated import generated_cases
from .running import refusal_test
from .world import UNKNOWN_SUBSCRIPTION, World


def create(secret: str = "", **fields: object) -> ful.CreateWebhookSubscriptionRequest:
    values: dict[str, object] = {"url": WEBHOOK_URL}
    values.update(fields)
    return ful.CreateWebhookSubscriptionRequest(
        subscription=ful.WebhookSubscription(**values),  # type: ignore[arg-type]
        secret=secret,
    )


def after(sequence: int) -> ful.CreateWebhookSubscriptionRequest:
    request = create()
    request.after_sequence = sequence
    return request


def beyond_the_log(w: World) -> ful.CreateWebhookSubscriptionRequest:
    return after(w.last_sequence + 1)


def update(**fields: object) -> ful.UpdateWebhookSubscriptionRequest:
    values: dict[str, object] = {
        "subscription_id": UNKNOWN_SUBSCRIPTION,
        "url": WEBHOOK_URL,
        "state": ful.WEBHOOK_STATE_ACTIVE,
    }
    values.update(fields)
    return ful.UpdateWebhookSubscriptionRequest(
        subscription=ful.WebhookSubscription(**values)  # type: ignore[arg-type]
    )


def redeliver(**target: object) -> ful.RedeliverWebhooksRequest:
    return ful.RedeliverWebhooksRequest(subscription_id=UNKNOWN_SUBSCRIPTION, **target)  # type: ignore[arg-type]


NOT_FOUND = (Code.NOT_FOUND, "WEBHOOK_SUBSCRIPTION_NOT_FOUND")
URLS = {
    "ftp-url": "ftp://crm.example/x",
    "no-host": "https:///path",
    "not-a-url": "crm.example/keyturn",
    "bad-port": "https://crm.example:99999999/x",
    "user-and-password": "https://user:pw@crm.example/x",
    "2001-chars": "https://crm.example/" + "a" * 1981,
    "a-newline": "https://crm.example/\nx",
}
SECRETS = {
    "no-prefix": "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "not-base64": "whsec_!!!!",
    "too-short": "whsec_c2hvcnQ=",
    "too-long": "whsec_" + "QUFB" * 30,
}

CASES = [
    *generated_cases(
        "CreateWebhookSubscription",
        "GetWebhookSubscription",
        "ListWebhookSubscriptions",
        "UpdateWebhookSubscription",
        "DeleteWebhookSubscription",
        "ListWebhookDeliveries",
        "RedeliverWebhooks",
    ),
    *(
        invalid("CreateWebhookSubscription", f"url-{name}", create(url=url), "subscription.url")
        for name, url in URLS.items()
    ),
    *(
        invalid("CreateWebhookSubscription", f"secret-{name}", create(secret), "secret")
        for name, secret in SECRETS.items()
    ),
    invalid(
        "CreateWebhookSubscription",
        "event-type-unspecified",
        create(event_types=[ful.ENTITLEMENT_EVENT_TYPE_UNSPECIFIED]),
        "subscription.event_types[0]",
    ),
    invalid(
        "CreateWebhookSubscription",
        "event-type-99",
        create(event_types=[ful.ENTITLEMENT_EVENT_TYPE_CREATED, 99]),
        "subscription.event_types[1]",
    ),
    invalid(
        "CreateWebhookSubscription",
        "product-id-not-a-slug",
        create(product_ids=["Acme CAD"]),
        "subscription.product_ids[0]",
    ),
    invalid(
        "CreateWebhookSubscription",
        "description-201-chars",
        create(description="d" * 201),
        "subscription.description",
    ),
    invalid(
        "CreateWebhookSubscription",
        "subscription-id-given",
        create(subscription_id=UNKNOWN_SUBSCRIPTION),
        "subscription.subscription_id",
    ),
    invalid(
        "CreateWebhookSubscription",
        "pause-reason-given",
        create(pause_reason="mine"),
        "subscription.pause_reason",
    ),
    invalid("CreateWebhookSubscription", "after-sequence-negative", after(-1), "after_sequence"),
    refused(
        "CreateWebhookSubscription",
        "after-sequence-beyond-the-log",
        beyond_the_log,
        Code.OUT_OF_RANGE,
        "SEQUENCE_OUT_OF_RANGE",
        last_sequence=lambda w: str(w.last_sequence),
    ),
    invalid(
        "CreateWebhookSubscription",
        "several-problems-at-once",
        create("whsec_x", url="ftp://x", description="d" * 201),
        "subscription.url",
        "subscription.description",
        "secret",
    ),
    refused(
        "GetWebhookSubscription",
        "unknown-subscription",
        ful.GetWebhookSubscriptionRequest(subscription_id=UNKNOWN_SUBSCRIPTION),
        *NOT_FOUND,
        subscription_id=UNKNOWN_SUBSCRIPTION,
    ),
    refused(
        "UpdateWebhookSubscription",
        "unknown-subscription",
        update(),
        *NOT_FOUND,
        subscription_id=UNKNOWN_SUBSCRIPTION,
    ),
    invalid(
        "UpdateWebhookSubscription",
        "state-unspecified",
        update(state=ful.WEBHOOK_STATE_UNSPECIFIED),
        "subscription.state",
    ),
    invalid("UpdateWebhookSubscription", "url-ftp", update(url="ftp://x/"), "subscription.url"),
    refused(
        "DeleteWebhookSubscription",
        "unknown-subscription",
        ful.DeleteWebhookSubscriptionRequest(subscription_id=UNKNOWN_SUBSCRIPTION),
        *NOT_FOUND,
        subscription_id=UNKNOWN_SUBSCRIPTION,
    ),
    refused(
        "ListWebhookDeliveries",
        "unknown-subscription",
        ful.ListWebhookDeliveriesRequest(subscription_id=UNKNOWN_SUBSCRIPTION),
        *NOT_FOUND,
        subscription_id=UNKNOWN_SUBSCRIPTION,
    ),
    refused(
        "RedeliverWebhooks",
        "unknown-subscription",
        redeliver(webhook_id=f"{UNKNOWN_SUBSCRIPTION}.1"),
        *NOT_FOUND,
        subscription_id=UNKNOWN_SUBSCRIPTION,
    ),
    refused(
        "RedeliverWebhooks",
        "from-sequence-of-an-unknown-subscription",
        redeliver(from_sequence=1),
        *NOT_FOUND,
        subscription_id=UNKNOWN_SUBSCRIPTION,
    ),
    invalid("RedeliverWebhooks", "no-target", redeliver(), "webhook_id"),
    invalid("RedeliverWebhooks", "from-sequence-0", redeliver(from_sequence=0), "from_sequence"),
    invalid(
        "RedeliverWebhooks", "webhook-id-101-chars", redeliver(webhook_id="w" * 101), "webhook_id"
    ),
]

test_bad_input_is_refused_and_writes_nothing = refusal_test(CASES)
