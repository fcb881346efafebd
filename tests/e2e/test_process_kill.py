"""`kill -9` of `keyturn serve` under activation load: nothing it acknowledged is lost.

Eight tasks activate and release devices through the Python client
(support/activation_load.py) on a 20-seat floating entitlement, more than it has, so
seats are refused too. The server is killed with SIGKILL once it has answered a number
of calls drawn at random, started again on the same port, and the load goes on until
the new process has answered more. Then, with plain SQL (support/durability.py): every
acknowledged lease is the stored activation's (id, jti, entitlement, fingerprint) and
every acknowledged release is stored; each kept seat count equals what it counts, and
no entitlement has more live seats than it has, at the end or at any instant of the run
(a monitor counts them all along); every activation and release has its one event, the
sequences are 1..N, and the change stream of a live process shows exactly that log,
also to a stream resumed from the last event that a stream cut off by the kill had
shown. SQLite passes `PRAGMA integrity_check` right after the kill and at the end.
Right after the restart, health is SERVING and an activation is answered at once (no
retry); the time from the kill to that answer is printed.

On PostgreSQL events are numbered after commit (store/event_numbering.py). The test
takes the numbering lock before the kill, so the events committed just before it are
still unnumbered when the process dies: a process started later must number them. The
killed process's own numbering statement would be left waiting for that lock inside
PostgreSQL and run once it is free (PostgreSQL notices a client gone only when it next
writes to it); the test database sets `client_connection_check_interval`, so
PostgreSQL ends that statement, and what numbers the events is the new process.

With `--workers 2` (PostgreSQL) one worker is killed: the supervisor starts another,
and no call on the connections of the other worker fails meanwhile.

Each run prints its figures on one `FAULTS` line (support/durability.faults_line).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
from sqlalchemy.engine import make_url

from keyturn.client import AsyncLease
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.server.app.context import AppContext
from keyturn.server.store.database import database_dsn

from conftest import Tokens, server_settings
from support.activation_load import OK, ActivationLoad, Ledger
from support.catalog import new_license
from support.durability import (
    all_kept_counts,
    event_log,
    faults_line,
    lost_writes,
    oversold,
    seat_event_mismatches,
    sequence_gaps,
    sqlite_integrity,
    unnumbered_events,
)
from support.readiness import serves
from support.seats import Monitor
from support.subprocess_server import ServerProcess, serving
from support.watch import Follower, read_events, watch
from support.workers import channel_to, listening_workers, worker_pids

SEATS = 20
PROBE_SEATS = 5  # a second entitlement: the first activation after a restart has a seat
TASKS = 8
HOLD = 3  # leases a task holds before it releases one: 8 x 3 > 20 seats
KILL_AFTER = (40, 160)  # answered calls before the kill, drawn in this range
AFTER_RESTART = 40  # calls answered after the restart before the load stops
SURVIVOR_ANSWERS = 20  # answers on the other worker's connections after a worker's kill
WAIT_S = 90.0
SETTINGS = {"KEYTURN_LOG_LEVEL": "WARNING", "KEYTURN_WATCH_POLL_SECONDS": "0.05"}
# Reconnect soon once the server is back (gRPC's default backoff starts at 1 s).
RECONNECT = (("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500))
# What a device may be told under these faults: no answer (the process died), no seat.
EXPECTED_FAILURES = {"UNAVAILABLE", "RESOURCE_EXHAUSTED"}
NUMBERING_LOCK: int = importlib.import_module(
    "keyturn.server.store.migrations.versions.0006_seat_counts_and_event_numbering"
).NUMBERING_LOCK

Fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub


@dataclass(frozen=True)
class Licenses:
    loaded: ful.Entitlement  # the entitlement under load
    probe: ful.Entitlement  # the one activated right after a restart


async def licenses(address: str, tokens: Tokens) -> Licenses:
    async with grpc.aio.insecure_channel(address) as channel:
        catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
        fulfillment = Fulfillment(channel)
        made = [
            await new_license(catalog, fulfillment, tokens("catalog"), tokens("fulfill"), seats)
            for seats in (SEATS, PROBE_SEATS)
        ]
    return Licenses(*made)


class Run:
    """The load, a seat monitor and a change stream on one server, stopped at the end."""

    def __init__(
        self,
        app: AppContext,
        address: str,
        channels: Sequence[grpc.aio.Channel],
        licensed: Licenses,
        tokens: Tokens,
    ) -> None:
        self.licensed = licensed
        self.load = ActivationLoad(
            address, channels, licensed.loaded.license_key, tasks=TASKS, hold=HOLD
        )
        self.monitor = Monitor(app, licensed.loaded.entitlement_id)
        self.follower = Follower(watch(Fulfillment(channels[0]), tokens("read"), 0))
        self._monitoring = asyncio.create_task(self.monitor.run())
        self._stopped = False
        self.load.start()

    @property
    def ledger(self) -> Ledger:
        return self.load.ledger

    async def answered(self, count: int, lane: int | None = None, since: float = 0.0) -> None:
        """Until `count` calls (on `lane`, started after `since`) were answered."""
        await self.load.wait_for(
            lambda ledger: (
                sum(
                    c.code == OK and lane in (None, c.lane) and c.started > since
                    for c in ledger.calls
                )
                >= count
            )
        )

    async def stop(self) -> None:
        """Stop the load (its calls in flight answered first), the monitor and the stream."""
        if self._stopped:
            return
        self._stopped = True
        self.monitor.stop()
        await self._monitoring
        await self.follower.close()
        await self.load.stop()


@contextlib.asynccontextmanager
async def running(
    app: AppContext,
    address: str,
    channels: Sequence[grpc.aio.Channel],
    licensed: Licenses,
    tokens: Tokens,
) -> AsyncIterator[Run]:
    run = Run(app, address, channels, licensed, tokens)
    try:
        yield run
    finally:
        await run.stop()


def acknowledge(ledger: Ledger, lease: AsyncLease, fingerprint: str) -> None:
    """A lease granted outside the load, checked with the load's."""
    ledger.leases[lease.activation_id] = lease
    ledger.fingerprints[lease.activation_id] = fingerprint


async def until(
    count: Callable[[], Awaitable[int]], holds: Callable[[int], bool], within_s: float = WAIT_S
) -> None:
    """Until `holds(await count())`, counted again as soon as it answers (bounded)."""
    async with asyncio.timeout(within_s):
        while not holds(await count()):
            pass


async def notice_dead_clients(database_url: str) -> None:
    """Sessions opened from now on: PostgreSQL ends the statement of a client gone
    (checked every 100 ms). A setting of the test's own database only."""
    name = make_url(database_url).database
    connection = await asyncpg.connect(database_dsn(database_url))
    try:
        await connection.execute(
            f'ALTER DATABASE "{name}" SET client_connection_check_interval = 100'
        )
    finally:
        await connection.close()


async def waiting_numberers(connection: asyncpg.Connection) -> int:
    """Sessions of this database waiting for the numbering lock."""
    return int(
        await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE '%keyturn_number_events%'"
        )
    )


@contextlib.asynccontextmanager
async def numbering_held(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """The events' numbering lock, held by the test for the block: no process numbers."""
    connection = await asyncpg.connect(database_dsn(database_url))
    try:
        await connection.execute("SELECT pg_advisory_lock($1)", NUMBERING_LOCK)
        yield connection
    finally:
        await connection.close()


async def kill_9(process: ServerProcess, run: Run) -> float:
    """SIGKILL, and the time it was sent once the process is gone. The seat monitor
    pauses until `run.monitor.resume()`: with no server, no seat can change."""
    killed_at = time.monotonic()
    process.signal(signal.SIGKILL)
    assert await process.await_exit(WAIT_S) == -signal.SIGKILL
    run.monitor.pause()
    return killed_at


def contiguous_from_1(seen: Sequence[ful.EntitlementEvent]) -> bool:
    return [e.sequence for e in seen] == list(range(1, len(seen) + 1))


def event_keys(events: Sequence[object]) -> list[tuple[int, str, str]]:
    return [(e.sequence, e.entitlement_id, e.activation_id) for e in events]  # type: ignore[attr-defined]


async def report(
    name: str,
    app: AppContext,
    run: Run,
    address: str,
    tokens: Tokens,
    fault: tuple[float, float],
    resumed_after: int,
    **figures: object,
) -> None:
    """Every check that holds after any of these faults; the figures printed first."""
    ledger = run.ledger
    codes = ledger.codes()
    lost = await lost_writes(app, ledger)
    over = max(await oversold(app), max(run.monitor.samples, default=0) - SEATS, 0)
    faults_line(
        name,
        faults=1,
        requests=len(ledger.during(*fault)),
        internal=codes["INTERNAL"] + codes["UNKNOWN"],
        lost=len(lost),
        oversold=over,
        calls=len(ledger.calls),
        **figures,
    )
    assert lost == []
    assert over == 0
    assert set(codes) - {OK} <= EXPECTED_FAILURES, codes
    assert len(run.monitor.samples) > 1, "the monitor hardly counted"

    log = await event_log(app)
    assert sequence_gaps(log) == []
    assert await seat_event_mismatches(app, log) == []
    kept = await all_kept_counts(app)
    assert {i: k for i, k in kept.items() if k.held != k.unlapsed} == {}
    # A live process's change stream shows exactly the log, from the start and from
    # where a stream cut off by the fault had got to.
    expected = event_keys(sorted(log, key=lambda e: e.sequence or 0))
    async with grpc.aio.insecure_channel(address) as channel:
        stub = Fulfillment(channel)
        assert event_keys(await read_events(stub, tokens("read"), 0, len(log))) == expected
        resumed = await read_events(stub, tokens("read"), resumed_after, len(log) - resumed_after)
    assert event_keys(resumed) == expected[resumed_after:]


async def test_kill_9_of_a_server_under_activation_load_loses_no_acknowledged_write(
    app: AppContext, database_url: str, tokens: Tokens, tmp_path: Path
) -> None:
    postgres = not database_url.startswith("sqlite")
    seed = random.randrange(1 << 32)
    kill_after = random.Random(seed).randint(*KILL_AFTER)
    if postgres:
        await notice_dead_clients(database_url)
    settings = server_settings(database_url, **SETTINGS)
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(serving(tmp_path, settings, workers=1))
        licensed = await licenses(first.address, tokens)
        channels = [
            await stack.enter_async_context(
                grpc.aio.insecure_channel(first.address, options=RECONNECT)
            )
            for _ in range(2)
        ]
        run = await stack.enter_async_context(
            running(app, first.address, channels, licensed, tokens)
        )
        await run.answered(kill_after)

        unnumbered = 0
        if postgres:
            async with numbering_held(database_url) as lock:
                # Calls in flight commit, then wait for numbers that do not come.
                await until(lambda: unnumbered_events(app), lambda n: n > 0)
                killed_at = await kill_9(first, run)
                await until(lambda: waiting_numberers(lock), lambda n: n == 0)
            unnumbered = await unnumbered_events(app)
            assert unnumbered > 0, "numbered with no process alive"
        else:
            killed_at = await kill_9(first, run)
            assert sqlite_integrity(tmp_path / "keyturn.db") == "ok"
        assert await run.follower.ended_with() is grpc.StatusCode.UNAVAILABLE
        shown = len(run.follower.seen)
        assert contiguous_from_1(run.follower.seen)

        started_at = time.monotonic()
        second = await stack.enter_async_context(
            serving(tmp_path, settings, workers=1, listen=f"127.0.0.1:{first.port}")
        )
        probe = await serves(second.address, licensed.probe.license_key, "probe-restart")
        served_at = time.monotonic()
        run.monitor.resume()
        acknowledge(run.ledger, probe, "probe-restart")
        await run.answered(AFTER_RESTART, since=served_at)
        await run.stop()
        await report(
            "kill9-pg" if postgres else "kill9-sqlite",
            app,
            run,
            second.address,
            tokens,
            (killed_at, served_at),
            shown,
            unnumbered_at_kill=unnumbered,
            restart_s=f"{served_at - killed_at:.2f}",
            start_to_listen_s=f"{second.listening_at - started_at:.2f}",
            listen_to_answer_s=f"{served_at - second.listening_at:.2f}",
            seed=seed,
        )
    if not postgres:
        assert sqlite_integrity(tmp_path / "keyturn.db") == "ok"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_kill_9_of_one_of_two_workers_under_load_loses_nothing_and_the_other_serves_on(
    app: AppContext, database_url: str, tokens: Tokens, tmp_path: Path
) -> None:
    seed = random.randrange(1 << 32)
    kill_after = random.Random(seed).randint(*KILL_AFTER)
    # INFO: the supervisor's lines that tell the workers apart.
    settings = server_settings(database_url, **{**SETTINGS, "KEYTURN_LOG_LEVEL": "INFO"})
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(serving(tmp_path, settings, workers=2))
        pids = await listening_workers(server)
        licensed = await licenses(server.address, tokens)
        # Lane 0 is served by worker 0 (the survivor), lane 1 by worker 1.
        channels = [await channel_to(server.address, pids[i]) for i in (0, 1)]
        for channel in channels:
            stack.push_async_callback(channel.close)
        run = await stack.enter_async_context(
            running(app, server.address, channels, licensed, tokens)
        )
        await run.answered(kill_after)

        killed_at = time.monotonic()
        os.kill(pids[1], signal.SIGKILL)
        await run.answered(SURVIVOR_ANSWERS, lane=0, since=killed_at)
        await server.await_stderr(lambda lines: worker_pids(lines)[1] != pids[1], WAIT_S)
        restarted = worker_pids(server.stderr_lines)
        assert restarted[0] == pids[0], "the other worker was restarted too"
        async with contextlib.AsyncExitStack() as probing:
            to_new = await channel_to(server.address, restarted[1])
            probing.push_async_callback(to_new.close)
            probe = await serves(
                server.address, licensed.probe.license_key, "probe-new-worker", to_new
            )
        served_at = time.monotonic()
        acknowledge(run.ledger, probe, "probe-new-worker")
        await run.answered(AFTER_RESTART, since=served_at)
        await run.stop()
        # The stream on the surviving worker was never cut off.
        assert run.follower.ended is None or run.follower.ended is grpc.StatusCode.CANCELLED
        assert contiguous_from_1(run.follower.seen)
        survivor_failures = [
            c for c in run.ledger.calls if c.lane == 0 and c.code not in (OK, "RESOURCE_EXHAUSTED")
        ]
        assert survivor_failures == []
        await report(
            "kill9-pg-worker",
            app,
            run,
            server.address,
            tokens,
            (killed_at, served_at),
            len(run.follower.seen),
            restart_s=f"{served_at - killed_at:.2f}",
            seed=seed,
        )
        assert "restarting it in" in server.stderr_text()
