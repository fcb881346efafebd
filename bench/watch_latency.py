"""WatchEntitlementEvents: commit-to-watcher latency and backlog catch-up rate.

    .venv/bin/python bench/watch_latency.py [--orders 200] [--poll-orders 40]
                                            [--backlog 5000] [--poll-seconds 0.5]

Runs a real server in this process (server A) and `keyturn serve` as a child
process (server B) on the same database: SQLite in a temporary directory by
default, or the database of KEYTURN_DATABASE_URL (postgresql+asyncpg://...; it
is migrated and written to, so use a scratch database; KEYTURN_SECRET_KEY is
used when set and must then be the one the database was started with).

Figures printed:

- commit -> watcher, same process: orders fulfilled one by one on A, watched on
  A; the commit bell wakes the stream.
- commit -> watcher, other process: orders fulfilled one by one on A, watched on
  B, which finds them only by reading the database every --poll-seconds (each
  order waits a random fraction of that period first, so commits fall anywhere
  in B's polling cycle).
- backlog catch-up: --backlog events written first, then streamed from the start
  of that backlog by a new watcher on A and on B: events per second.

The commit instant is taken in this process, on server A's engine: the moment
the connection of the transaction that wrote the events goes back to the
pool, right after its COMMIT returned (and before the server rings its bell).
The watcher's instant is when its `read()` returns the event. Both clocks are
this process's `time.perf_counter`. The watchers' client runs in the same event
loop as server A.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.context import AppContext
from keyturn.server.app.tokens import create_token
from keyturn.server.bootstrap import build_context
from keyturn.server.config import Settings

PRODUCT_ID = "bench-cad"
NEW_SKU = "BENCH-NEW"
SEATS_SKU = "BENCH-SEATS-X10"  # ten add_seats operations: ten events per order line
LINES_PER_ORDER = 100
BACKLOG_TARGETS = 10
WAIT_S = 60.0
Metadata = tuple[tuple[str, str], ...]
Fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub


class CommitProbe:
    """When server A last committed a transaction that wrote events (see module doc)."""

    FLAG = "bench_wrote_events"

    def __init__(self, engine: AsyncEngine) -> None:
        self.committed_at: float | None = None
        sync_engine = engine.sync_engine

        @event.listens_for(sync_engine, "after_cursor_execute")
        def _wrote(conn: Connection, _cursor: Any, statement: str, *_args: Any) -> None:
            if statement.lstrip().upper().startswith("INSERT INTO ENTITLEMENT_EVENTS"):
                conn.info[self.FLAG] = True

        @event.listens_for(sync_engine.pool, "checkin")
        def _returned(_dbapi_connection: Any, record: Any) -> None:
            if record is not None and record.info.pop(self.FLAG, False):
                self.committed_at = time.perf_counter()

    def take(self) -> float:
        assert self.committed_at is not None, "no commit with events was seen on server A"
        committed, self.committed_at = self.committed_at, None
        return committed


@dataclass(frozen=True)
class Figures:
    label: str
    latencies_ms: list[float]


def percentile(values: Sequence[float], p: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def product() -> cat.Product:
    return cat.Product(
        product_id=PRODUCT_ID,
        display_name="Bench CAD",
        editions=[
            cat.Edition(
                edition_id="standard",
                display_name="Standard",
                features=[cat.Feature(name="export-pdf")],
            )
        ],
    )


def skus() -> list[cat.Sku]:
    create = cat.Operation(
        create=cat.CreateOperation(
            edition_id="standard",
            seats_per_unit=1,
            term="P1Y",
            license_model=cat.LICENSE_MODEL_FLOATING,
            lease_duration=duration_pb2.Duration(seconds=900),
            dispatch=cat.DISPATCH_NONE,
        )
    )
    add_seat = cat.Operation(add_seats=cat.AddSeatsOperation(seats_per_unit=1))
    return [
        cat.Sku(sku_id=NEW_SKU, product_id=PRODUCT_ID, display_name="new", operations=[create]),
        cat.Sku(
            sku_id=SEATS_SKU,
            product_id=PRODUCT_ID,
            display_name="ten single seats",
            operations=[add_seat] * 10,
        ),
    ]


def new_order(order_id: str) -> ful.FulfillOrderRequest:
    return ful.FulfillOrderRequest(
        source="bench",
        order_id=order_id,
        customer=ful.Customer(customer_id="bench", name="Bench", email="bench@example.com"),
        lines=[ful.OrderLine(sku_id=NEW_SKU, quantity=1)],
    )


async def last_sequence(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        query = text("SELECT coalesce(max(sequence), 0) FROM entitlement_events")
        return int((await connection.execute(query)).scalar_one())


async def follow(
    stub: Fulfillment,
    auth: Metadata,
    after: int,
    into: asyncio.Queue[tuple[float, ful.EntitlementEvent]],
) -> None:
    """Put every event with the instant it was read."""
    call = stub.WatchEntitlementEvents(
        ful.WatchEntitlementEventsRequest(after_sequence=after), metadata=auth
    )
    try:
        while True:
            response = await call.read()
            now = time.perf_counter()
            if not isinstance(response, ful.WatchEntitlementEventsResponse):
                raise RuntimeError("the change stream ended")
            into.put_nowait((now, response.event))
    finally:
        call.cancel()


async def latencies(
    label: str,
    key: str,
    writer: Fulfillment,
    watcher: Fulfillment,
    tokens: dict[str, Metadata],
    engine: AsyncEngine,
    probe: CommitProbe,
    orders: int,
    run_id: str,
    jitter_s: float,
) -> Figures:
    """Fulfil `orders` orders one by one; each one's commit-to-watcher latency."""
    received: asyncio.Queue[tuple[float, ful.EntitlementEvent]] = asyncio.Queue()
    reader = asyncio.create_task(
        follow(watcher, tokens["read"], await last_sequence(engine), received)
    )
    rng = random.Random(7)
    found: list[float] = []
    try:
        for n in range(orders):
            if jitter_s:
                await asyncio.sleep(rng.uniform(0, jitter_s))
            order_id = f"{run_id}-{key}-{n}"
            probe.committed_at = None
            await writer.FulfillOrder(new_order(order_id), metadata=tokens["fulfill"])
            got = asyncio.ensure_future(received.get())
            done, _ = await asyncio.wait(
                {got, reader}, timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED
            )
            if reader in done:
                reader.result()
            if got not in done:
                got.cancel()
                raise RuntimeError(f"{label}: order {order_id} not seen within {WAIT_S} s")
            seen_at, seen = got.result()
            if seen.order_id != order_id:
                raise RuntimeError(f"{label}: expected {order_id}, the stream sent {seen.order_id}")
            found.append(1000 * (seen_at - probe.take()))
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    return Figures(label, found)


async def write_backlog(
    writer: Fulfillment, tokens: dict[str, Metadata], events: int, run_id: str
) -> None:
    """About `events` events in orders of 100 lines, ten events a line, on ten entitlements."""
    targets = []
    for n in range(BACKLOG_TARGETS):
        made = await writer.FulfillOrder(
            new_order(f"{run_id}-backlog-target-{n}"), metadata=tokens["fulfill"]
        )
        targets.append(made.entitlements[0].entitlement_id)
    written = BACKLOG_TARGETS
    number = 0
    while written < events:
        lines = min(LINES_PER_ORDER, max(1, (events - written) // 10))
        request = new_order(f"{run_id}-backlog-{number}")
        del request.lines[:]
        for i in range(lines):
            request.lines.add(
                sku_id=SEATS_SKU, quantity=1, entitlement_id=targets[i % len(targets)]
            )
        await writer.FulfillOrder(request, metadata=tokens["fulfill"])
        written += 10 * lines
        number += 1


async def catch_up(stub: Fulfillment, auth: Metadata, after: int, count: int) -> float:
    """Seconds a new watcher takes to read `count` events after `after`."""
    started = time.perf_counter()
    call = stub.WatchEntitlementEvents(
        ful.WatchEntitlementEventsRequest(after_sequence=after), metadata=auth
    )
    try:
        for _ in range(count):
            response = await asyncio.wait_for(call.read(), WAIT_S)
            if not isinstance(response, ful.WatchEntitlementEventsResponse):
                raise RuntimeError("the change stream ended")
        return time.perf_counter() - started
    finally:
        call.cancel()


@dataclass
class ChildServer:
    process: asyncio.subprocess.Process
    address: str


@contextlib.asynccontextmanager
async def child_server(settings: dict[str, str], log: Path) -> AsyncIterator[ChildServer]:
    """`keyturn serve` on a free port; its log goes to `log`."""
    script = Path(sys.executable).parent / "keyturn"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "keyturn.server.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")}
    env.update(settings)
    with log.open("w") as log_file:
        process = await asyncio.create_subprocess_exec(
            *command,
            "serve",
            "--listen",
            "127.0.0.1:0",
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
        )
        try:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), WAIT_S)
            prefix = b"keyturn listening on "
            if not line.startswith(prefix):
                raise RuntimeError(f"keyturn serve did not start (see {log}): {line!r}")
            yield ChildServer(process, line[len(prefix) :].decode().strip())
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), WAIT_S)
                except TimeoutError:
                    process.kill()
                    await process.wait()


def print_report(
    backend: str,
    poll_seconds: float,
    figures: list[Figures],
    backlog: int,
    rates: list[tuple[str, float]],
) -> None:
    print(f"Keyturn change stream on {backend}; server B polls every {poll_seconds} s")
    print()
    print(f"{'commit -> watcher latency':<40} {'n':>5} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9}")
    for f in figures:
        values = f.latencies_ms
        print(
            f"{f.label:<40} {len(values):>5} {percentile(values, 50):>9.2f}"
            f" {percentile(values, 95):>9.2f} {max(values):>9.2f}"
        )
    print()
    print(f"{'backlog catch-up':<40} {'events':>7} {'seconds':>9} {'events/s':>9}")
    for label, seconds in rates:
        print(f"{label:<40} {backlog:>7} {seconds:>9.2f} {backlog / seconds:>9.0f}")


async def run(args: argparse.Namespace, workdir: Path) -> None:
    url = os.environ.get("KEYTURN_DATABASE_URL") or f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    secret = os.environ.get("KEYTURN_SECRET_KEY") or secrets.token_urlsafe(48)
    settings = Settings(
        database_url=url, secret_key=secret, listen="127.0.0.1:0", log_level="WARNING"
    )
    ctx: AppContext = await build_context(settings)
    probe = CommitProbe(ctx.store.engine)
    server = KeyturnServer(ctx, "127.0.0.1:0")
    await server.start()
    backend = ctx.store.dialect
    child_settings = {
        "KEYTURN_DATABASE_URL": url,
        "KEYTURN_SECRET_KEY": secret,
        "KEYTURN_AUTO_MIGRATE": "false",
        "KEYTURN_WATCH_POLL_SECONDS": str(args.poll_seconds),
        "KEYTURN_LOG_LEVEL": "WARNING",
    }
    run_id = secrets.token_hex(4)
    try:
        tokens: dict[str, Metadata] = {}
        for scope in ("catalog", "fulfill", "read"):
            _, bearer = await create_token(ctx, {scope}, f"bench {scope}")
            tokens[scope] = (("authorization", f"Bearer {bearer}"),)
        async with (
            grpc.aio.insecure_channel(server.address) as channel_a,
            child_server(child_settings, workdir / "server-b.log") as child,
            grpc.aio.insecure_channel(child.address) as channel_b,
        ):
            catalog = catalog_pb2_grpc.CatalogServiceStub(channel_a)
            await catalog.PutProduct(
                cat.PutProductRequest(product=product()), metadata=tokens["catalog"]
            )
            for sku in skus():
                await catalog.PutSku(cat.PutSkuRequest(sku=sku), metadata=tokens["catalog"])
            server_a, server_b = Fulfillment(channel_a), Fulfillment(channel_b)
            engine = ctx.store.engine
            figures = [
                await latencies(
                    "same process (commit bell)",
                    "bell",
                    server_a,
                    server_a,
                    tokens,
                    engine,
                    probe,
                    args.orders,
                    run_id,
                    jitter_s=0.0,
                ),
                await latencies(
                    f"other process (poll every {args.poll_seconds} s)",
                    "poll",
                    server_a,
                    server_b,
                    tokens,
                    engine,
                    probe,
                    args.poll_orders,
                    run_id,
                    jitter_s=args.poll_seconds,
                ),
            ]
            start = await last_sequence(engine)
            await write_backlog(server_a, tokens, args.backlog, run_id)
            backlog = await last_sequence(engine) - start
            rates = [
                (
                    "watcher on server A (in this process)",
                    await catch_up(server_a, tokens["read"], start, backlog),
                ),
                (
                    "watcher on server B (other process)",
                    await catch_up(server_b, tokens["read"], start, backlog),
                ),
            ]
    finally:
        await server.stop(grace=1.0)
    where = "a temporary file" if url.startswith("sqlite") else make_url(url).render_as_string()
    print_report(f"{backend} ({where})", args.poll_seconds, figures, backlog, rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--orders", type=int, default=200, help="orders for the in-process case")
    parser.add_argument("--poll-orders", type=int, default=40, help="orders for the poll case")
    parser.add_argument("--backlog", type=int, default=5000, help="events of the backlog")
    parser.add_argument("--poll-seconds", type=float, default=0.5, help="server B's poll period")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="keyturn-bench-") as workdir:
        asyncio.run(run(args, Path(workdir)))


if __name__ == "__main__":
    main()
