"""The change stream through a real server: WatchEntitlementEvents and ListEntitlementEvents.

What the watcher collects is compared with the rows of `entitlement_events`, read
with SQL on an engine of the test's own (not through the server's code), so that
"nothing skipped, nothing repeated, in commit order" is checked against the
database itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.context import AppContext
from keyturn.server.bootstrap import build_context

from conftest import Tokens, direct_url, server_settings, settings_for
from support.catalog import Metadata, put_catalog
from support.rpc import PRODUCT_ID, create_sku, failure_of, order
from support.subprocess_server import ServerProcess, serving
from support.watch import next_event, watch, watch_failure

Fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub
Licensing = licensing_pb2_grpc.LicensingServiceStub

THROUGH_PGBOUNCER = True  # conftest: also through PgBouncer in transaction mode
WAIT_S = 60.0  # only so that a broken stream fails the test instead of hanging it
WRITERS = 3
ORDERS_PER_WRITER = 100
OTHER_PROCESS_ORDERS_PER_WRITER = 10
SEATS_PER_UNIT = 3

# The event types as the database stores them, mapped by the test itself.
EVENT_TYPES = {
    "created": ful.ENTITLEMENT_EVENT_TYPE_CREATED,
    "renewed": ful.ENTITLEMENT_EVENT_TYPE_RENEWED,
    "seats_changed": ful.ENTITLEMENT_EVENT_TYPE_SEATS_CHANGED,
    "edition_changed": ful.ENTITLEMENT_EVENT_TYPE_EDITION_CHANGED,
    "features_changed": ful.ENTITLEMENT_EVENT_TYPE_FEATURES_CHANGED,
    "trial_converted": ful.ENTITLEMENT_EVENT_TYPE_TRIAL_CONVERTED,
    "cancelled": ful.ENTITLEMENT_EVENT_TYPE_CANCELLED,
    "seat_activated": ful.ENTITLEMENT_EVENT_TYPE_SEAT_ACTIVATED,
    "seat_released": ful.ENTITLEMENT_EVENT_TYPE_SEAT_RELEASED,
    "lease_lapsed": ful.ENTITLEMENT_EVENT_TYPE_LEASE_LAPSED,
}


def change_sku(sku_id: str, *operations: cat.Operation) -> cat.Sku:
    return cat.Sku(
        sku_id=sku_id, product_id=PRODUCT_ID, display_name=sku_id, operations=list(operations)
    )


ADD_SEAT = cat.Operation(add_seats=cat.AddSeatsOperation(seats_per_unit=1))
RENEW_1Y = cat.Operation(renew=cat.RenewOperation(term="P1Y"))
UPGRADE_PRO = cat.Operation(change_edition=cat.ChangeEditionOperation(edition_id="pro"))
SKUS = (
    create_sku("SUB-3", seats=SEATS_PER_UNIT, term="P1Y"),
    change_sku("SEAT", ADD_SEAT),
    change_sku("RENEW-1Y", RENEW_1Y),
    change_sku("RENEW-PLUS-SEAT", RENEW_1Y, ADD_SEAT),
    change_sku("UPGRADE-PRO", UPGRADE_PRO),
    change_sku("CANCEL", cat.Operation(cancel=cat.CancelOperation())),
)


@pytest.fixture
async def skus(catalog_stub: catalog_pb2_grpc.CatalogServiceStub, tokens: Tokens) -> None:
    await put_catalog(catalog_stub, tokens("catalog"), *SKUS)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine of the test's own on the server's database, for reading it with SQL."""
    engine = create_async_engine(direct_url(database_url))
    yield engine
    await engine.dispose()


@dataclass(frozen=True)
class Row:
    """What an event says, in the shape of a row of entitlement_events."""

    sequence: int
    entitlement_id: str
    type: int
    order_source: str
    order_id: str
    activation_id: str


def row_of(event: ful.EntitlementEvent) -> Row:
    return Row(
        event.sequence,
        event.entitlement_id,
        event.type,
        event.order_source,
        event.order_id,
        event.activation_id,
    )


async def rows_in_database(db: AsyncEngine, entitlement_id: str = "") -> list[Row]:
    query = (
        "SELECT sequence, entitlement_id, type, order_source, order_id, activation_id"
        " FROM entitlement_events"
    )
    if entitlement_id:
        query += " WHERE entitlement_id = :entitlement_id"
    async with db.connect() as connection:
        result = await connection.execute(
            text(query + " ORDER BY sequence"), {"entitlement_id": entitlement_id}
        )
        return [
            Row(int(r[0]), r[1], EVENT_TYPES.get(r[2], -1), r[3], r[4], r[5]) for r in result.all()
        ]


async def max_sequence(db: AsyncEngine) -> int:
    async with db.connect() as connection:
        result = await connection.execute(
            text("SELECT coalesce(max(sequence), 0) FROM entitlement_events")
        )
        return int(result.scalar_one())


async def seats_in_database(db: AsyncEngine) -> dict[str, int]:
    async with db.connect() as connection:
        result = await connection.execute(text("SELECT entitlement_id, seats FROM entitlements"))
        return {r[0]: int(r[1]) for r in result.all()}


async def history(
    stub: Fulfillment, auth: Metadata, entitlement_id: str, page_size: int
) -> list[ful.ListEntitlementEventsResponse]:
    """Every page of one entitlement's events."""
    pages = []
    token = ""
    while True:
        page = await stub.ListEntitlementEvents(
            ful.ListEntitlementEventsRequest(
                entitlement_id=entitlement_id, page_size=page_size, page_token=token
            ),
            metadata=auth,
        )
        pages.append(page)
        token = page.next_page_token
        if not token:
            return pages
        assert len(pages) < 100, "the pages never end"


def change(
    order_id: str, sku_id: str, entitlement_id: str, quantity: int = 1, reference: str = ""
) -> ful.FulfillOrderRequest:
    request = order(order_id, sku_id, quantity=quantity, reference=reference)
    request.lines[0].entitlement_id = entitlement_id
    return request


async def activate(licensing: Licensing, license_key: str, fingerprint: str) -> str:
    response = await licensing.ActivateSeat(
        lic.ActivateSeatRequest(
            license_key=license_key, product_id=PRODUCT_ID, fingerprint=fingerprint
        )
    )
    return response.activation_id


class Watcher:
    """Follows the change stream, hangs up after a random number of events and resumes.

    Each connection reads between 0 and `longest` events (0: hang up right after
    connecting), cancels the call and reconnects with `after_sequence` = the last
    sequence seen. Runs until cancelled.
    """

    def __init__(
        self,
        stub: Fulfillment | Sequence[Fulfillment],
        auth: Metadata,
        rng: random.Random,
        longest: int,
    ) -> None:
        # Several stubs: each connection goes to one of them (replicas), chosen at random.
        self._stubs = [stub] if isinstance(stub, Fulfillment) else list(stub)
        self._auth = auth
        self._rng = rng
        self._longest = longest
        self._progress = asyncio.Condition()
        self.events: list[ful.EntitlementEvent] = []
        self.connections = 0

    @property
    def last(self) -> int:
        return self.events[-1].sequence if self.events else 0

    async def run(self) -> None:
        while True:
            budget = self._rng.randint(0, self._longest)
            call = watch(self._rng.choice(self._stubs), self._auth, self.last)
            self.connections += 1
            try:
                for _ in range(budget):
                    response = await call.read()
                    assert isinstance(response, ful.WatchEntitlementEventsResponse), (
                        f"the stream ended after sequence {self.last}"
                    )
                    self.events.append(response.event)
                    async with self._progress:
                        self._progress.notify_all()
            finally:
                call.cancel()

    async def _reached(self, sequence: int) -> None:
        async with self._progress:
            await self._progress.wait_for(lambda: self.last >= sequence)

    async def follow_until(self, task: asyncio.Task[None], sequence: int) -> None:
        """Wait until the watcher has seen `sequence`; its own failure is raised here."""
        reached = asyncio.create_task(self._reached(sequence))
        done, _ = await asyncio.wait(
            {reached, task}, timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED
        )
        reached.cancel()
        if task in done:
            task.result()
            raise AssertionError("the watcher stopped")
        assert reached in done, f"the watcher is at {self.last}, the database at {sequence}"


@contextlib.asynccontextmanager
async def watching(watcher: Watcher) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(watcher.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass
class Written:
    """What the writers did, as the server answered."""

    entitlements: list[ful.Entitlement] = field(default_factory=list)  # with license keys
    events: int = 0  # operations applied plus seats taken
    orders: set[tuple[str, str]] = field(default_factory=set)
    activation_ids: set[str] = field(default_factory=set)
    activations_of: dict[str, int] = field(default_factory=dict)


def change_order(
    rng: random.Random, source: str, order_id: str, target: str
) -> ful.FulfillOrderRequest:
    """A change order on `target`: add seats, renew, both in one line, or both as two lines."""
    request = ful.FulfillOrderRequest(
        source=source, order_id=order_id, customer=ful.Customer(customer_id="cust-1")
    )
    kind = rng.choice(("seats", "renew", "renew-plus-seat", "two-lines"))
    if kind == "seats":
        request.lines.add(sku_id="SEAT", quantity=rng.randint(1, 3), entitlement_id=target)
    elif kind == "renew":
        request.lines.add(sku_id="RENEW-1Y", quantity=1, entitlement_id=target)
    elif kind == "renew-plus-seat":
        request.lines.add(sku_id="RENEW-PLUS-SEAT", quantity=1, entitlement_id=target)
    else:
        request.lines.add(sku_id="RENEW-1Y", quantity=1, entitlement_id=target)
        request.lines.add(sku_id="SEAT", quantity=rng.randint(1, 2), entitlement_id=target)
    return request


async def writer(
    number: int,
    orders: int,
    fulfillment: Fulfillment,
    licensing: Licensing | None,
    auth: Metadata,
    written: Written,
) -> None:
    """Fulfil `orders` orders one after another: creates, and changes of entitlements made
    earlier by any writer; with `licensing`, now and then a seat taken on one of its own."""
    rng = random.Random(1000 + number)
    source = f"writer-{number}"
    own: list[ful.Entitlement] = []
    for index in range(orders):
        order_id = f"w{number}-{index}"
        if len(written.entitlements) < WRITERS or rng.random() < 0.35:
            reference = f"crm:{order_id}" if rng.random() < 0.5 else ""
            request = order(
                order_id, "SUB-3", quantity=rng.randint(1, 2), reference=reference, source=source
            )
        else:
            target = rng.choice(written.entitlements).entitlement_id
            request = change_order(rng, source, order_id, target)
        response = await fulfillment.FulfillOrder(request, metadata=auth)
        assert not response.replayed
        written.orders.add((source, order_id))
        written.events += sum(len(r.operations) for r in response.order.results)
        if request.lines[0].sku_id == "SUB-3":
            written.entitlements.append(response.entitlements[0])
            own.append(response.entitlements[0])
        if licensing is not None and rng.random() < 0.15:
            await take_a_seat(licensing, rng, own, f"device-{order_id}", written)


async def take_a_seat(
    licensing: Licensing,
    rng: random.Random,
    own: Sequence[ful.Entitlement],
    fingerprint: str,
    written: Written,
) -> None:
    free = [e for e in own if written.activations_of.get(e.entitlement_id, 0) < SEATS_PER_UNIT]
    if not free:
        return
    entitlement = rng.choice(free)
    activation_id = await activate(licensing, entitlement.license_key, fingerprint)
    written.activations_of[entitlement.entitlement_id] = (
        written.activations_of.get(entitlement.entitlement_id, 0) + 1
    )
    written.activation_ids.add(activation_id)
    written.events += 1


async def check_watcher_saw_the_database(
    db: AsyncEngine, watcher: Watcher, written: Written
) -> None:
    rows = await rows_in_database(db)
    assert [r.sequence for r in rows] == list(range(1, len(rows) + 1))
    assert len(rows) == written.events
    assert {(r.order_source, r.order_id) for r in rows if r.order_id} == written.orders
    assert {r.activation_id for r in rows if r.activation_id} == written.activation_ids
    assert [row_of(e) for e in watcher.events] == rows
    assert all(e.entitlement.entitlement_id == e.entitlement_id for e in watcher.events)
    # Every event carries the entitlement as it stood then: seats only grow here, and
    # the last event of each entitlement shows the seats it has now.
    seats_then: dict[str, list[int]] = {}
    for event in watcher.events:
        seats_then.setdefault(event.entitlement_id, []).append(event.entitlement.seats)
    assert all(seats == sorted(seats) for seats in seats_then.values())
    assert {e: seats[-1] for e, seats in seats_then.items()} == await seats_in_database(db)


@pytest.mark.usefixtures("skus")
async def test_resuming_watcher_sees_every_event_of_concurrent_writers_once_in_order(
    fulfillment_stub: Fulfillment,
    licensing_stub: Licensing,
    tokens: Tokens,
    db: AsyncEngine,
) -> None:
    watcher = Watcher(fulfillment_stub, tokens("read"), random.Random(20240611), longest=40)
    written = Written()
    async with watching(watcher) as task:
        await asyncio.gather(
            *(
                writer(
                    number,
                    ORDERS_PER_WRITER,
                    fulfillment_stub,
                    licensing_stub,
                    tokens("fulfill"),
                    written,
                )
                for number in range(WRITERS)
            )
        )
        await watcher.follow_until(task, await max_sequence(db))
    assert len(written.orders) == WRITERS * ORDERS_PER_WRITER
    assert written.activation_ids, "no seat was taken: the mix lost its activations"
    assert watcher.connections >= 10, "the watcher hardly reconnected"
    await check_watcher_saw_the_database(db, watcher, written)


@contextlib.asynccontextmanager
async def other_server(cwd: Path, database_url: str) -> AsyncIterator[ServerProcess]:
    """`keyturn serve` in a child process on the same database (already migrated)."""
    async with serving(cwd, server_settings(database_url)) as process:
        yield process


@contextlib.asynccontextmanager
async def own_server(ctx: AppContext) -> AsyncIterator[grpc.aio.Channel]:
    server = KeyturnServer(ctx, "127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield channel
    finally:
        await server.stop(grace=1.0)


async def test_watcher_finds_events_written_by_another_server_process(
    database_url: str, tokens: Tokens, db: AsyncEngine, tmp_path: Path
) -> None:
    """The watcher's server writes nothing: every event reaches it by polling the database."""
    ctx = await build_context(settings_for(database_url, watch_poll_seconds=0.05))
    async with (
        own_server(ctx) as watcher_channel,
        other_server(tmp_path, database_url) as other,
        grpc.aio.insecure_channel(other.address) as writer_channel,
    ):
        await put_catalog(
            catalog_pb2_grpc.CatalogServiceStub(writer_channel), tokens("catalog"), *SKUS
        )
        watcher = Watcher(
            Fulfillment(watcher_channel), tokens("read"), random.Random(77), longest=8
        )
        written = Written()
        async with watching(watcher) as task:
            await asyncio.gather(
                *(
                    writer(
                        number,
                        OTHER_PROCESS_ORDERS_PER_WRITER,
                        Fulfillment(writer_channel),
                        Licensing(writer_channel),
                        tokens("fulfill"),
                        written,
                    )
                    for number in range(WRITERS)
                )
            )
            await watcher.follow_until(task, await max_sequence(db))
    assert len(written.orders) == WRITERS * OTHER_PROCESS_ORDERS_PER_WRITER
    assert watcher.connections >= 3, "the watcher hardly reconnected"
    await check_watcher_saw_the_database(db, watcher, written)


REPLICAS = 3
REPLICA_ORDERS_PER_WRITER = 40


async def test_writers_on_three_replicas_and_a_watcher_hopping_between_them(
    database_url: str, tokens: Tokens, db: AsyncEngine, tmp_path: Path
) -> None:
    """Concurrent writers, each on its own `keyturn serve` replica of one database, and a
    watcher that reconnects at random points to a random replica: every event exactly
    once, in the database's one order."""
    async with contextlib.AsyncExitStack() as stack:
        replicas = [
            await stack.enter_async_context(other_server(tmp_path, database_url))
            for _ in range(REPLICAS)
        ]
        channels = [
            await stack.enter_async_context(grpc.aio.insecure_channel(r.address)) for r in replicas
        ]
        await put_catalog(
            catalog_pb2_grpc.CatalogServiceStub(channels[0]), tokens("catalog"), *SKUS
        )
        watcher = Watcher(
            [Fulfillment(c) for c in channels], tokens("read"), random.Random(31), longest=12
        )
        written = Written()
        async with watching(watcher) as task:
            await asyncio.gather(
                *(
                    writer(
                        number,
                        REPLICA_ORDERS_PER_WRITER,
                        Fulfillment(channels[number % REPLICAS]),
                        Licensing(channels[number % REPLICAS]),
                        tokens("fulfill"),
                        written,
                    )
                    for number in range(WRITERS)
                )
            )
            await watcher.follow_until(task, await max_sequence(db))
    assert len(written.orders) == WRITERS * REPLICA_ORDERS_PER_WRITER
    assert written.activation_ids, "no seat was taken: the mix lost its activations"
    assert watcher.connections >= 10, "the watcher hardly reconnected"
    await check_watcher_saw_the_database(db, watcher, written)


async def test_live_tail_receives_an_order_fulfilled_after_it_connected(
    database_url: str, tokens: Tokens, db: AsyncEngine
) -> None:
    """Commits of the watcher's own server wake it; polling is set to its slowest (10 s),
    so it is not what delivers the event (WAIT_S only bounds a hang)."""
    ctx = await build_context(settings_for(database_url, watch_poll_seconds=10))
    async with own_server(ctx) as channel:
        await put_catalog(catalog_pb2_grpc.CatalogServiceStub(channel), tokens("catalog"), *SKUS)
        stub = Fulfillment(channel)
        for n in (1, 2):
            await stub.FulfillOrder(order(f"o-{n}", "SUB-3"), metadata=tokens("fulfill"))
        call = watch(stub, tokens("read"), 0)
        other = watch(stub, tokens("read"), 2)  # a second watcher, with no backlog to read
        try:
            backlog = [await next_event(call) for _ in range(2)]
            assert [e.order_id for e in backlog] == ["o-1", "o-2"]
            made = await stub.FulfillOrder(order("o-3", "SUB-3"), metadata=tokens("fulfill"))
            live = await next_event(call)
            assert await next_event(other) == live
        finally:
            call.cancel()
            other.cancel()
    assert (live.sequence, live.type, live.order_source, live.order_id) == (
        3,
        ful.ENTITLEMENT_EVENT_TYPE_CREATED,
        "test",
        "o-3",
    )
    assert live.entitlement_id == made.entitlements[0].entitlement_id
    assert [row_of(e) for e in [*backlog, live]] == await rows_in_database(db)


@pytest.mark.usefixtures("skus")
async def test_resume_from_zero_from_the_middle_and_from_the_last_sequence(
    fulfillment_stub: Fulfillment, tokens: Tokens, db: AsyncEngine
) -> None:
    for n in (1, 2, 3):
        await fulfillment_stub.FulfillOrder(order(f"o-{n}", "SUB-3"), metadata=tokens("fulfill"))
    from_zero = watch(fulfillment_stub, tokens("read"), 0)
    from_two = watch(fulfillment_stub, tokens("read"), 2)
    from_last = watch(fulfillment_stub, tokens("read"), 3)
    try:
        first = [await next_event(from_zero) for _ in range(3)]
        assert [(e.sequence, e.order_id) for e in first] == [(1, "o-1"), (2, "o-2"), (3, "o-3")]
        assert (await next_event(from_two)).sequence == 3
        # from_last has nothing to send until the next commit: its first event is the new one.
        await fulfillment_stub.FulfillOrder(order("o-4", "SUB-3"), metadata=tokens("fulfill"))
        fourth = await next_event(from_last)
        assert (fourth.sequence, fourth.order_id) == (4, "o-4")
        assert (await next_event(from_two)).sequence == 4
        assert (await next_event(from_zero)).sequence == 4
    finally:
        for call in (from_zero, from_two, from_last):
            call.cancel()
    assert [r.sequence for r in await rows_in_database(db)] == [1, 2, 3, 4]


@pytest.mark.usefixtures("skus")
async def test_after_sequence_zero_on_an_empty_log_waits_for_the_first_event(
    fulfillment_stub: Fulfillment, tokens: Tokens
) -> None:
    call = watch(fulfillment_stub, tokens("read"), 0)
    try:
        await fulfillment_stub.FulfillOrder(order("o-1", "SUB-3"), metadata=tokens("fulfill"))
        event = await next_event(call)
    finally:
        call.cancel()
    assert (event.sequence, event.order_id) == (1, "o-1")


@pytest.mark.usefixtures("skus")
async def test_backlog_longer_than_one_read_batch_streams_whole_then_follows(
    catalog_stub: catalog_pb2_grpc.CatalogServiceStub,
    fulfillment_stub: Fulfillment,
    tokens: Tokens,
    db: AsyncEngine,
) -> None:
    """1,201 events: more than two of the server's reads (500 at a time)."""
    await put_catalog(catalog_stub, tokens("catalog"), change_sku("SEAT-X16", *[ADD_SEAT] * 16))
    created = await fulfillment_stub.FulfillOrder(order("o-0", "SUB-3"), metadata=tokens("fulfill"))
    target = created.entitlements[0].entitlement_id
    for n in range(1, 6):  # 5 orders of 15 lines of 16 operations
        request = change(f"o-{n}", "SEAT-X16", target)
        request.lines.extend([request.lines[0]] * 14)
        await fulfillment_stub.FulfillOrder(request, metadata=tokens("fulfill"))
    from_zero = watch(fulfillment_stub, tokens("read"), 0)
    from_boundary = watch(fulfillment_stub, tokens("read"), 500)
    try:
        backlog = [await next_event(from_zero) for _ in range(1201)]
        assert [row_of(e) for e in backlog] == await rows_in_database(db)
        assert (await next_event(from_boundary)).sequence == 501
        await fulfillment_stub.FulfillOrder(order("after", "SUB-3"), metadata=tokens("fulfill"))
        after = await next_event(from_zero)
    finally:
        from_zero.cancel()
        from_boundary.cancel()
    assert (after.sequence, after.order_id) == (1202, "after")
    assert backlog[-1].entitlement.seats == SEATS_PER_UNIT + 1200


@pytest.mark.usefixtures("skus")
async def test_after_sequence_out_of_range(fulfillment_stub: Fulfillment, tokens: Tokens) -> None:
    failure = await watch_failure(fulfillment_stub, tokens("read"), 1)
    assert (failure.code, failure.reason, failure.metadata) == (
        grpc.StatusCode.OUT_OF_RANGE,
        "SEQUENCE_OUT_OF_RANGE",
        {"last_sequence": "0"},
    )
    for n in (1, 2):
        await fulfillment_stub.FulfillOrder(order(f"o-{n}", "SUB-3"), metadata=tokens("fulfill"))
    for beyond in (3, 2**62):
        failure = await watch_failure(fulfillment_stub, tokens("read"), beyond)
        assert (failure.code, failure.reason, failure.metadata) == (
            grpc.StatusCode.OUT_OF_RANGE,
            "SEQUENCE_OUT_OF_RANGE",
            {"last_sequence": "2"},
        )


async def test_negative_after_sequence_is_invalid(
    fulfillment_stub: Fulfillment, tokens: Tokens
) -> None:
    for negative in (-1, -(2**63)):
        failure = await watch_failure(fulfillment_stub, tokens("read"), negative)
        assert (failure.code, failure.reason, failure.fields, failure.metadata) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST",
            ["after_sequence"],
            {"field": "after_sequence"},
        )


async def test_watching_needs_the_read_scope(fulfillment_stub: Fulfillment, tokens: Tokens) -> None:
    for scope in ("fulfill", "catalog"):
        failure = await watch_failure(fulfillment_stub, tokens(scope), 0)
        assert (failure.code, failure.reason, failure.metadata) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "INSUFFICIENT_SCOPE",
            {"required_scope": "read"},
        )
    failure = await watch_failure(fulfillment_stub, (), 0)
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "MISSING_CREDENTIALS",
    )


@pytest.mark.usefixtures("skus")
async def test_each_event_carries_the_entitlement_as_it_stood_after_the_change(
    fulfillment_stub: Fulfillment, licensing_stub: Licensing, tokens: Tokens
) -> None:
    auth = tokens("fulfill")
    created = (
        await fulfillment_stub.FulfillOrder(order("o-1", "SUB-3"), metadata=auth)
    ).entitlements[0]
    ent = created.entitlement_id
    await fulfillment_stub.FulfillOrder(change("o-2", "SEAT", ent, quantity=2), metadata=auth)
    renewed = (
        await fulfillment_stub.FulfillOrder(change("o-3", "RENEW-1Y", ent), metadata=auth)
    ).entitlements[0]
    activation_id = await activate(licensing_stub, created.license_key, "device-0001")
    await fulfillment_stub.FulfillOrder(change("o-4", "SEAT", ent), metadata=auth)
    await fulfillment_stub.FulfillOrder(change("o-5", "UPGRADE-PRO", ent), metadata=auth)
    await fulfillment_stub.FulfillOrder(change("o-6", "CANCEL", ent), metadata=auth)

    call = watch(fulfillment_stub, tokens("read"), 0)
    try:
        streamed = [await next_event(call) for _ in range(7)]
    finally:
        call.cancel()
    (listed,) = await history(fulfillment_stub, tokens("read"), ent, page_size=0)
    assert list(listed.events) == streamed

    def projects(e: ful.Entitlement) -> int:
        return next(f.limit for f in e.features if f.name == "projects")

    then = [
        (
            ful.EntitlementEventType.Name(e.type).removeprefix("ENTITLEMENT_EVENT_TYPE_"),
            e.order_id,
            e.activation_id,
            e.entitlement.seats,
            e.entitlement.seats_in_use,
            e.entitlement.edition_id,
            projects(e.entitlement),
            e.entitlement.end_time == created.end_time,
            ful.EntitlementStatus.Name(e.entitlement.status).removeprefix("ENTITLEMENT_STATUS_"),
        )
        for e in streamed
    ]
    act = activation_id
    assert then == [
        ("CREATED", "o-1", "", 3, 0, "standard", 10, True, "ACTIVE"),
        ("SEATS_CHANGED", "o-2", "", 5, 0, "standard", 10, True, "ACTIVE"),
        ("RENEWED", "o-3", "", 5, 0, "standard", 10, False, "ACTIVE"),
        ("SEAT_ACTIVATED", "", act, 5, 1, "standard", 10, False, "ACTIVE"),
        ("SEATS_CHANGED", "o-4", "", 6, 1, "standard", 10, False, "ACTIVE"),
        ("EDITION_CHANGED", "o-5", "", 6, 1, "pro", 100, False, "ACTIVE"),
        ("CANCELLED", "o-6", "", 6, 1, "pro", 100, False, "CANCELLED"),
    ]
    assert all(e.entitlement.end_time == renewed.end_time for e in streamed[2:])
    assert all(e.entitlement.update_time == e.create_time for e in streamed[:3] + streamed[4:])
    assert all(e.entitlement.license_key == "" for e in streamed)
    now = (
        await fulfillment_stub.GetEntitlement(
            ful.GetEntitlementRequest(entitlement_id=ent), metadata=tokens("read")
        )
    ).entitlement
    assert (now.seats, now.edition_id, now.seats_in_use, now.status) == (
        6,
        "pro",
        1,
        ful.ENTITLEMENT_STATUS_CANCELLED,
    )


@pytest.mark.usefixtures("skus")
async def test_events_show_external_references_as_they_stood(
    fulfillment_stub: Fulfillment, tokens: Tokens
) -> None:
    """A reference attached by a later order is not part of the entitlement as it stood
    at earlier events."""
    auth = tokens("fulfill")
    ent = (
        await fulfillment_stub.FulfillOrder(
            order("o-1", "SUB-3", reference="stripe:sub_1"), metadata=auth
        )
    ).entitlements[0]
    await fulfillment_stub.FulfillOrder(
        change("o-2", "SEAT", ent.entitlement_id, reference="crm:opp_2"), metadata=auth
    )
    (page,) = await history(fulfillment_stub, tokens("read"), ent.entitlement_id, page_size=0)
    call = watch(fulfillment_stub, tokens("read"), 0)
    try:
        streamed = [await next_event(call) for _ in range(2)]
    finally:
        call.cancel()
    assert streamed == list(page.events)
    references = [sorted(e.entitlement.external_references) for e in page.events]
    assert references == [["stripe:sub_1"], ["crm:opp_2", "stripe:sub_1"]]


@pytest.mark.usefixtures("skus")
async def test_list_entitlement_events_pages_one_history_in_order(
    fulfillment_stub: Fulfillment, tokens: Tokens, db: AsyncEngine
) -> None:
    auth = tokens("fulfill")
    first = await fulfillment_stub.FulfillOrder(order("a-1", "SUB-3"), metadata=auth)
    second = await fulfillment_stub.FulfillOrder(order("b-1", "SUB-3"), metadata=auth)
    a, b = first.entitlements[0].entitlement_id, second.entitlements[0].entitlement_id
    # The two histories interleave in the global sequence.
    for order_id, sku_id, target in [
        ("a-2", "SEAT", a),
        ("b-2", "SEAT", b),
        ("a-3", "RENEW-1Y", a),
        ("a-4", "SEAT", a),
        ("b-3", "RENEW-1Y", b),
        ("a-5", "UPGRADE-PRO", a),
    ]:
        await fulfillment_stub.FulfillOrder(change(order_id, sku_id, target), metadata=auth)

    pages = await history(fulfillment_stub, tokens("read"), a, page_size=2)
    assert [[e.order_id for e in p.events] for p in pages] == [
        ["a-1", "a-2"],
        ["a-3", "a-4"],
        ["a-5"],
    ]
    assert [bool(p.next_page_token) for p in pages] == [True, True, False]
    assert [row_of(e) for p in pages for e in p.events] == await rows_in_database(db, a)
    assert [e.sequence for p in pages for e in p.events] == [1, 3, 5, 6, 8]

    (whole,) = await history(fulfillment_stub, tokens("read"), b, page_size=3)
    assert whole.next_page_token == ""
    assert [e.order_id for e in whole.events] == ["b-1", "b-2", "b-3"]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fulfillment_stub.ListEntitlementEvents(
            ful.ListEntitlementEventsRequest(
                entitlement_id=b, page_size=2, page_token=pages[0].next_page_token
            ),
            metadata=tokens("read"),
        )
    failure = failure_of(caught.value)
    assert (failure.code, failure.reason, failure.fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        ["page_token"],
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fulfillment_stub.ListEntitlementEvents(
            ful.ListEntitlementEventsRequest(entitlement_id=a, page_size=-1),
            metadata=tokens("read"),
        )
    failure = failure_of(caught.value)
    assert (failure.code, failure.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_size"])

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fulfillment_stub.ListEntitlementEvents(
            ful.ListEntitlementEventsRequest(entitlement_id="ent_nope"), metadata=tokens("read")
        )
    failure = failure_of(caught.value)
    assert (failure.code, failure.reason, failure.metadata) == (
        grpc.StatusCode.NOT_FOUND,
        "ENTITLEMENT_NOT_FOUND",
        {"entitlement_id": "ent_nope"},
    )
