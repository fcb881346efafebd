"""The Stripe webhook endpoint over real HTTP on loopback, fulfilling through a real
server: every mapped event end to end, replays, refused signatures, refused orders,
an unreachable Keyturn, and `keyturn connect stripe` as a child process.

The FulfillmentClient and urllib are blocking: they run in worker threads (the
webhook's own request threads, asyncio.to_thread), as the server under test runs on
the event loop.
"""

from __future__ import annotations

import asyncio
import http.client
import time
from datetime import timedelta
from pathlib import Path

import pytest
from connector_harness import (
    PERPETUAL,
    PRO,
    SECRET,
    STANDARD,
    WEBHOOK_LINE,
    Answer,
    Json,
    checkout_session,
    child,
    database_state,
    deliver,
    event,
    invoice,
    invoice_line,
    payload_of,
    run_keyturn_async,
    sign,
    stripe_id,
    subscription,
    subscription_item,
)

from keyturn.client import FulfillmentClient, NotFoundError, RetryPolicy
from keyturn.client.connectors.lifecycle import (
    ADD_SEATS,
    CANCEL,
    REMOVE_SEATS,
    RENEW,
    SWITCH,
    lifecycle_sku,
)
from keyturn.client.connectors.stripe_webhook import StripeWebhookServer
from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.context import AppContext

from conftest import Tokens
from support.rpc import PRODUCT_ID, create_sku
from support.smtp import free_port

pytest_plugins = ["connector_fixtures"]

run = asyncio.to_thread
E = ful.EntitlementEventType


def subscription_paid(sub: str, key: str, quantity: int, invoice_id: str | None = None) -> Json:
    """invoice.paid of a new subscription's first invoice."""
    lines = [invoice_line(key, quantity, sub)]
    return event("invoice.paid", invoice("subscription_create", sub, lines, invoice_id=invoice_id))


def quantity_or_price_changed(sub: str, before: tuple[str, int], after: tuple[str, int]) -> Json:
    return event(
        "customer.subscription.updated",
        subscription(sub, [subscription_item(after[0], after[1], "si_Main")]),
        previous={
            "items": {
                "object": "list",
                "data": [subscription_item(before[0], before[1], "si_Main")],
            }
        },
    )


async def by_reference(read: FulfillmentClient, sub: str) -> list[ful.Entitlement]:
    return await run(lambda: list(read.list_entitlements(external_reference=f"stripe:{sub}")))


async def the_entitlement(read: FulfillmentClient, sub: str) -> ful.Entitlement:
    found = await by_reference(read, sub)
    assert len(found) == 1, found
    return found[0]


def fulfilled(answer: Answer, order_id: str, replayed: bool = False) -> list[str]:
    """The entitlement ids of a 200 answer that fulfilled (or replayed) `order_id`."""
    assert answer.status == 200, answer
    assert answer.body["order_id"] == order_id, answer
    assert answer.body["replayed"] is replayed, answer
    entitlements: list[str] = answer.body["entitlements"]
    return entitlements


EDITION_OF = {STANDARD: "standard", PRO: "pro"}


@pytest.mark.parametrize(("first", "then"), [(STANDARD, PRO), (PRO, STANDARD)])
async def test_a_subscription_lifecycle_end_to_end_with_the_shipped_catalog(
    webhook: str, read_client: FulfillmentClient, stripe_catalog: object, first: str, then: str
) -> None:
    """Create, renew, seats up and down, switch, cancel: every SKU each event names is in
    examples/catalog.yaml (both directions use all ten lifecycle SKUs)."""
    sub = stripe_id("sub")
    read = read_client

    # Created: the first invoice paid, 5 seats, named stripe:sub_...
    created = subscription_paid(sub, first, 5, invoice_id="in_1QLifecycleFirst")
    answer = await deliver(webhook, created)
    assert answer.body["event"] == created["id"]
    [entitlement_id] = fulfilled(answer, "in_1QLifecycleFirst")
    entitlement = await the_entitlement(read, sub)
    assert entitlement.entitlement_id == entitlement_id
    assert (entitlement.product_id, entitlement.edition_id, entitlement.seats) == (
        PRODUCT_ID,
        EDITION_OF[first],
        5,
    )
    assert entitlement.status == ful.ENTITLEMENT_STATUS_ACTIVE
    assert list(entitlement.external_references) == [f"stripe:{sub}"]
    assert entitlement.customer == ful.Customer(
        customer_id="cus_Initech", name="Initech", email="billing@initech.example"
    )
    order = await run(read.get_order, "stripe", "in_1QLifecycleFirst")
    assert [(line.sku_id, line.quantity) for line in order.lines] == [(first, 5)]
    assert [list(r.operations) for r in order.results] == [["create"]]

    # Renewed: the cycle invoice extends the end date by the renewal term (P1Y).
    first_end = entitlement.end_time.ToDatetime()
    renewal = event(
        "invoice.paid",
        invoice("subscription_cycle", sub, [invoice_line(first, 5, sub)], new_shape=True),
    )
    fulfilled(await deliver(webhook, renewal), renewal["data"]["object"]["id"])
    entitlement = await run(read.get_entitlement, entitlement_id)
    assert entitlement.end_time.ToDatetime() - first_end in (
        timedelta(days=365),
        timedelta(days=366),
    )
    assert entitlement.seats == 5

    # Quantity up, then down: seats follow the subscription's quantity.
    for before, after in ((5, 8), (8, 6)):
        changed = quantity_or_price_changed(sub, (first, before), (first, after))
        assert fulfilled(await deliver(webhook, changed), changed["id"]) == [entitlement_id]
        entitlement = await run(read.get_entitlement, entitlement_id)
        assert entitlement.seats == after

    # Another price: the edition of the new price's lookup key.
    switched = quantity_or_price_changed(sub, (first, 6), (then, 6))
    fulfilled(await deliver(webhook, switched), switched["id"])
    entitlement = await run(read.get_entitlement, entitlement_id)
    assert (entitlement.edition_id, entitlement.seats) == (EDITION_OF[then], 6)

    # Deleted: cancelled.
    deleted = event(
        "customer.subscription.deleted",
        subscription(sub, [subscription_item(then, 6, "si_Main")], status="canceled"),
    )
    fulfilled(await deliver(webhook, deleted), deleted["id"])
    entitlement = await run(read.get_entitlement, entitlement_id)
    assert entitlement.status == ful.ENTITLEMENT_STATUS_CANCELLED

    history = await run(lambda: list(read.list_entitlement_events(entitlement_id)))
    assert [(e.type, e.order_source, e.order_id) for e in history] == [
        (E.ENTITLEMENT_EVENT_TYPE_CREATED, "stripe", "in_1QLifecycleFirst"),
        (E.ENTITLEMENT_EVENT_TYPE_RENEWED, "stripe", renewal["data"]["object"]["id"]),
        (E.ENTITLEMENT_EVENT_TYPE_SEATS_CHANGED, "stripe", history[2].order_id),
        (E.ENTITLEMENT_EVENT_TYPE_SEATS_CHANGED, "stripe", history[3].order_id),
        (E.ENTITLEMENT_EVENT_TYPE_EDITION_CHANGED, "stripe", switched["id"]),
        (E.ENTITLEMENT_EVENT_TYPE_CANCELLED, "stripe", deleted["id"]),
    ]
    assert history[2].order_id != history[3].order_id
    # Each event ordered its lifecycle SKU of the shipped catalog.
    ordered = [(await run(read.get_order, "stripe", e.order_id)).lines for e in history]
    assert [[line.sku_id for line in lines] for lines in ordered] == [
        [first],
        [lifecycle_sku(first, RENEW)],
        [lifecycle_sku(first, ADD_SEATS)],
        [lifecycle_sku(first, REMOVE_SEATS)],
        [lifecycle_sku(then, SWITCH)],
        [lifecycle_sku(then, CANCEL)],
    ]


async def test_a_one_off_checkout_is_fulfilled_once_paid(
    webhook: str, read_client: FulfillmentClient, app: AppContext, stripe_catalog: object
) -> None:
    metadata = {"keyturn_sku": PERPETUAL, "keyturn_quantity": "2"}
    session = checkout_session("payment", metadata, payment_status="unpaid", customer="cus_Globex")
    before = await database_state(app.store)
    pending = await deliver(webhook, event("checkout.session.completed", session))
    assert pending.status == 200, pending
    assert "async_payment_succeeded" in pending.body["ignored"]
    assert await database_state(app.store) == before

    paid = event("checkout.session.async_payment_succeeded", {**session, "payment_status": "paid"})
    [entitlement_id] = fulfilled(await deliver(webhook, paid), paid["id"])
    entitlement = await run(read_client.get_entitlement, entitlement_id)
    assert (entitlement.seats, entitlement.perpetual, entitlement.customer.customer_id) == (
        2,
        True,
        "cus_Globex",
    )
    assert entitlement.customer.email == "buyer@globex.example"
    assert list(entitlement.external_references) == []


async def test_a_replayed_event_changes_nothing(
    webhook: str, read_client: FulfillmentClient, app: AppContext, stripe_catalog: object
) -> None:
    sub = stripe_id("sub")
    created = payload_of(subscription_paid(sub, STANDARD, 3))
    changed = payload_of(quantity_or_price_changed(sub, (STANDARD, 3), (STANDARD, 4)))
    now = int(time.time())
    answers = [await deliver(webhook, body, timestamp=now - 30) for body in (created, changed)]
    assert [a.status for a in answers] == [200, 200], answers
    assert answers[0].body["replayed"] is answers[1].body["replayed"] is False
    state = await database_state(app.store)

    for body, first in zip((created, changed), answers, strict=True):
        # Stripe's retry: the same body, signed again at a later time.
        assert sign(body, timestamp=now) != sign(body, timestamp=now - 30)
        again = await deliver(webhook, body, timestamp=now)
        assert again.status == 200, again
        assert again.body == {**first.body, "replayed": True}
    assert await database_state(app.store) == state
    assert (await the_entitlement(read_client, sub)).seats == 4


@pytest.mark.parametrize(
    "tamper",
    ["wrong-secret", "body-changed", "no-header", "garbage-header", "other-scheme", "stale"],
)
async def test_a_bad_or_stale_signature_is_400_and_fulfils_nothing(
    tamper: str,
    webhook: str,
    read_client: FulfillmentClient,
    app: AppContext,
    stripe_catalog: object,
) -> None:
    sub = stripe_id("sub")
    stripe_event = subscription_paid(sub, STANDARD, 2)
    body = payload_of(stripe_event)
    signature = {
        "wrong-secret": sign(body, secret="whsec_test_someone_elses_secret"),
        "body-changed": sign(body.replace('"quantity": 2', '"quantity": 200')),
        "no-header": "",
        "garbage-header": "not a stripe signature",
        "other-scheme": sign(body).replace("v1=", "v0="),
        "stale": sign(body, timestamp=int(time.time()) - 301),
    }[tamper]
    before = await database_state(app.store)

    answer = await deliver(webhook, body, signature=signature)

    assert answer.status == 400, answer
    assert answer.body["error"].startswith("signature check failed")
    assert "order_id" not in answer.body
    assert await database_state(app.store) == before
    assert await by_reference(read_client, sub) == []
    with pytest.raises(NotFoundError):
        await run(read_client.get_order, "stripe", stripe_event["data"]["object"]["id"])


async def test_a_signature_within_the_tolerance_is_accepted(
    webhook: str, read_client: FulfillmentClient, stripe_catalog: object
) -> None:
    sub = stripe_id("sub")
    answer = await deliver(
        webhook, subscription_paid(sub, STANDARD, 2), timestamp=int(time.time()) - 240
    )
    assert answer.status == 200, answer
    assert (await the_entitlement(read_client, sub)).seats == 2


async def test_ignored_events_and_other_paths_change_nothing(
    webhook: str, app: AppContext, stripe_catalog: object
) -> None:
    sub = stripe_id("sub")
    before = await database_state(app.store)
    ignored = [
        event("customer.created", {"id": "cus_New", "object": "customer"}),
        event("invoice.paid", invoice("subscription_update", sub, [invoice_line(PRO, 1, sub)])),
        event("checkout.session.completed", checkout_session("subscription", {})),
    ]
    for stripe_event in ignored:
        answer = await deliver(webhook, stripe_event)
        assert answer.status == 200, answer
        assert answer.body["event"] == stripe_event["id"]
        assert answer.body["ignored"]
        assert "order_id" not in answer.body
    elsewhere = await deliver(webhook.replace("/stripe/webhook", "/other"), ignored[0])
    assert elsewhere.status == 404
    assert await database_state(app.store) == before


async def test_a_signed_payload_that_is_no_event_or_a_bad_length_is_400(
    webhook: str, app: AppContext
) -> None:
    before = await database_state(app.store)
    for body in ("[1, 2, 3]", '"text"', "null"):
        answer = await deliver(webhook, body)
        assert answer.status == 400, (body, answer)
        assert answer.body == {"error": "the payload is not a JSON object"}
    host, _, rest = webhook.removeprefix("http://").partition("/")

    def post_with_bad_length() -> int:
        connection = http.client.HTTPConnection(host, timeout=30)
        try:
            connection.putrequest("POST", "/" + rest)
            connection.putheader("Content-Length", "12abc")
            connection.endheaders()
            return connection.getresponse().status
        finally:
            connection.close()

    assert await asyncio.to_thread(post_with_bad_length) == 400
    assert await database_state(app.store) == before


async def test_a_refused_order_is_422_until_the_catalog_is_fixed(
    webhook: str,
    read_client: FulfillmentClient,
    app: AppContext,
    stripe_catalog: object,
    catalog_stub: catalog_pb2_grpc.CatalogServiceStub,
    tokens: Tokens,
) -> None:
    sub = stripe_id("sub")
    stripe_event = subscription_paid(sub, "acme-cad-enterprise", 4)
    invoice_id = stripe_event["data"]["object"]["id"]
    body = payload_of(stripe_event)
    before = await database_state(app.store)

    for _ in range(2):  # Stripe retries: refused again, nothing half-done
        refused = await deliver(webhook, body)
        assert refused.status == 422, refused
        assert refused.body["reason"] == "SKU_NOT_FOUND"
        assert (refused.body["event"], refused.body["order_id"]) == (stripe_event["id"], invoice_id)
        assert "acme-cad-enterprise" in refused.body["error"]
        with pytest.raises(NotFoundError) as missing:
            await run(read_client.get_order, "stripe", invoice_id)
        assert missing.value.reason == "ORDER_NOT_FOUND"
        assert await database_state(app.store) == before

    await catalog_stub.PutSku(
        cat.PutSkuRequest(sku=create_sku("acme-cad-enterprise", seats=10)),
        metadata=tokens("catalog"),
    )
    [entitlement_id] = fulfilled(await deliver(webhook, body), invoice_id)
    entitlement = await the_entitlement(read_client, sub)
    assert (entitlement.entitlement_id, entitlement.seats) == (entitlement_id, 40)


async def test_changes_to_an_unknown_subscription_and_unusable_events_are_422(
    webhook: str, app: AppContext, stripe_catalog: object
) -> None:
    before = await database_state(app.store)
    unknown = quantity_or_price_changed(stripe_id("sub"), (STANDARD, 1), (STANDARD, 2))
    refused = await deliver(webhook, unknown)
    assert (refused.status, refused.body["reason"]) == (422, "ENTITLEMENT_NOT_FOUND"), refused

    no_key = subscription_paid(stripe_id("sub"), STANDARD, 1)
    no_key["data"]["object"]["lines"]["data"][0]["price"]["lookup_key"] = None
    unusable = await deliver(webhook, no_key)
    assert unusable.status == 422, unusable
    assert "lookup_key" in unusable.body["error"]
    assert await database_state(app.store) == before


async def test_an_unreachable_keyturn_is_503() -> None:
    retry = RetryPolicy(attempts=2, initial=0.01, maximum=0.02)
    with FulfillmentClient(f"127.0.0.1:{free_port()}", "kt_unused", retry=retry) as client:
        webhook = StripeWebhookServer(("127.0.0.1", 0), SECRET, client.fulfill_order, "/hook")
        webhook.start()
        try:
            host, port = webhook.address
            stripe_event = subscription_paid(stripe_id("sub"), STANDARD, 1)
            answer = await deliver(f"http://{host}:{port}/hook", stripe_event)
        finally:
            await run(webhook.stop)
    assert answer.status == 503, answer
    assert answer.body["order_id"] == stripe_event["data"]["object"]["id"]
    assert answer.body["error"]


# The child only talks gRPC: one backend suffices (the in-process tests cover both).
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_keyturn_connect_stripe_as_a_child_process(
    server: KeyturnServer,
    connector_secrets: dict[str, str],
    read_client: FulfillmentClient,
    stripe_catalog: object,
    tmp_path: Path,
) -> None:
    settings = {
        "KEYTURN_STRIPE_WEBHOOK_SECRET": SECRET,
        "KEYTURN_FULFILL_TOKEN": connector_secrets["fulfill"],
        "KEYTURN_LISTEN": server.address,  # no --target: the server's own setting names it
    }
    args = ["connect", "stripe", "--listen", "127.0.0.1:0", "--path", "/hooks/stripe"]
    with child(args, tmp_path, settings) as connector:
        line = await run(connector.await_line, WEBHOOK_LINE)
        url = line["url"]
        assert url == f"http://127.0.0.1:{line['port']}/hooks/stripe"
        sub = stripe_id("sub")
        stripe_event = subscription_paid(sub, STANDARD, 3)
        [entitlement_id] = fulfilled(
            await deliver(url, stripe_event), stripe_event["data"]["object"]["id"]
        )
        forged = await deliver(url, stripe_event, secret="whsec_test_forged")
        assert forged.status == 400, forged
        assert await run(connector.terminate) == 0
    entitlement = await the_entitlement(read_client, sub)
    assert (entitlement.entitlement_id, entitlement.seats) == (entitlement_id, 3)


WEBHOOK_SECRET = (
    "KEYTURN_STRIPE_WEBHOOK_SECRET (the signing secret of the Stripe webhook endpoint, whsec_...)"
)
FULFILL_TOKEN = (
    "KEYTURN_FULFILL_TOKEN (a token with the fulfill scope: keyturn tokens create --scope fulfill)"
)


@pytest.mark.parametrize(
    ("settings", "line"),
    [
        ({"KEYTURN_STRIPE_WEBHOOK_SECRET": SECRET}, f"keyturn: set {FULFILL_TOKEN}"),
        ({"KEYTURN_FULFILL_TOKEN": "kt_x"}, f"keyturn: set {WEBHOOK_SECRET}"),
        (  # set but empty is unset
            {"KEYTURN_FULFILL_TOKEN": "", "KEYTURN_STRIPE_WEBHOOK_SECRET": ""},
            f"keyturn: set {WEBHOOK_SECRET} and {FULFILL_TOKEN}",
        ),
    ],
)
async def test_keyturn_connect_stripe_names_each_missing_secret(
    tmp_path: Path, settings: dict[str, str], line: str
) -> None:
    args = ["connect", "stripe", "--listen", "127.0.0.1:0"]
    result = await run_keyturn_async(args, tmp_path, settings)
    assert (result.returncode, result.stderr.splitlines(), result.stdout) == (2, [line], "")
