"""Outbound webhooks through a real server and a real receiver on loopback: signed,
in order, filtered, retried with backoff, logged, paused after failing, resumed,
redelivered, deleted. The sender's backoff and pause are set short in settings rather
than waited out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import json_format

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.api.fulfillment_convert import event_out
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.context import AppContext
from keyturn.server.app.event_views import event_views
from keyturn.server.app.tokens import create_token
from keyturn.server.app.webhook_notice import PauseNotice
from keyturn.server.app.webhook_sender import SenderSettings, WebhookSender
from keyturn.server.dispatch.smtp import SmtpSender, SmtpSettings
from keyturn.server.domain.webhooks import (
    RetryPolicy,
    Subscription,
    SubscriptionSpec,
    WebhookState,
    after_failure,
)

from conftest import Tokens
from support.catalog import put_catalog
from support.rpc import PRODUCT_ID, create_sku, failure_of, order
from support.smtp import SmtpServer
from support.webhook_receiver import Received, Receiver, verified

INITIAL = timedelta(milliseconds=200)
OPERATOR = "ops@vendor.example"


LOG_ATTEMPTS = 4


def short_retries(pause_after: timedelta = timedelta(hours=1)) -> SenderSettings:
    return SenderSettings(
        poll_seconds=0.05,
        log_attempts=LOG_ATTEMPTS,
        retry=RetryPolicy(initial=INITIAL, maximum=timedelta(seconds=1), pause_after=pause_after),
    )


@pytest.fixture
def pause_after() -> timedelta:
    return timedelta(hours=1)


@pytest.fixture
async def server(
    app: AppContext, pause_after: timedelta, smtp: SmtpServer
) -> AsyncIterator[KeyturnServer]:
    assert app.webhooks is not None
    mail = SmtpSender(SmtpSettings(host="127.0.0.1", port=smtp.port, security="none"))
    notice = PauseNotice(mail, "Keyturn <keyturn@vendor.example>", OPERATOR)
    sender = WebhookSender(app, app.webhooks, short_retries(pause_after), notice)
    running = KeyturnServer(app, "127.0.0.1:0", webhooks=sender)
    await running.start()
    yield running
    await running.stop(grace=1.0)


@pytest.fixture
async def webhook_auth(app: AppContext) -> tuple[tuple[str, str], ...]:
    _, secret = await create_token(app, {"webhooks"}, "test webhooks", lifetime=None)
    return (("authorization", f"Bearer {secret}"),)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver()
    started.start()
    yield started
    started.stop()


class World:
    def __init__(
        self,
        app: AppContext,
        channel: grpc.aio.Channel,
        tokens: Tokens,
        auth: tuple[tuple[str, str], ...],
    ) -> None:
        self.app = app
        self.catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
        self.fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub(channel)
        self.licensing = licensing_pb2_grpc.LicensingServiceStub(channel)
        self.tokens = tokens
        self.auth = auth
        self.orders = 0

    async def subscribe(self, url: str, **fields: object) -> tuple[ful.WebhookSubscription, str]:
        after = fields.pop("after_sequence", None)
        request = ful.CreateWebhookSubscriptionRequest(
            subscription=ful.WebhookSubscription(url=url, **fields)  # type: ignore[arg-type]
        )
        if after is not None:
            request.after_sequence = after  # type: ignore[assignment]
        created = await self.fulfillment.CreateWebhookSubscription(request, metadata=self.auth)
        return created.subscription, created.secret

    async def fulfil(self, sku_id: str = "STD") -> ful.Entitlement:
        self.orders += 1
        answer = await self.fulfillment.FulfillOrder(
            order(f"o-{self.orders}", sku_id), metadata=self.tokens("fulfill")
        )
        return answer.entitlements[0]

    async def activate(self, key: str, device: str, product_id: str = PRODUCT_ID) -> None:
        await self.licensing.ActivateSeat(
            lic.ActivateSeatRequest(license_key=key, product_id=product_id, fingerprint=device)
        )

    async def get(self, subscription_id: str) -> ful.WebhookSubscription:
        found = await self.fulfillment.GetWebhookSubscription(
            ful.GetWebhookSubscriptionRequest(subscription_id=subscription_id), metadata=self.auth
        )
        return found.subscription

    async def deliveries(self, subscription_id: str) -> list[ful.WebhookDelivery]:
        found = await self.fulfillment.ListWebhookDeliveries(
            ful.ListWebhookDeliveriesRequest(subscription_id=subscription_id, page_size=500),
            metadata=self.auth,
        )
        return list(reversed(found.deliveries))  # oldest first

    async def events(self, after: int = 0) -> list[ful.EntitlementEvent]:
        """The change stream after `after`, as the API gives it."""
        async with self.app.store.read() as tx:
            views = await event_views(tx, await tx.events.after(after, 1000))
        return [event_out(v) for v in views]

    async def caught_up(self, subscription_id: str, sequence: int) -> ful.WebhookSubscription:
        """The subscription once its cursor reached `sequence` (polled, bounded)."""
        for _ in range(1000):
            found = await self.get(subscription_id)
            if found.cursor >= sequence:
                return found
            await asyncio.sleep(0.02)
        raise AssertionError(f"{subscription_id} stayed at {found.cursor}")


@pytest.fixture
async def world(
    app: AppContext,
    channel: grpc.aio.Channel,
    tokens: Tokens,
    webhook_auth: tuple[tuple[str, str], ...],
) -> World:
    made = World(app, channel, tokens, webhook_auth)
    other = cat.Product(
        product_id="other-app",
        display_name="Other",
        editions=[cat.Edition(edition_id="standard", display_name="Standard")],
    )
    await made.catalog.PutProduct(cat.PutProductRequest(product=other), metadata=tokens("catalog"))
    await put_catalog(
        made.catalog,
        tokens("catalog"),
        create_sku("STD", seats=5),
        create_sku("OTHER", product_id="other-app"),
    )
    return made


def sequences(received: list[Received]) -> list[int]:
    return [r.sequence for r in received]


async def test_events_arrive_signed_in_order_as_the_change_stream_gives_them(
    world: World, receiver: Receiver
) -> None:
    everything, secret = await world.subscribe(receiver.url, description="CRM")
    assert secret.startswith("whsec_")
    assert everything.state == ful.WEBHOOK_STATE_ACTIVE
    entitlement = await world.fulfil()
    await world.activate(entitlement.license_key, "laptop-1")
    await world.activate(entitlement.license_key, "laptop-2")
    events = await world.events(everything.cursor)
    assert [e.type for e in events] == [
        ful.ENTITLEMENT_EVENT_TYPE_CREATED,
        ful.ENTITLEMENT_EVENT_TYPE_SEAT_ACTIVATED,
        ful.ENTITLEMENT_EVENT_TYPE_SEAT_ACTIVATED,
    ]
    await receiver.wait_for(lambda got: len(got) >= 3)
    got = receiver.delivered()
    assert sequences(got) == [e.sequence for e in events]
    for event, post in zip(events, got, strict=True):
        payload = verified(secret, post)
        assert payload["data"] == json_format.MessageToDict(event)
        assert post.webhook_id == f"{everything.subscription_id}.{event.sequence}"
    assert json_format.MessageToDict(events[1])["type"] == "ENTITLEMENT_EVENT_TYPE_SEAT_ACTIVATED"
    assert got[1].payload["type"] == "entitlement.seat_activated"
    with pytest.raises(Exception, match="signature"):
        verified("whsec_" + "A" * 43 + "=", got[0])
    # The receiver has the last POST a moment before the sender records its answer.
    await world.caught_up(everything.subscription_id, events[-1].sequence)
    log = await world.deliveries(everything.subscription_id)
    assert [(d.sequence, d.http_status, d.delivered) for d in log] == [
        (e.sequence, 200, True) for e in events
    ]
    assert log[0].response_excerpt == "ok"
    assert log[0].webhook_id == got[0].webhook_id


async def test_filters_send_only_the_types_and_products_asked_for(
    world: World, receiver: Receiver
) -> None:
    other = Receiver()
    other.start()
    try:
        seats, _ = await world.subscribe(
            receiver.url, event_types=[ful.ENTITLEMENT_EVENT_TYPE_SEAT_ACTIVATED]
        )
        products, _ = await world.subscribe(other.url, product_ids=["other-app"])
        mine = await world.fulfil()
        theirs = await world.fulfil("OTHER")
        await world.activate(mine.license_key, "laptop-1")
        await world.activate(theirs.license_key, "laptop-1", "other-app")
        await receiver.wait_for(lambda got: len(got) >= 2)
        await other.wait_for(lambda got: len(got) >= 2)
        events = await world.events(seats.cursor)
        wanted = [e.sequence for e in events if e.type == ful.ENTITLEMENT_EVENT_TYPE_SEAT_ACTIVATED]
        assert sequences(receiver.delivered()) == wanted
        theirs_events = [e.sequence for e in events if e.entitlement_id == theirs.entitlement_id]
        assert sequences(other.delivered()) == theirs_events
        # The cursor moves past what the filters skip, so nothing is left behind.
        for subscription in (seats, products):
            await world.caught_up(subscription.subscription_id, events[-1].sequence)
    finally:
        other.stop()


def test_backoff_doubles_to_its_cap_and_pauses_after_the_failing_time() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    policy = RetryPolicy(
        initial=timedelta(seconds=5), maximum=timedelta(seconds=30), pause_after=timedelta(hours=1)
    )
    subscription = Subscription(
        "whk_x", SubscriptionSpec("http://h/"), WebhookState.ACTIVE, 0, now, now
    )
    delays = []
    for _ in range(5):
        outcome = after_failure(subscription, now, policy, "HTTP 500")
        delays.append((outcome.next_attempt_time - now).total_seconds())
        assert outcome.failing_since == now
        assert not outcome.pause_reason
        subscription = Subscription(
            "whk_x",
            subscription.spec,
            WebhookState.ACTIVE,
            0,
            now,
            now,
            attempts=outcome.attempts,
            failing_since=outcome.failing_since,
        )
    assert delays == [5, 10, 20, 30, 30]
    later = after_failure(subscription, now + timedelta(hours=1), policy, "HTTP 500")
    assert "paused by Keyturn" in later.pause_reason
    assert "HTTP 500" in later.pause_reason


async def test_failures_are_retried_with_backoff_and_logged_with_the_same_id(
    world: World, receiver: Receiver
) -> None:
    answers = iter([500, 503])
    receiver.answer = lambda _: next(answers, 200)
    subscription, secret = await world.subscribe(receiver.url)
    await world.fulfil()
    await receiver.wait_for(lambda got: any(r.status == 200 for r in got))
    posts = receiver.snapshot()
    assert [r.status for r in posts] == [500, 503, 200]
    assert len({r.webhook_id for r in posts}) == 1
    for post in posts:
        verified(secret, post)
    await world.caught_up(subscription.subscription_id, posts[0].sequence)
    log = await world.deliveries(subscription.subscription_id)
    assert [(d.http_status, d.delivered) for d in log] == [(500, False), (503, False), (200, True)]
    assert log[0].response_excerpt == "HTTP 500: receiver says no"
    first, second, third = (d.attempt_time.ToDatetime(UTC) for d in log)
    # Exponential: the first retry waits the initial delay, the second twice that.
    assert second - first >= INITIAL
    assert third - second >= 2 * INITIAL
    after = await world.get(subscription.subscription_id)
    assert after.attempts == 0
    assert not after.HasField("failing_since")


async def test_a_refused_connection_is_logged_and_holds_back_the_next_events(
    world: World, receiver: Receiver
) -> None:
    subscription, _ = await world.subscribe(receiver.url)
    receiver.stop()  # the endpoint is down: connections refused
    entitlement = await world.fulfil()
    await world.activate(entitlement.license_key, "laptop-1")
    found = await world.get(subscription.subscription_id)
    for _ in range(500):
        if found.attempts >= 2:
            break
        found = await world.get(subscription.subscription_id)
    assert found.attempts >= 2
    assert found.cursor == subscription.cursor
    assert found.next_attempt_time.ToDatetime(UTC) > found.failing_since.ToDatetime(UTC)
    log = await world.deliveries(subscription.subscription_id)
    assert {(d.http_status, d.delivered, d.sequence) for d in log} == {
        (0, False, subscription.cursor + 1)
    }
    assert "Connect" in log[0].response_excerpt
    receiver.start()
    await receiver.wait_for(lambda got: len(got) >= 2)
    assert sequences(receiver.delivered()) == [subscription.cursor + 1, subscription.cursor + 2]


@pytest.mark.parametrize("pause_after", [timedelta(0)])
async def test_a_failing_endpoint_is_paused_with_a_notice_then_resumed_without_a_gap(
    world: World, receiver: Receiver, tokens: Tokens, smtp: SmtpServer
) -> None:
    receiver.answer = lambda _: 500
    subscription, _ = await world.subscribe(receiver.url)
    entitlement = await world.fulfil()
    await receiver.wait_for(lambda got: len(got) >= 1)
    found = await world.get(subscription.subscription_id)
    for _ in range(500):
        if found.state == ful.WEBHOOK_STATE_PAUSED:
            break
        found = await world.get(subscription.subscription_id)
    assert found.state == ful.WEBHOOK_STATE_PAUSED
    assert "paused by Keyturn" in found.pause_reason
    assert "500" in found.pause_reason
    audit = await world.fulfillment.ListAuditEvents(
        ful.ListAuditEventsRequest(action="webhook.pause"), metadata=tokens("read")
    )
    (notice,) = audit.audit_events
    assert notice.actor == "system:webhooks"
    assert notice.resource == f"webhooks/{subscription.subscription_id}"
    (mail,) = await smtp.mailbox.wait_for(lambda got: len(got) == 1)
    assert mail["To"] == OPERATOR
    assert subscription.subscription_id in mail["Subject"]
    text = mail.get_content()
    assert receiver.url in text
    assert found.pause_reason in text
    assert f"keyturn webhooks resume {subscription.subscription_id}" in text
    # Paused: new events wait, nothing is sent.
    await world.activate(entitlement.license_key, "laptop-1")
    assert len(receiver.snapshot()) == 1
    receiver.answer = lambda _: 200
    resumed = await world.fulfillment.UpdateWebhookSubscription(
        ful.UpdateWebhookSubscriptionRequest(
            subscription=ful.WebhookSubscription(
                subscription_id=subscription.subscription_id,
                url=receiver.url,
                state=ful.WEBHOOK_STATE_ACTIVE,
            )
        ),
        metadata=world.auth,
    )
    assert resumed.subscription.state == ful.WEBHOOK_STATE_ACTIVE
    assert resumed.subscription.pause_reason == ""
    assert resumed.subscription.attempts == 0
    await receiver.wait_for(lambda got: len(receiver.delivered()) >= 2)
    assert sequences(receiver.delivered()) == [subscription.cursor + 1, subscription.cursor + 2]


async def test_pause_by_call_sends_nothing_until_resumed(world: World, receiver: Receiver) -> None:
    subscription, _ = await world.subscribe(receiver.url)
    paused = await world.fulfillment.UpdateWebhookSubscription(
        ful.UpdateWebhookSubscriptionRequest(
            subscription=ful.WebhookSubscription(
                subscription_id=subscription.subscription_id,
                url=receiver.url,
                description="paused for maintenance",
                state=ful.WEBHOOK_STATE_PAUSED,
            )
        ),
        metadata=world.auth,
    )
    assert paused.subscription.state == ful.WEBHOOK_STATE_PAUSED
    assert paused.subscription.description == "paused for maintenance"
    probe, _ = await world.subscribe(receiver.url + "?probe")
    await world.fulfil()
    # The probe (subscribed after the pause) got the event: the paused one did not.
    await receiver.wait_for(lambda got: len(got) >= 1)
    assert {r.webhook_id.rpartition(".")[0] for r in receiver.snapshot()} == {probe.subscription_id}


async def test_redelivery_by_webhook_id_and_from_a_sequence(
    world: World, receiver: Receiver
) -> None:
    subscription, secret = await world.subscribe(receiver.url)
    entitlement = await world.fulfil()
    await world.activate(entitlement.license_key, "laptop-1")
    await receiver.wait_for(lambda got: len(got) >= 2)
    first, second = receiver.delivered()
    await world.caught_up(subscription.subscription_id, second.sequence)
    again = await world.fulfillment.RedeliverWebhooks(
        ful.RedeliverWebhooksRequest(
            subscription_id=subscription.subscription_id, webhook_id=first.webhook_id
        ),
        metadata=world.auth,
    )
    assert again.delivery.delivered
    assert again.delivery.redelivery
    assert again.delivery.webhook_id == first.webhook_id
    repeat = receiver.snapshot()[2]
    assert repeat.webhook_id == first.webhook_id
    assert repeat.body == first.body
    verified(secret, repeat)
    moved = await world.fulfillment.RedeliverWebhooks(
        ful.RedeliverWebhooksRequest(
            subscription_id=subscription.subscription_id, from_sequence=first.sequence
        ),
        metadata=world.auth,
    )
    assert moved.subscription.cursor == first.sequence - 1
    await receiver.wait_for(lambda got: len(got) >= 5)
    assert [r.webhook_id for r in receiver.snapshot()[3:]] == [
        first.webhook_id,
        second.webhook_id,
    ]
    await world.caught_up(subscription.subscription_id, second.sequence)
    log = await world.deliveries(subscription.subscription_id)
    # Five attempts; the log keeps the newest LOG_ATTEMPTS once the sender is done.
    assert [d.redelivery for d in log][-LOG_ATTEMPTS:] == [False, True, False, False]
    assert [d.sequence for d in log][-2:] == [first.sequence, second.sequence]
    await world.fulfil()
    await receiver.wait_for(lambda got: len(got) >= 6)
    await world.caught_up(subscription.subscription_id, second.sequence + 1)
    for _ in range(500):  # trimmed when the round lets go of the subscription
        log = await world.deliveries(subscription.subscription_id)
        if len(log) == LOG_ATTEMPTS:
            break
        await asyncio.sleep(0.02)
    assert [d.redelivery for d in log] == [True, False, False, False]
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await world.fulfillment.RedeliverWebhooks(
            ful.RedeliverWebhooksRequest(
                subscription_id=subscription.subscription_id,
                webhook_id=f"{subscription.subscription_id}.999999",
            ),
            metadata=world.auth,
        )
    assert failure_of(unknown.value).reason == "WEBHOOK_NOT_FOUND"


async def test_delete_stops_sending_and_forgets_the_log(world: World, receiver: Receiver) -> None:
    gone, _ = await world.subscribe(receiver.url)
    await world.fulfil()
    await receiver.wait_for(lambda got: len(got) >= 1)
    await world.fulfillment.DeleteWebhookSubscription(
        ful.DeleteWebhookSubscriptionRequest(subscription_id=gone.subscription_id),
        metadata=world.auth,
    )
    for call in (world.get(gone.subscription_id), world.deliveries(gone.subscription_id)):
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await call
        failure = failure_of(missing.value)
        assert (failure.code, failure.reason) == (
            grpc.StatusCode.NOT_FOUND,
            "WEBHOOK_SUBSCRIPTION_NOT_FOUND",
        )
    probe, _ = await world.subscribe(receiver.url + "?probe")
    await world.fulfil()
    await receiver.wait_for(lambda got: len(got) >= 2)
    assert receiver.snapshot()[1].webhook_id.startswith(probe.subscription_id + ".")
    listed = await world.fulfillment.ListWebhookSubscriptions(
        ful.ListWebhookSubscriptionsRequest(), metadata=world.auth
    )
    assert [s.subscription_id for s in listed.subscriptions] == [probe.subscription_id]


async def test_every_change_is_audited_and_the_secret_is_never_shown_again(
    world: World, receiver: Receiver, tokens: Tokens, app: AppContext
) -> None:
    given = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    subscription, secret = await world.subscribe(receiver.url, after_sequence=0)
    assert subscription.cursor == 0
    created = await world.fulfillment.CreateWebhookSubscription(
        ful.CreateWebhookSubscriptionRequest(
            subscription=ful.WebhookSubscription(url=receiver.url), secret=given
        ),
        metadata=world.auth,
    )
    assert created.secret == given
    listed = await world.fulfillment.ListWebhookSubscriptions(
        ful.ListWebhookSubscriptionsRequest(page_size=1), metadata=world.auth
    )
    assert len(listed.subscriptions) == 1
    assert listed.next_page_token
    async with app.store.read() as tx:
        sealed = await tx.webhooks.sealed_secret(subscription.subscription_id)
    assert sealed is not None
    assert secret.encode() not in sealed
    await world.fulfillment.DeleteWebhookSubscription(
        ful.DeleteWebhookSubscriptionRequest(subscription_id=subscription.subscription_id),
        metadata=world.auth,
    )
    audit = await world.fulfillment.ListAuditEvents(
        ful.ListAuditEventsRequest(resource="webhooks/"), metadata=tokens("read")
    )
    assert sorted(a.action for a in audit.audit_events) == [
        "webhook.create",
        "webhook.create",
        "webhook.delete",
    ]
    with pytest.raises(grpc.aio.AioRpcError) as wrong_scope:
        await world.fulfillment.ListWebhookSubscriptions(
            ful.ListWebhookSubscriptionsRequest(), metadata=tokens("read")
        )
    assert failure_of(wrong_scope.value).reason == "INSUFFICIENT_SCOPE"
