"""KEYTURN_READ_DATABASE_URL against a real streaming standby, made by the test itself.

The module makes its own primary cluster and a standby of it with
`pg_basebackup -R -X stream` (support/replication.py); each test migrates a
database of its own on the primary and runs `keyturn serve` with the primary as
KEYTURN_DATABASE_URL and the standby as KEYTURN_READ_DATABASE_URL. Pausing WAL
replay on the standby (`pg_wal_replay_pause()`) freezes what it shows: the read
RPCs then answer the old state while SQL on the primary shows the new one, which
proves where each RPC reads. `test_replication_lag_seen_through_the_read_rpcs`
measures the lag and prints the figures (run with -s to see them).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.clock import SystemClock
from keyturn.server.domain.license_key import generate_license_key
from keyturn.server.leases.keyring import RETIRE_MARGIN, SigningKeys, load_keyring
from keyturn.server.sealing import Sealer
from keyturn.server.store.migrate import upgrade
from keyturn.server.store.unit_of_work import Store

from conftest import TEST_SECRET
from support.catalog import Metadata, put_catalog
from support.health import health_reaches
from support.postgres import create_database, drop_database
from support.replication import (
    Replicated,
    caught_up,
    pause_replay,
    primary_and_standby,
    resume_replay,
)
from support.rpc import PRODUCT_ID, create_sku, failure_of, order
from support.subprocess_server import (
    ServerProcess,
    create_token,
    run_cli_async,
    serving,
)

WAIT_S = 30.0  # only so that a broken stream or a stuck standby fails instead of hanging
LAG_WRITES = 50

ADD_SEAT = cat.Operation(add_seats=cat.AddSeatsOperation(seats_per_unit=1))
SKUS = (
    create_sku("SUB-3", seats=3),
    create_sku("SUB-100", seats=100),
    cat.Sku(sku_id="SEAT", product_id=PRODUCT_ID, display_name="SEAT", operations=[ADD_SEAT]),
)


@pytest.fixture(scope="module")
def replicated() -> Iterator[Replicated]:
    with primary_and_standby() as clusters:
        yield clusters


@dataclass(frozen=True)
class Databases:
    replicated: Replicated
    primary_url: str  # postgresql+asyncpg://, for Keyturn
    standby_url: str

    @property
    def primary_dsn(self) -> str:
        return self.primary_url.replace("+asyncpg", "")

    @property
    def standby_dsn(self) -> str:
        return self.standby_url.replace("+asyncpg", "")


@pytest.fixture
async def databases(replicated: Replicated) -> AsyncIterator[Databases]:
    """A migrated database of its own on the primary, replayed on the standby."""
    name = f"keyturn_test_{uuid.uuid4().hex[:12]}"
    primary_url = await create_database(replicated.primary.admin_url, name)
    await asyncio.to_thread(upgrade, primary_url)
    await caught_up(replicated)
    try:
        yield Databases(replicated, primary_url, replicated.on_standby(primary_url))
    finally:
        await resume_replay(replicated.standby.admin_url)  # a failed test may have paused it
        await drop_database(replicated.primary.admin_url, name)


@dataclass
class Deployment:
    """A `keyturn serve` reading from the standby, and stubs with every scope."""

    db: Databases
    cwd: Path
    env: dict[str, str]
    process: ServerProcess
    channel: grpc.aio.Channel
    auth: Metadata
    catalog: catalog_pb2_grpc.CatalogServiceStub = field(init=False)
    fulfillment: fulfillment_pb2_grpc.FulfillmentServiceStub = field(init=False)
    licensing: licensing_pb2_grpc.LicensingServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.catalog = catalog_pb2_grpc.CatalogServiceStub(self.channel)
        self.fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub(self.channel)
        self.licensing = licensing_pb2_grpc.LicensingServiceStub(self.channel)

    @property
    def standby_admin(self) -> str:
        return self.db.replicated.standby.admin_url


@pytest.fixture
async def deployment(databases: Databases, tmp_path: Path) -> AsyncIterator[Deployment]:
    env = {
        "KEYTURN_DATABASE_URL": databases.primary_url,
        "KEYTURN_READ_DATABASE_URL": databases.standby_url,
        "KEYTURN_SECRET_KEY": TEST_SECRET,
        "KEYTURN_AUTO_MIGRATE": "false",
        "KEYTURN_SIGNING_KEY_REFRESH_SECONDS": "0",  # a rotation signs at the next lease
        "KEYTURN_LOG_LEVEL": "WARNING",  # the lag test makes thousands of calls
    }
    token = await create_token(tmp_path, env)
    async with (
        serving(tmp_path, env) as process,
        grpc.aio.insecure_channel(process.address) as channel,
    ):
        deployment = Deployment(
            databases, tmp_path, env, process, channel, (("authorization", f"Bearer {token}"),)
        )
        await put_catalog(deployment.catalog, deployment.auth, *SKUS)
        yield deployment


# --- helpers ----------------------------------------------------------------------------


async def sql(dsn: str, query: str, *args: object) -> Any:
    """One value, read with the test's own connection (not through Keyturn's code)."""
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        return await connection.fetchval(query, *args)
    finally:
        await connection.close()


def add_seat(order_id: str, entitlement_id: str) -> ful.FulfillOrderRequest:
    request = order(order_id, "SEAT")
    request.lines[0].entitlement_id = entitlement_id
    return request


async def activate(d: Deployment, license_key: str, fingerprint: str) -> lic.ActivateSeatResponse:
    request = lic.ActivateSeatRequest(
        license_key=license_key, product_id=PRODUCT_ID, fingerprint=fingerprint
    )
    response: lic.ActivateSeatResponse = await d.licensing.ActivateSeat(request)
    return response


async def check(d: Deployment, license_key: str) -> lic.EntitlementSummary:
    request = lic.CheckLicenseRequest(license_key=license_key, product_id=PRODUCT_ID)
    return (await d.licensing.CheckLicense(request)).entitlement


async def get(d: Deployment, entitlement_id: str) -> ful.Entitlement:
    request = ful.GetEntitlementRequest(entitlement_id=entitlement_id)
    return (await d.fulfillment.GetEntitlement(request, metadata=d.auth)).entitlement


async def listed_ids(d: Deployment) -> list[str]:
    response = await d.fulfillment.ListEntitlements(
        ful.ListEntitlementsRequest(page_size=500), metadata=d.auth
    )
    return [e.entitlement_id for e in response.entitlements]


async def event_types(d: Deployment, entitlement_id: str) -> list[int]:
    request = ful.ListEntitlementEventsRequest(entitlement_id=entitlement_id, page_size=500)
    response = await d.fulfillment.ListEntitlementEvents(request, metadata=d.auth)
    return [e.type for e in response.events]


async def published_kids(d: Deployment) -> set[str]:
    response = await d.licensing.GetSigningKeys(lic.GetSigningKeysRequest())
    return {key.kid for key in response.keys}


def kid_of(lease: lic.ActivateSeatResponse) -> str:
    return str(jwt.get_unverified_header(lease.lease.token)["kid"])


async def signing_kid(dsn: str) -> str:
    query = "SELECT kid FROM signing_keys WHERE retire_time IS NULL ORDER BY create_time DESC"
    return str(await sql(dsn, query + " LIMIT 1"))


async def last_sequence(dsn: str) -> int:
    return int(await sql(dsn, "SELECT coalesce(max(sequence), 0) FROM entitlement_events"))


async def failure(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    found = failure_of(caught.value)
    return found.code, found.reason


CREATED = ful.ENTITLEMENT_EVENT_TYPE_CREATED
SEAT_ACTIVATED = ful.ENTITLEMENT_EVENT_TYPE_SEAT_ACTIVATED
SEATS_CHANGED = ful.ENTITLEMENT_EVENT_TYPE_SEATS_CHANGED


# --- where each RPC reads -----------------------------------------------------------------


async def test_reads_answer_from_the_standby_and_writes_go_to_the_primary(
    deployment: Deployment,
) -> None:
    d = deployment
    made = (await d.fulfillment.FulfillOrder(order("o-1", "SUB-3"), metadata=d.auth)).entitlements
    first = made[0]
    await activate(d, first.license_key, "device-0001")
    await caught_up(d.db.replicated)
    old_kids = await published_kids(d)

    await pause_replay(d.standby_admin)
    await d.fulfillment.FulfillOrder(add_seat("o-2", first.entitlement_id), metadata=d.auth)
    rotated = await run_cli_async(["keys", "rotate"], d.cwd, d.env)
    lease = await activate(d, first.license_key, "device-0002")
    fresh = (await d.fulfillment.FulfillOrder(order("o-3", "SUB-3"), metadata=d.auth)).entitlements
    second = fresh[0]

    # The writes are on the primary, and the paused standby has none of them.
    seats = "SELECT seats FROM entitlements WHERE entitlement_id = $1"
    assert await sql(d.db.primary_dsn, seats, first.entitlement_id) == 4
    assert await sql(d.db.standby_dsn, seats, first.entitlement_id) == 3
    new_kid = await signing_kid(d.db.primary_dsn)
    assert new_kid in rotated.stdout
    assert new_kid not in old_kids

    # Every read RPC answers what the standby shows.
    got = await get(d, first.entitlement_id)
    assert (got.seats, got.seats_in_use) == (3, 1)
    checked = await check(d, first.license_key)
    assert (checked.seats, checked.seats_in_use) == (3, 1)
    assert await listed_ids(d) == [first.entitlement_id]
    assert await event_types(d, first.entitlement_id) == [CREATED, SEAT_ACTIVATED]
    assert await published_kids(d) == old_kids
    # ... and a lease never names a key that GetSigningKeys does not show yet.
    assert kid_of(lease) in old_kids

    # Rows the standby has not got yet are found on the primary, never reported missing.
    assert (await get(d, second.entitlement_id)).seats == 3
    assert (await check(d, second.license_key)).seats == 3
    assert await event_types(d, second.entitlement_id) == [CREATED]
    got_order = await d.fulfillment.GetOrder(
        ful.GetOrderRequest(source="test", order_id="o-3"), metadata=d.auth
    )
    assert got_order.order.order_id == "o-3"
    missing = d.fulfillment.GetEntitlement(
        ful.GetEntitlementRequest(entitlement_id="ent_nope"), metadata=d.auth
    )
    assert await failure(missing) == (grpc.StatusCode.NOT_FOUND, "ENTITLEMENT_NOT_FOUND")
    unknown = lic.CheckLicenseRequest(license_key=generate_license_key(), product_id=PRODUCT_ID)
    assert await failure(d.licensing.CheckLicense(unknown)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_LICENSE_KEY",
    )

    await resume_replay(d.standby_admin)
    await caught_up(d.db.replicated)
    got = await get(d, first.entitlement_id)
    assert (got.seats, got.seats_in_use) == (4, 2)
    checked = await check(d, first.license_key)
    assert (checked.seats, checked.seats_in_use) == (4, 2)
    assert await listed_ids(d) == [first.entitlement_id, second.entitlement_id]
    types = [CREATED, SEAT_ACTIVATED, SEATS_CHANGED, SEAT_ACTIVATED]
    assert await event_types(d, first.entitlement_id) == types
    assert new_kid in await published_kids(d)
    assert kid_of(await activate(d, first.license_key, "device-0003")) == new_kid


async def test_a_new_signing_key_signs_once_the_standby_publishes_it(
    databases: Databases,
) -> None:
    """In process, on both stores: the older key signs while the standby lags, unless the
    lag has outlasted the margin the older key's retirement leaves."""
    primary = Store.from_url(databases.primary_url)
    standby = Store.from_url(databases.standby_url, read_only=True)
    sealer = Sealer(TEST_SECRET)
    try:
        clock = SystemClock()
        keyring = await load_keyring(primary, sealer, clock.now())
        old_kid = keyring.keys[0].kid
        await caught_up(databases.replicated)
        await pause_replay(databases.replicated.standby.admin_url)
        keys = SigningKeys(primary, sealer, keyring, 0, published=standby, clock=clock)
        assert (await keys.signing()).kid == old_kid
        new_kid = (await keys.rotate(clock.now())).new_kid
        assert (await keys.signing()).kid == old_kid, "signed with a key the JWKS lacks"
        late = SystemClock(RETIRE_MARGIN + timedelta(seconds=1))
        past_margin = SigningKeys(primary, sealer, keys.keyring, 0, published=standby, clock=late)
        assert (await past_margin.signing()).kid == new_kid
        await resume_replay(databases.replicated.standby.admin_url)
        await caught_up(databases.replicated)
        assert (await keys.signing()).kid == new_kid
        with pytest.raises(RuntimeError, match="read-only"):
            async with standby.write():
                pass
    finally:
        await standby.close()
        await primary.close()


# --- the change stream ----------------------------------------------------------------------


@dataclass
class Watcher:
    """Collects a stream's events with the instant each arrived."""

    call: Any
    task: asyncio.Task[None] | None = None
    events: list[ful.EntitlementEvent] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)
    grew: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        async for response in self.call:
            self.events.append(response.event)
            self.arrived.append(time.monotonic())
            self.grew.set()

    async def reach(self, sequence: int) -> None:
        async with asyncio.timeout(WAIT_S):
            while not self.events or self.events[-1].sequence < sequence:
                self.grew.clear()
                await self.grew.wait()

    @property
    def sequences(self) -> list[int]:
        return [e.sequence for e in self.events]


@contextlib.asynccontextmanager
async def watching(d: Deployment, after_sequence: int) -> AsyncIterator[Watcher]:
    call = d.fulfillment.WatchEntitlementEvents(
        ful.WatchEntitlementEventsRequest(after_sequence=after_sequence), metadata=d.auth
    )
    watcher = Watcher(call)
    watcher.task = task = asyncio.create_task(watcher.run())
    try:
        yield watcher
    finally:
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await task


async def orders_with_seats(d: Deployment, prefix: str, count: int) -> None:
    for n in range(count):
        made = await d.fulfillment.FulfillOrder(order(f"{prefix}-{n}", "SUB-3"), metadata=d.auth)
        await activate(d, made.entitlements[0].license_key, f"{prefix}-device-{n:04}")


async def test_a_watcher_gets_every_event_once_in_order_across_a_paused_standby(
    deployment: Deployment,
) -> None:
    d = deployment
    primary = d.db.primary_dsn
    async with watching(d, 0) as watcher:
        await orders_with_seats(d, "a", 5)
        await caught_up(d.db.replicated)
        before_pause = await last_sequence(primary)
        await watcher.reach(before_pause)
        await pause_replay(d.standby_admin)

        await orders_with_seats(d, "b", 5)
        during_pause = await last_sequence(primary)
        assert await last_sequence(d.db.standby_dsn) == before_pause < during_pause
        # A cursor the standby has not reached is checked against the primary: in range;
        # one beyond the primary's last is not. (`beyond` is answered after `ahead`,
        # sent before it on the same connection, was checked.)
        async with watching(d, during_pause) as ahead:
            beyond = d.fulfillment.WatchEntitlementEvents(
                ful.WatchEntitlementEventsRequest(after_sequence=during_pause + 1),
                metadata=d.auth,
            )
            assert await failure(beyond.read()) == (
                grpc.StatusCode.OUT_OF_RANGE,
                "SEQUENCE_OUT_OF_RANGE",
            )
            assert ahead.task is not None
            assert not ahead.task.done(), "a cursor ahead of the standby was refused"
            resumed_at = time.monotonic()
            await resume_replay(d.standby_admin)
            await orders_with_seats(d, "c", 3)
            final = await last_sequence(primary)
            await watcher.reach(final)
            await ahead.reach(final)

    assert watcher.sequences == list(range(1, final + 1))
    assert ahead.sequences == list(range(during_pause + 1, final + 1))
    late = [
        t for e, t in zip(watcher.events, watcher.arrived, strict=True) if e.sequence > before_pause
    ]
    assert min(late) >= resumed_at, "an event written during the pause came before the resume"
    rows = await asyncpg_rows(primary)
    assert [(e.sequence, e.entitlement_id, e.order_id) for e in watcher.events] == rows


async def asyncpg_rows(dsn: str) -> list[tuple[int, str, str]]:
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        found = await connection.fetch(
            "SELECT sequence, entitlement_id, order_id FROM entitlement_events ORDER BY sequence"
        )
    finally:
        await connection.close()
    return [(int(r[0]), r[1], r[2]) for r in found]


# --- lag ----------------------------------------------------------------------------------


@dataclass
class Lags:
    """Seconds from each write's response until a read RPC showed it, and how many of the
    writes the first read after the response already showed (their lag is below the time
    one read takes)."""

    seconds: list[float] = field(default_factory=list)
    at_first_read: int = 0

    async def measure(self, shown: Callable[[], Awaitable[bool]]) -> None:
        """Ask the read RPC `shown` back to back until it answers True."""
        started = time.perf_counter()
        reads = 1
        async with asyncio.timeout(WAIT_S):
            while not await shown():
                reads += 1
        self.seconds.append(time.perf_counter() - started)
        self.at_first_read += reads == 1

    def figures(self, name: str) -> str:
        first = f"shown by the first read after the write: {self.at_first_read}/{len(self.seconds)}"
        return f"{figures(name, self.seconds)}; {first}"


def figures(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p90 = ms[int(len(ms) * 0.9) - 1]
    return (
        f"{name}: n={len(ms)} p50={statistics.median(ms):.1f} ms p90={p90:.1f} ms "
        f"max={ms[-1]:.1f} ms"
    )


async def test_replication_lag_seen_through_the_read_rpcs(deployment: Deployment) -> None:
    """From a write's response to the first read RPC that shows it, for LAG_WRITES writes of
    each kind; to the first SQL read on the standby that shows it (the replay lag without
    the cost of an RPC); and to the change stream's event for the activations."""
    d = deployment
    made = (await d.fulfillment.FulfillOrder(order("big", "SUB-100"), metadata=d.auth)).entitlements
    big = made[0]
    await caught_up(d.db.replicated)
    check_lags = Lags()
    get_lags = Lags()
    replay_lags: list[float] = []
    answered: dict[str, float] = {}
    async with watching(d, await last_sequence(d.db.primary_dsn)) as watcher:
        for n in range(LAG_WRITES):
            lease = await activate(d, big.license_key, f"lag-device-{n:04}")
            answered[lease.activation_id] = time.monotonic()
            in_use = n + 1
            await check_lags.measure(partial(_in_use_is, d, big.license_key, in_use))
        for n in range(LAG_WRITES):
            await d.fulfillment.FulfillOrder(
                add_seat(f"seat-{n}", big.entitlement_id), metadata=d.auth
            )
            seats = 100 + n + 1
            await get_lags.measure(partial(_seats_are, d, big.entitlement_id, seats))
        for n in range(LAG_WRITES):
            held = LAG_WRITES + n + 1
            replay_lags.append(await replay_lag(d, big, held, f"sql-device-{n:04}"))
        await watcher.reach(await last_sequence(d.db.primary_dsn))
    activated = {
        e.activation_id: t
        for e, t in zip(watcher.events, watcher.arrived, strict=True)
        if e.type == SEAT_ACTIVATED
    }
    stream_lags = [activated[a] - t for a, t in answered.items()]
    print()
    print(check_lags.figures("ActivateSeat -> CheckLicense shows it"))
    print(get_lags.figures("FulfillOrder -> GetEntitlement shows it"))
    print(figures("ActivateSeat's commit -> visible on the standby (SQL)", replay_lags))
    print(figures("ActivateSeat -> WatchEntitlementEvents delivers it", stream_lags))
    assert len(check_lags.seconds) == len(get_lags.seconds) == len(stream_lags) == LAG_WRITES
    assert len(replay_lags) == LAG_WRITES
    assert all(lag >= 0 for lag in replay_lags), "seen on the standby before its commit"
    start = watcher.sequences[0]
    assert watcher.sequences == list(range(start, start + 3 * LAG_WRITES))


async def _in_use_is(d: Deployment, license_key: str, in_use: int) -> bool:
    return (await check(d, license_key)).seats_in_use == in_use


async def _seats_are(d: Deployment, entitlement_id: str, seats: int) -> bool:
    return (await get(d, entitlement_id)).seats == seats


async def replay_lag(d: Deployment, entitlement: ful.Entitlement, held: int, device: str) -> float:
    """Seconds from the commit of one activation (the primary's commit timestamp) to the
    instant SQL on the standby, asked back to back from before the write, first shows
    it: the replay lag alone, without the cost of an RPC."""
    standby = await asyncpg.connect(d.db.standby_dsn, timeout=10)
    try:
        query = "SELECT seats_held, clock_timestamp() FROM entitlements WHERE entitlement_id = $1"

        async def first_seen() -> datetime:
            while True:
                row = await standby.fetchrow(query, entitlement.entitlement_id)
                if row is not None and row[0] >= held:
                    return row[1]  # type: ignore[no-any-return]

        async with asyncio.timeout(WAIT_S):
            seen = asyncio.create_task(first_seen())
            await activate(d, entitlement.license_key, device)
            seen_at = await seen
    finally:
        await standby.close()
    committed = "SELECT pg_xact_commit_timestamp(xmin) FROM entitlements WHERE entitlement_id = $1"
    commit_at: datetime = await sql(d.db.primary_dsn, committed, entitlement.entitlement_id)
    return (seen_at - commit_at).total_seconds()


# --- a standby that is down ---------------------------------------------------------------


async def test_a_stopped_standby_fails_reads_with_unavailable_and_the_server_is_not_ready(
    deployment: Deployment,
) -> None:
    d = deployment
    made = (await d.fulfillment.FulfillOrder(order("o-1", "SUB-3"), metadata=d.auth)).entitlements
    first = made[0]
    await caught_up(d.db.replicated)
    await health_reaches(d.channel, health_pb2.HealthCheckResponse.SERVING, WAIT_S)
    replicated = d.db.replicated
    await asyncio.to_thread(replicated.stop_standby)
    try:
        unavailable = (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")
        request = lic.CheckLicenseRequest(license_key=first.license_key, product_id=PRODUCT_ID)
        assert await failure(d.licensing.CheckLicense(request)) == unavailable
        get_request = ful.GetEntitlementRequest(entitlement_id=first.entitlement_id)
        assert (
            await failure(d.fulfillment.GetEntitlement(get_request, metadata=d.auth)) == unavailable
        )
        list_request = ful.ListEntitlementsRequest()
        assert (
            await failure(d.fulfillment.ListEntitlements(list_request, metadata=d.auth))
            == unavailable
        )
        keys = d.licensing.GetSigningKeys(lic.GetSigningKeysRequest())
        assert await failure(keys) == unavailable
        stream = d.fulfillment.WatchEntitlementEvents(
            ful.WatchEntitlementEventsRequest(after_sequence=0), metadata=d.auth
        )
        assert await failure(stream.read()) == unavailable
        # Writes do not need the standby.
        await d.fulfillment.FulfillOrder(add_seat("o-2", first.entitlement_id), metadata=d.auth)
        lease = await activate(d, first.license_key, "device-0001")
        assert lease.entitlement.seats_in_use == 1
        await health_reaches(d.channel, health_pb2.HealthCheckResponse.NOT_SERVING, WAIT_S)
    finally:
        await asyncio.to_thread(replicated.start_standby)
    await health_reaches(d.channel, health_pb2.HealthCheckResponse.SERVING, WAIT_S)
    await caught_up(d.db.replicated)
    got = await get(d, first.entitlement_id)
    assert (got.seats, got.seats_in_use) == (4, 1)


async def test_serve_refuses_a_read_database_unless_both_are_postgresql(tmp_path: Path) -> None:
    """No cluster needed: the settings are refused before any connection."""
    env = {
        "KEYTURN_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'keyturn.db'}",
        "KEYTURN_READ_DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:1/keyturn",
    }
    with pytest.raises(RuntimeError) as refused:
        await run_cli_async(["serve", "--listen", "127.0.0.1:0"], tmp_path, env)
    assert "exited with 2" in str(refused.value)
    assert "KEYTURN_READ_DATABASE_URL (a streaming standby) needs PostgreSQL" in str(refused.value)
