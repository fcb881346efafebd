"""A Keyturn server whose dispatcher mails to a test SMTP server, for the dispatch tests.

`until()` waits for GetOrder's messages to reach a state, woken by the
dispatcher's `settled` bell after each recorded attempt: no sleeping. The helpers
below it queue many orders' emails, read the outbox with plain SQL, and tell a
dispatcher's log line for a message recorded as sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import grpc
from sqlalchemy import select
from sqlalchemy.engine import RowMapping

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.context import AppContext
from keyturn.server.app.delivery import Dispatcher
from keyturn.server.bootstrap import build_context, build_dispatcher
from keyturn.server.store.tables import outbox
from keyturn.server.store.unit_of_work import Store

from .catalog import put_catalog
from .rpc import create_sku, order
from .smtp import SmtpServer
from conftest import Tokens, settings_for

FAST_RETRY = {"dispatch_retry_initial_seconds": 0.05, "dispatch_retry_max_seconds": 0.5}
WAIT_S = 30.0
KEY_SKU = "STD-1Y"
Messages = list[ful.OutboundMessage]


@dataclass
class Mailing:
    ctx: AppContext
    dispatcher: Dispatcher
    fulfillment: fulfillment_pb2_grpc.FulfillmentServiceStub
    licensing: licensing_pb2_grpc.LicensingServiceStub
    tokens: Tokens

    async def fulfil(self, request: ful.FulfillOrderRequest) -> ful.FulfillOrderResponse:
        return await self.fulfillment.FulfillOrder(  # type: ignore[no-any-return]
            request, metadata=self.tokens("fulfill")
        )

    async def order_messages(self, order_id: str, source: str = "test") -> Messages:
        stored = await self.fulfillment.GetOrder(
            ful.GetOrderRequest(source=source, order_id=order_id), metadata=self.tokens("read")
        )
        return list(stored.order.messages)

    async def until(self, order_id: str, done: Callable[[Messages], bool]) -> Messages:
        """GetOrder's messages once `done` holds; woken by each recorded attempt."""
        async with asyncio.timeout(WAIT_S):
            while True:
                signal = self.dispatcher.settled.armed()
                messages = await self.order_messages(order_id)
                if done(messages):
                    return messages
                await signal.wait()


@contextlib.asynccontextmanager
async def mailing(
    database_url: str, smtp: SmtpServer, tokens: Tokens, *skus: cat.Sku, **overrides: object
) -> AsyncIterator[Mailing]:
    """A KeyturnServer whose dispatcher sends to `smtp`, with `skus` (default: a
    license-key SKU, KEY_SKU) in the catalog. `overrides` are settings."""
    values = {**smtp.settings(), **FAST_RETRY, **overrides}
    settings = settings_for(database_url, **values)
    ctx = await build_context(settings)
    dispatcher = build_dispatcher(ctx, settings)
    assert dispatcher is not None
    server = KeyturnServer(ctx, "127.0.0.1:0", dispatcher)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            await put_catalog(
                catalog_pb2_grpc.CatalogServiceStub(channel),
                tokens("catalog"),
                *(skus or (create_sku(KEY_SKU),)),
            )
            yield Mailing(
                ctx,
                dispatcher,
                fulfillment_pb2_grpc.FulfillmentServiceStub(channel),
                licensing_pb2_grpc.LicensingServiceStub(channel),
                tokens,
            )
    finally:
        await server.stop(grace=1.0)


async def outbox_rows(store: Store) -> list[RowMapping]:
    """Every outbox row, read with plain SQL."""
    async with store.read() as tx:
        result = await tx.connection.execute(select(outbox).order_by(outbox.c.message_id))
        return list(result.mappings())


async def fulfil_many(
    stub: fulfillment_pb2_grpc.FulfillmentServiceStub,
    tokens: Tokens,
    count: int,
    prefix: str = "o",
) -> list[ful.FulfillOrderResponse]:
    """`count` one-line orders (each queues one license-key email), ten at a time."""
    limit = asyncio.Semaphore(10)

    async def one(number: int) -> ful.FulfillOrderResponse:
        async with limit:
            return await stub.FulfillOrder(
                order(f"{prefix}-{number:03}", KEY_SKU), metadata=tokens("fulfill")
            )

    return list(await asyncio.gather(*(one(n) for n in range(count))))


def keys_by_message(responses: Sequence[ful.FulfillOrderResponse]) -> dict[str, str]:
    """The license key each order's one email is to carry, by message id."""
    keys = {}
    for response in responses:
        (message,) = response.order.messages
        assert message.kind == ful.MESSAGE_KIND_LICENSE_KEY
        assert message.state == ful.MESSAGE_STATE_QUEUED
        keys[message.message_id] = response.entitlements[0].license_key
    assert len(keys) == len(responses)
    return keys


def sent_line(message_id: str) -> Callable[[list[str]], bool]:
    return lambda lines: any(f" sent {message_id} (license_key)" in line for line in lines)
