"""Change streams fanned out from one feed per process, through a real server.

Many streams on one server: each gets every new event, idle ones cost the
database nothing, a stream behind the feed's tail reads the database and comes
back, and the number of open streams is capped with a clear error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.context import AppContext
from keyturn.server.app.event_feed import EventFeed
from keyturn.server.bootstrap import build_context

from conftest import Tokens, settings_for
from support.catalog import put_catalog
from support.rpc import PRODUCT_ID, create_sku, order
from support.watch import next_event, watch, watch_failure

Fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub

WAIT_S = 60.0  # only so that a broken stream fails the test instead of hanging it
STREAMS = 2000
CHANNELS = 8  # connections the streams are spread over, 250 each
# The idle window in which the server's SQL is counted. It is a bounded observation, not a
# wait for something to happen: the point is that nothing happens. The feed polls twice in
# it (every 0.5 s) and the readiness check may run once; 2,000 polling streams would make
# thousands of statements.
IDLE_S = 1.0
IDLE_STATEMENTS_AT_MOST = 20
ADD_SEAT = cat.Operation(add_seats=cat.AddSeatsOperation(seats_per_unit=1))
SKUS = (
    create_sku("SUB-3", seats=3, term="P1Y"),
    cat.Sku(
        sku_id="SEAT-X16",
        product_id=PRODUCT_ID,
        display_name="16 seats",
        operations=[ADD_SEAT] * 16,
    ),
)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine of the test's own on the server's database, for reading it with SQL."""
    engine = create_async_engine(database_url)
    yield engine
    await engine.dispose()


async def rows_in_database(db: AsyncEngine) -> list[tuple[int, str, str]]:
    """(sequence, entitlement_id, order_id) of every event, in sequence order."""
    async with db.connect() as connection:
        result = await connection.execute(
            text("SELECT sequence, entitlement_id, order_id FROM entitlement_events ORDER BY 1")
        )
        return [(int(r[0]), r[1], r[2]) for r in result.all()]


def row_of(event: ful.EntitlementEvent) -> tuple[int, str, str]:
    return (event.sequence, event.entitlement_id, event.order_id)


@contextlib.asynccontextmanager
async def own_server(ctx: AppContext, tokens: Tokens) -> AsyncIterator[KeyturnServer]:
    """A server on `ctx`, with the test catalog."""
    server = KeyturnServer(ctx, "127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            await put_catalog(
                catalog_pb2_grpc.CatalogServiceStub(channel), tokens("catalog"), *SKUS
            )
        yield server
    finally:
        await server.stop(grace=1.0)


@contextlib.asynccontextmanager
async def channel_to(ctx: AppContext, tokens: Tokens) -> AsyncIterator[grpc.aio.Channel]:
    async with (
        own_server(ctx, tokens) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        yield channel


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for a condition of the server that no call reports (checked every 10 ms)."""
    try:
        async with asyncio.timeout(WAIT_S):
            while not condition():  # noqa: ASYNC110 (no event tells the client the server let go)
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {WAIT_S} s: {what}") from None


@contextlib.contextmanager
def counting_statements(engine: AsyncEngine) -> Iterator[list[int]]:
    """Counts every SQL statement the engine sends while the block runs."""
    counted = [0]

    def count(*_args: Any) -> None:
        counted[0] += 1

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        yield counted
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)


async def test_two_thousand_idle_streams_cost_no_reads_and_all_get_a_new_event(
    database_url: str, tokens: Tokens, db: AsyncEngine
) -> None:
    ctx = await build_context(settings_for(database_url, lapse_sweep_seconds=0))
    # One connection each: a few channels with many streams apiece, as many clients would.
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(own_server(ctx, tokens))
        channels = [
            await stack.enter_async_context(
                grpc.aio.insecure_channel(server.address, options=options)
            )
            for _ in range(CHANNELS)
        ]
        writer = Fulfillment(channels[0])
        await writer.FulfillOrder(order("o-1", "SUB-3"), metadata=tokens("fulfill"))
        calls = [
            watch(Fulfillment(channels[n % CHANNELS]), tokens("read"), 0) for n in range(STREAMS)
        ]
        stack.callback(lambda: [call.cancel() for call in calls])
        # Each stream's first event proves it is open and past its catch-up.
        first = await asyncio.gather(*(next_event(call) for call in calls))
        assert {e.sequence for e in first} == {1}
        assert ctx.feed.open_streams == STREAMS

        tasks_before = len(asyncio.all_tasks())
        with counting_statements(ctx.store.engine) as idle_statements:
            await asyncio.sleep(IDLE_S)
        assert idle_statements[0] <= IDLE_STATEMENTS_AT_MOST
        assert len(asyncio.all_tasks()) == tasks_before

        made = await writer.FulfillOrder(order("o-2", "SUB-3"), metadata=tokens("fulfill"))
        received = await asyncio.gather(*(next_event(call) for call in calls))
    rows = await rows_in_database(db)
    assert [r[0] for r in rows] == [1, 2]
    assert len(received) == STREAMS
    assert {row_of(e) for e in received} == {rows[1]}
    assert {e.entitlement.entitlement_id for e in received} == {made.entitlements[0].entitlement_id}


async def test_stream_beyond_the_cap_is_refused_and_closing_one_frees_a_slot(
    database_url: str, tokens: Tokens
) -> None:
    ctx = await build_context(settings_for(database_url, watch_max_streams=3))
    async with channel_to(ctx, tokens) as channel:
        stub = Fulfillment(channel)
        await stub.FulfillOrder(order("o-1", "SUB-3"), metadata=tokens("fulfill"))
        calls = [watch(stub, tokens("read"), 0) for _ in range(3)]
        try:
            assert [(await next_event(call)).sequence for call in calls] == [1, 1, 1]
            failure = await watch_failure(stub, tokens("read"), 0)
            assert (failure.code, failure.reason, failure.metadata) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "WATCH_STREAMS_EXHAUSTED",
                {"max_streams": "3"},
            )
            assert ctx.feed.open_streams == 3  # the refused stream took no slot

            calls.pop(0).cancel()
            await until(lambda: ctx.feed.open_streams == 2, "the closed stream's slot is free")
            calls.append(watch(stub, tokens("read"), 0))
            assert (await next_event(calls[-1])).sequence == 1
            assert ctx.feed.open_streams == 3
            again = await watch_failure(stub, tokens("read"), 1)
            assert again.reason == "WATCH_STREAMS_EXHAUSTED"

            await stub.FulfillOrder(order("o-2", "SUB-3"), metadata=tokens("fulfill"))
            assert [(await next_event(call)).order_id for call in calls] == ["o-2"] * 3
        finally:
            for call in calls:
                call.cancel()


async def test_stream_behind_the_tail_reads_the_database_then_follows_the_tail(
    database_url: str, tokens: Tokens, db: AsyncEngine
) -> None:
    """A tail of 16 events and bursts of 240: the stream that does not read during the
    bursts is left behind the tail, reads the rest from the database, then follows again."""
    ctx = await build_context(settings_for(database_url))
    ctx.feed = EventFeed(
        ctx.read_store, ctx.store.bell, poll_seconds=0.5, max_streams=10, tail_size=16
    )
    async with channel_to(ctx, tokens) as channel:
        stub = Fulfillment(channel)
        made = await stub.FulfillOrder(order("o-0", "SUB-3"), metadata=tokens("fulfill"))
        target = made.entitlements[0].entitlement_id
        slow = watch(stub, tokens("read"), 0)
        fast = watch(stub, tokens("read"), 0)
        try:
            assert (await next_event(slow)).sequence == 1
            assert (await next_event(fast)).sequence == 1
            for n in range(1, 6):  # 5 orders of 15 lines of 16 operations
                request = order(f"o-{n}", "SEAT-X16")
                request.lines[0].entitlement_id = target
                request.lines.extend([request.lines[0]] * 14)
                await stub.FulfillOrder(request, metadata=tokens("fulfill"))
            fast_events = [await next_event(fast) for _ in range(1200)]
            slow_events = [await next_event(slow) for _ in range(1200)]
            await stub.FulfillOrder(order("after", "SUB-3"), metadata=tokens("fulfill"))
            last = (await next_event(slow), await next_event(fast))
        finally:
            slow.cancel()
            fast.cancel()
    rows = await rows_in_database(db)
    assert len(rows) == 1202
    assert [row_of(e) for e in slow_events] == rows[1:1201]
    assert [row_of(e) for e in fast_events] == rows[1:1201]
    assert [row_of(e) for e in last] == [rows[1201]] * 2
    assert [e.entitlement.seats for e in slow_events] == list(range(4, 1204))
