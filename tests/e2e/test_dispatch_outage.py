"""The outbox under stress: an SMTP outage, two dispatching replicas, a claim left by a dead one.

The last test checks that a dispatcher does not spin while a due message is claimed
by another one.

Real servers, real databases (both backends), a real SMTP server (aiosmtpd on
loopback). Nothing sleeps: tests wait on the dispatchers' `settled` bells and
on the mailbox, each with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import RowMapping

from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.server.app.context import AppContext
from keyturn.server.app.delivery import Dispatcher
from keyturn.server.bootstrap import build_context, build_dispatcher
from keyturn.server.store.unit_of_work import Store

from conftest import Tokens, settings_for
from support.catalog import put_catalog
from support.mailing import KEY_SKU, WAIT_S, fulfil_many, keys_by_message, mailing, outbox_rows
from support.rpc import PRODUCT_ID, create_sku, order
from support.smtp import SmtpServer, body_html, body_text

FAST = {
    "dispatch_retry_initial_seconds": 0.05,
    "dispatch_retry_max_seconds": 0.5,
    "dispatch_poll_seconds": 0.1,
    "dispatch_max_attempts": 10_000,  # an outage must not make them FAILED
}

ORDERS = 100
SKU = KEY_SKU  # the one fulfil_many orders

T = TypeVar("T")
Fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub


async def first_of(signals: Sequence[asyncio.Event]) -> None:
    """Until one of `signals` is set."""
    waiters = [asyncio.ensure_future(signal.wait()) for signal in signals]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def settled_until(
    dispatchers: Sequence[Dispatcher],
    check: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    within_s: float = WAIT_S,
) -> T:
    """`check()` once `done` holds of it; looked at again after each attempt recorded."""
    async with asyncio.timeout(within_s):
        while True:
            signals = [d.settled.armed() for d in dispatchers]
            value = await check()
            if done(value):
                return value
            await first_of(signals)


def all_rows(predicate: Callable[[RowMapping], bool], count: int) -> Callable[[Any], bool]:
    return lambda rows: len(rows) == count and all(predicate(r) for r in rows)


async def messages_of(
    stub: Fulfillment, tokens: Tokens, order_ids: Sequence[str]
) -> dict[str, list[ful.OutboundMessage]]:
    """GetOrder's messages of each order."""

    async def one(order_id: str) -> list[ful.OutboundMessage]:
        got = await stub.GetOrder(
            ful.GetOrderRequest(source="test", order_id=order_id), metadata=tokens("read")
        )
        return list(got.order.messages)

    found = await asyncio.gather(*(one(order_id) for order_id in order_ids))
    return dict(zip(order_ids, found, strict=True))


def check_received_once(smtp: SmtpServer, keys: dict[str, str]) -> None:
    """Each message arrived exactly once, under its own Message-ID, with its own key."""
    received = smtp.mailbox.message_ids()
    assert len(received) == len(keys), "a message was mailed more than once (or not at all)"
    assert sorted(received) == sorted(f"<{mid}@localhost>" for mid in keys)
    for mail in smtp.mailbox.messages:
        message_id = str(mail["Message-ID"]).removeprefix("<").removesuffix("@localhost>")
        assert keys[message_id] in body_text(mail)
        assert keys[message_id] in body_html(mail)
        assert str(mail["To"]) == "it@initech.example"


async def test_mail_queued_during_an_smtp_outage_goes_out_once_when_it_ends(
    database_url: str, smtp: SmtpServer, tokens: Tokens
) -> None:
    smtp.stop()
    async with mailing(database_url, smtp, tokens, **FAST) as s:
        responses = await fulfil_many(s.fulfillment, tokens, ORDERS)
        keys = keys_by_message(responses)
        order_ids = [r.order.order_id for r in responses]

        # Every message was tried while the SMTP server was down.
        await settled_until(
            [s.dispatcher],
            lambda: outbox_rows(s.ctx.store),
            all_rows(lambda r: r["state"] == "queued" and r["attempts"] >= 1, ORDERS),
        )
        # The server keeps serving meanwhile.
        seat = await s.licensing.ActivateSeat(
            lic.ActivateSeatRequest(
                license_key=responses[0].entitlements[0].license_key,
                product_id=PRODUCT_ID,
                fingerprint="device-outage-1",
            )
        )
        assert seat.entitlement.entitlement_id == responses[0].entitlements[0].entitlement_id
        waiting = await messages_of(s.fulfillment, tokens, order_ids)
        for messages in waiting.values():
            (message,) = messages
            assert message.state == ful.MESSAGE_STATE_QUEUED
            assert message.attempts >= 1
            assert "connect" in message.last_error.lower(), message.last_error
            assert str(smtp.port) in message.last_error
            assert message.HasField("next_attempt_time")
            assert not message.HasField("sent_time")
        assert smtp.mailbox.messages == []

        smtp.start()
        await smtp.mailbox.wait_for(lambda got: len(got) >= ORDERS, WAIT_S)
        await settled_until(
            [s.dispatcher],
            lambda: outbox_rows(s.ctx.store),
            all_rows(lambda r: r["state"] == "sent", ORDERS),
        )
        sent = await messages_of(s.fulfillment, tokens, order_ids)
    smtp.stop()  # nothing more can arrive
    for messages in sent.values():
        (message,) = messages
        assert message.state == ful.MESSAGE_STATE_SENT
        assert message.attempts >= 2  # one during the outage at least, then the one that went
        assert message.last_error == ""
        assert message.HasField("sent_time")
    check_received_once(smtp, keys)


async def test_two_replicas_send_each_message_of_one_outbox_once(
    database_url: str,
    smtp: SmtpServer,
    tokens: Tokens,
    catalog_stub: catalog_pb2_grpc.CatalogServiceStub,
    fulfillment_stub: Fulfillment,
    app: AppContext,
) -> None:
    # Queued by a server without a dispatcher: nothing goes out yet.
    await put_catalog(catalog_stub, tokens("catalog"), create_sku(SKU))
    responses = await fulfil_many(fulfillment_stub, tokens, ORDERS)
    keys = keys_by_message(responses)
    rows = await outbox_rows(app.store)
    assert [(r["state"], r["attempts"]) for r in rows] == [("queued", 0)] * ORDERS

    settings = settings_for(database_url, **smtp.settings(), **FAST)
    contexts = [await build_context(settings) for _ in range(2)]
    dispatchers = []
    for ctx in contexts:
        dispatcher = build_dispatcher(ctx, settings)
        assert dispatcher is not None
        dispatchers.append(dispatcher)
    recorded = [0, 0]  # rings of each replica's bell (a lower bound of its attempts)

    async def count(index: int) -> None:
        while True:
            await dispatchers[index].settled.armed().wait()
            recorded[index] += 1

    tasks = [asyncio.create_task(count(i)) for i in range(2)]
    tasks += [asyncio.create_task(d.run()) for d in dispatchers]  # both at once
    try:
        await settled_until(
            dispatchers,
            lambda: outbox_rows(app.store),
            all_rows(lambda r: r["state"] == "sent", ORDERS),
        )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ctx in contexts:
            await ctx.store.close()
    smtp.stop()
    assert all(n > 0 for n in recorded), f"one replica sent nothing: {recorded}"
    check_received_once(smtp, keys)
    sent = await messages_of(fulfillment_stub, tokens, [r.order.order_id for r in responses])
    for messages in sent.values():
        (message,) = messages
        assert message.state == ful.MESSAGE_STATE_SENT
        assert message.attempts == 1


HOLD = timedelta(minutes=5)  # how long the dead dispatcher claimed its messages for
DEAD = 5


@contextlib.asynccontextmanager
async def dispatching(
    app: AppContext, database_url: str, smtp: SmtpServer
) -> AsyncIterator[Dispatcher]:
    """A dispatcher on `app` (so on its movable clock), running until the block ends."""
    dispatcher = build_dispatcher(app, settings_for(database_url, **smtp.settings(), **FAST))
    assert dispatcher is not None
    running = asyncio.create_task(dispatcher.run())
    try:
        yield dispatcher
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def claim_like_a_dead_dispatcher(app: AppContext) -> list[str]:
    """Claims every due message and sends none: what a dispatcher that died leaves."""
    async with app.store.write() as tx:
        claimed = await tx.outbox.claim_due(app.clock.now(), HOLD, 1000)
    return [m.message_id for m in claimed]


async def test_a_claim_left_by_a_dead_dispatcher_is_taken_over_when_it_runs_out(
    database_url: str,
    smtp: SmtpServer,
    tokens: Tokens,
    catalog_stub: catalog_pb2_grpc.CatalogServiceStub,
    fulfillment_stub: Fulfillment,
    app: AppContext,
) -> None:
    await put_catalog(catalog_stub, tokens("catalog"), create_sku(SKU))
    stranded = keys_by_message(await fulfil_many(fulfillment_stub, tokens, DEAD, "dead"))
    claimed = await claim_like_a_dead_dispatcher(app)
    assert sorted(claimed) == sorted(stranded)
    rows = await outbox_rows(app.store)
    assert all(r["claimed_until"] is not None for r in rows)
    dead_orders = [f"dead-{n:03}" for n in range(DEAD)]

    async def queue_and_send(order_id: str) -> str:
        """Queues one more order and waits until its email is sent: a round went by."""
        response = await fulfillment_stub.FulfillOrder(
            order(order_id, SKU), metadata=tokens("fulfill")
        )
        await settled_until(
            [dispatcher],
            lambda: messages_of(fulfillment_stub, tokens, [order_id]),
            lambda found: found[order_id][0].state == ful.MESSAGE_STATE_SENT,
        )
        return f"<{response.order.messages[0].message_id}@localhost>"

    async with dispatching(app, database_url, smtp) as dispatcher:
        # Rounds while the claim holds send the mail queued since, not the claimed.
        live = [await queue_and_send("live-1")]
        app.clock.offset = HOLD - timedelta(seconds=10)  # just before the claim runs out
        live.append(await queue_and_send("live-2"))
        assert smtp.mailbox.message_ids() == live
        waiting = await messages_of(fulfillment_stub, tokens, dead_orders)
        for messages in waiting.values():
            assert [(m.state, m.attempts) for m in messages] == [(ful.MESSAGE_STATE_QUEUED, 0)]

        app.clock.offset = HOLD + timedelta(seconds=1)  # the claim has run out
        await settled_until(
            [dispatcher],
            lambda: messages_of(fulfillment_stub, tokens, dead_orders),
            lambda found: all(ms[0].state == ful.MESSAGE_STATE_SENT for ms in found.values()),
        )
    smtp.stop()
    received = smtp.mailbox.message_ids()
    assert received[:2] == live
    assert sorted(received[2:]) == sorted(f"<{mid}@localhost>" for mid in stranded)
    for mail in smtp.mailbox.messages[2:]:
        message_id = str(mail["Message-ID"]).removeprefix("<").removesuffix("@localhost>")
        assert stranded[message_id] in body_text(mail)
    after = await messages_of(fulfillment_stub, tokens, dead_orders)
    for messages in after.values():
        assert [(m.state, m.attempts) for m in messages] == [(ful.MESSAGE_STATE_SENT, 1)]


class Rounds:
    """Counts the dispatch rounds run on a store: each starts with claim_due's SELECT."""

    def __init__(self) -> None:
        self.count = 0
        self.first = asyncio.Event()

    def seen(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        # Runs in the event loop's thread (the async drivers' greenlets).
        if statement.lstrip().upper().startswith("SELECT") and "claimed_until IS NULL" in statement:
            self.count += 1
            self.first.set()


@contextlib.contextmanager
def counting_rounds(store: Store) -> Iterator[Rounds]:
    rounds = Rounds()
    event.listen(store.engine.sync_engine, "before_cursor_execute", rounds.seen)
    try:
        yield rounds
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", rounds.seen)


async def test_a_dispatcher_does_not_spin_while_another_holds_a_claim(
    database_url: str,
    smtp: SmtpServer,
    tokens: Tokens,
    catalog_stub: catalog_pb2_grpc.CatalogServiceStub,
    fulfillment_stub: Fulfillment,
    app: AppContext,
) -> None:
    await put_catalog(catalog_stub, tokens("catalog"), create_sku(SKU))
    await fulfil_many(fulfillment_stub, tokens, 1, "dead")
    assert len(await claim_like_a_dead_dispatcher(app)) == 1
    settings = settings_for(
        database_url, **smtp.settings(), **{**FAST, "dispatch_poll_seconds": 60}
    )
    dispatcher = build_dispatcher(app, settings)
    assert dispatcher is not None
    with counting_rounds(app.store) as rounds:
        running = asyncio.create_task(dispatcher.run())
        try:
            # Its first round: the message is claimed by the other, nothing to send.
            async with asyncio.timeout(WAIT_S):
                await rounds.first.wait()
            before = rounds.count
            for _ in range(20):  # some work of the server meanwhile
                await messages_of(fulfillment_stub, tokens, ["dead-000"])
            during = rounds.count - before
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    # Nothing is due before the claim runs out (minutes away) and the poll is 60 s.
    assert during <= 1, f"{during} dispatch rounds while 20 GetOrder calls ran"
    assert smtp.mailbox.messages == []
