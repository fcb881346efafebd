"""Two versions of the server on one database, as during a rolling upgrade.

The old version is the server code of an earlier commit, exported from the
repository's history (`git archive`) into a temporary folder and run by this venv's
`keyturn` with PYTHONPATH pointing there (on today's dependencies). The upgrade
goes as a deployment would: the old server serves a database at its own schema,
the database is migrated to today's schema while it keeps running, then today's
server starts beside it, and both serve the same entitlements: activations racing
for the last seats through either server, leases of one renewed by the other,
releases, orders, the event log.

Two old versions are run:
- the first commit of today's newest migration (both servers know the schema);
- the commit before it: its server meets a schema newer than its own, which an
  expand-only migration must keep working. A migration that is not (one that
  contracts in the same step) is named in BREAKS_THE_SERVER_BEFORE_IT with what
  breaks; this test then checks that it breaks exactly so, and fails once it no
  longer does or once a newer migration arrives, whose predecessor must then
  run unharmed (docs/design.md, "Migrations").
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import os
import subprocess
import sys
import tarfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from alembic.script import ScriptDirectory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import text

from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.store.migrate import MIGRATIONS, head_revision, upgrade
from keyturn.server.store.unit_of_work import Store

from conftest import BACKENDS, server_settings
from support.catalog import new_license
from support.empty_database import empty_database
from support.rpc import PRODUCT_ID, failure_of
from support.subprocess_server import ServerProcess, child_env, create_token, serving

REPOSITORY = Path(__file__).resolve().parents[2]
SERVER_CODE = ("service/keyturn/server", "clients/python/src")
SEATS = 4
DEVICES = 10  # per entitlement, racing for its seats through both servers


@dataclass(frozen=True)
class Breakage:
    """How a migration breaks the server of the commit before it."""

    failures: dict[str, set[tuple[str, str]]]  # by backend: (method, status) that fail
    ready: bool  # what that server's readiness (its health check) says of the new schema


# Migrations that break the server of the commit before them (none may be added).
BREAKS_THE_SERVER_BEFORE_IT = {
    # 0006 drops event_sequence, whose row the older server locks to number each event
    # it writes: each of its writes fails and is rolled back (no seat is oversold, none
    # taken); renewals, which write no event, still work. It also adds
    # entitlements.seats_held, which the older server would not keep. And the older
    # server's readiness wants the database at exactly its own newest revision, so it
    # reports NOT_SERVING from its next health refresh on.
    "0006": Breakage(
        failures={
            "postgresql": {  # UndefinedTable, which the older server does not map
                ("ActivateSeat", "INTERNAL"),
                ("FulfillOrder", "INTERNAL"),
                ("ReleaseSeat", "INTERNAL"),
            },
            "sqlite": {  # "no such table", an OperationalError: STORAGE_UNAVAILABLE
                ("ActivateSeat", "UNAVAILABLE"),
                ("FulfillOrder", "UNAVAILABLE"),
                ("ReleaseSeat", "UNAVAILABLE"),
            },
        },
        ready=False,
    ),
}
IS_READY = """
import asyncio, sys
from keyturn.server.store.unit_of_work import Store

async def main() -> None:
    store = Store.from_url(sys.argv[1])
    try:
        print(await store.is_ready(5.0))  # within_seconds: required since issue 11
    finally:
        await store.close()

asyncio.run(main())
"""
WHERE_FROM = (
    "import keyturn.server, keyturn.fulfillment.v1.fulfillment_pb2 as stubs; "
    "print(keyturn.server.__file__); print(stubs.__file__)"
)


def git(*args: str) -> bytes:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPOSITORY, capture_output=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        raise RuntimeError(
            f"git {' '.join(args)} failed ({error}); this test needs the repository's history "
            "(a clone without --depth)"
        ) from None


def newest_migration_commit() -> str:
    """The commit that added today's newest migration file."""
    script = ScriptDirectory(str(MIGRATIONS)).get_revision(head_revision())
    assert script is not None
    assert script.path is not None
    path = Path(script.path).resolve().relative_to(REPOSITORY)
    commits = git("log", "--diff-filter=A", "--format=%H", "--", str(path)).decode().split()
    assert commits, f"{path} is not committed"
    return commits[-1]


def python(pythonpath: str, *args: str) -> str:
    """This venv's Python with `pythonpath` first; its output."""
    env = {**child_env({}), "PYTHONPATH": pythonpath}
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, check=True, timeout=60
    ).stdout


def export_server_code(commit: str, folder: Path) -> str:
    """The server and client packages of `commit` in `folder`; their PYTHONPATH (checked:
    the server and its stubs are imported from there)."""
    archive = git("archive", "--format=tar", commit, *SERVER_CODE)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    pythonpath = os.pathsep.join(str(folder / part) for part in ("service", "clients/python/src"))
    imported = python(pythonpath, "-c", WHERE_FROM).split()
    assert all(Path(module).is_relative_to(folder) for module in imported), imported
    return pythonpath


def revision_of(pythonpath: str) -> str:
    """The newest migration of exported server code."""
    migrations = Path(pythonpath.split(os.pathsep)[0]) / "keyturn/server/store/migrations"
    head = ScriptDirectory(str(migrations)).get_current_head()
    assert head is not None
    return head


@pytest.fixture(params=BACKENDS)
def fresh_url(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """An empty database: the old server's migrations make its schema."""
    with empty_database(request, request.param, tmp_path / "db", "mixed") as url:
        yield url


@dataclass
class Calls:
    """The failures of one server's calls, by method, status and reason."""

    failed: collections.Counter[tuple[str, str, str]] = field(default_factory=collections.Counter)

    async def call(self, method: str, response: object) -> object | None:
        try:
            answer = await response  # type: ignore[misc]
        except grpc.aio.AioRpcError as error:
            failure = failure_of(error)
            self.failed[(method, failure.code.name, failure.reason)] += 1
            return None
        return answer

    def unexpected(self) -> set[tuple[str, str]]:
        """Failures other than the refusals the API documents for a full entitlement."""
        return {(m, code) for (m, code, reason) in self.failed if reason != "SEATS_EXHAUSTED"}


@dataclass
class Replica:
    name: str
    process: ServerProcess
    channel: grpc.aio.Channel
    calls: Calls = field(default_factory=Calls)

    @property
    def licensing(self) -> licensing_pb2_grpc.LicensingServiceStub:
        return licensing_pb2_grpc.LicensingServiceStub(self.channel)

    @property
    def fulfillment(self) -> fulfillment_pb2_grpc.FulfillmentServiceStub:
        return fulfillment_pb2_grpc.FulfillmentServiceStub(self.channel)

    async def health(self) -> str:
        response = await health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest()
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


@contextlib.asynccontextmanager
async def replica(name: str, cwd: Path, env: dict[str, str]) -> AsyncIterator[Replica]:
    async with (
        serving(cwd, env) as process,
        grpc.aio.insecure_channel(process.address) as channel,
    ):
        try:
            yield Replica(name, process, channel)
        except BaseException:
            print(f"--- {name} server stderr:\n{process.stderr_tail(60)}")
            raise


def activation(key: str, fingerprint: str) -> lic.ActivateSeatRequest:
    return lic.ActivateSeatRequest(
        license_key=key, product_id=PRODUCT_ID, fingerprint=fingerprint, label="laptop"
    )


async def race_for_seats(
    replicas: list[Replica], key: str, tag: str
) -> list[tuple[Replica, lic.ActivateSeatResponse]]:
    """One activation on each replica, then the other DEVICES at once, alternating between
    them; the seats granted, with the replica that granted each."""

    async def claim(index: int) -> tuple[Replica, lic.ActivateSeatResponse | None]:
        by = replicas[index % len(replicas)]
        call = by.licensing.ActivateSeat(activation(key, f"device-{tag}-{index:02d}"))
        return by, await by.calls.call("ActivateSeat", call)  # type: ignore[return-value]

    first = [await claim(index) for index in range(len(replicas))]  # one each, in turn
    answers = first + await asyncio.gather(*(claim(i) for i in range(len(replicas), DEVICES)))
    return [(by, seat) for by, seat in answers if seat is not None]


async def _seat_counts(database_url: str) -> list[tuple[int, int, int]]:
    """Per entitlement: seats, the kept count, and the unreleased activations (no lapse
    happens here: leases last 15 minutes)."""
    store = Store.from_url(database_url)
    try:
        async with store.read() as tx:
            rows = await tx.connection.execute(
                text(
                    "SELECT e.seats, e.seats_held, (SELECT count(*) FROM activations a WHERE "
                    "a.entitlement_id = e.entitlement_id AND a.released_time IS NULL) "
                    "FROM entitlements e ORDER BY e.entitlement_id"
                )
            )
            return [tuple(row) for row in rows]  # type: ignore[misc]
    finally:
        await store.close()


async def _event_log(
    replica: Replica, auth: tuple[tuple[str, str], ...], ids: list[str]
) -> list[int]:
    sequences: list[int] = []
    for entitlement_id in ids:
        listed = await replica.fulfillment.ListEntitlementEvents(
            ful.ListEntitlementEventsRequest(entitlement_id=entitlement_id, page_size=500),
            metadata=auth,
        )
        sequences += [event.sequence for event in listed.events]
    return sorted(sequences)


@dataclass(frozen=True)
class Upgrade:
    old_revision: str
    unexpected: set[tuple[str, str]]  # (method, status) of the old server's failures
    new_unexpected: set[tuple[str, str]]
    old_ready: bool  # what the old server's health check says of the migrated database
    new_health: str
    granted: dict[str, int]  # seats granted in the races, by server


async def upgrade_beside(old_commit: str, database_url: str, tmp_path: Path) -> Upgrade:
    """Run the rolling upgrade from `old_commit`'s server to today's on `database_url` (an
    empty database) and check what must hold whatever the versions: no seat oversold, the
    kept seat counts right, one gap-free event log seen alike by both servers."""
    old_path = export_server_code(old_commit, tmp_path / "old-code")
    old_revision = revision_of(old_path)
    await asyncio.to_thread(upgrade, database_url, old_revision)
    base = server_settings(database_url)
    old_env = {**base, "PYTHONPATH": old_path}
    # Made by the old version, which has no --create.
    token = await create_token(tmp_path, old_env, create=False)
    auth = (("authorization", f"Bearer {token}"),)
    async with replica("old", tmp_path, old_env) as old:
        old_seat = await new_license(
            catalog_pb2_grpc.CatalogServiceStub(old.channel),
            old.fulfillment,
            auth,
            auth,
            seats=SEATS,
        )
        held_on_old = [
            await old.licensing.ActivateSeat(activation(old_seat.license_key, f"device-early-{i}"))
            for i in range(2)
        ]

        await asyncio.to_thread(upgrade, database_url)  # while the old server runs
        async with replica("new", tmp_path, base) as new:
            both = [old, new]
            new_seat = await new_license(
                catalog_pb2_grpc.CatalogServiceStub(new.channel),
                new.fulfillment,
                auth,
                auth,
                seats=SEATS + 1,
            )
            granted = await race_for_seats(both, old_seat.license_key, "race-a")
            granted += await race_for_seats(both, new_seat.license_key, "race-b")
            # Leases renewed by the other version: those of before the upgrade on the new
            # server, those of the race on the server that did not grant them.
            for seat in held_on_old:
                await new.calls.call(
                    "RenewLease",
                    new.licensing.RenewLease(lic.RenewLeaseRequest(lease_token=seat.lease.token)),
                )
            renewed = []
            for granter, seat in granted:
                by = new if granter is old else old
                renewal = by.licensing.RenewLease(
                    lic.RenewLeaseRequest(lease_token=seat.lease.token)
                )
                renewed.append(await by.calls.call("RenewLease", renewal))
            # A seat given back on the old server is taken on the new one.
            current = [r for r in renewed if isinstance(r, lic.RenewLeaseResponse)]
            if current:
                await old.calls.call(
                    "ReleaseSeat",
                    old.licensing.ReleaseSeat(
                        lic.ReleaseSeatRequest(lease_token=current[0].lease.token)
                    ),
                )
            await new.calls.call(
                "ActivateSeat",
                new.licensing.ActivateSeat(activation(old_seat.license_key, "device-late-new")),
            )
            # Orders through either server: the same order replayed, a new one.
            await old.calls.call(
                "FulfillOrder",
                old.fulfillment.FulfillOrder(
                    ful.FulfillOrderRequest(
                        source="test",
                        order_id="order-on-old",
                        customer=ful.Customer(customer_id="cust-2", email="b@example.com"),
                        lines=[ful.OrderLine(sku_id=f"SEATS-{SEATS}-1", quantity=1)],
                    ),
                    metadata=auth,
                ),
            )

            # Whatever the versions: never a seat beyond the limit, counts kept right.
            for seats, _, unreleased in await _seat_counts(database_url):
                assert unreleased <= seats, "a seat was oversold"
            for replica_ in both:
                for seat in (old_seat, new_seat):
                    check = await replica_.licensing.CheckLicense(
                        lic.CheckLicenseRequest(license_key=seat.license_key, product_id=PRODUCT_ID)
                    )
                    assert check.entitlement.seats_in_use <= check.entitlement.seats
            ids = [old_seat.entitlement_id, new_seat.entitlement_id]
            logs = [await _event_log(r, auth, ids) for r in both]
            assert logs[0] == logs[1], "both servers read one event log"
            assert logs[1] == list(range(logs[1][0], logs[1][0] + len(logs[1]))), "gap-free"
            counts = await _seat_counts(database_url)
            assert all(kept == unreleased for _, kept, unreleased in counts), (
                f"seats_held drifted from the activations: {counts}"
            )
            return Upgrade(
                old_revision,
                old.calls.unexpected(),
                new.calls.unexpected(),
                python(old_path, "-c", IS_READY, database_url).strip() == "True",
                await new.health(),
                dict(collections.Counter(granter.name for granter, _ in granted)),
            )


async def test_the_first_server_of_the_newest_schema_beside_todays(
    fresh_url: str, tmp_path: Path
) -> None:
    outcome = await upgrade_beside(newest_migration_commit(), fresh_url, tmp_path)
    assert outcome.old_revision == head_revision()
    assert (outcome.unexpected, outcome.new_unexpected) == (set(), set()), outcome
    assert (outcome.old_ready, outcome.new_health) == (True, "SERVING")
    # Every free seat was taken, by both servers: 2 of the first entitlement were held.
    assert sum(outcome.granted.values()) == (SEATS - 2) + (SEATS + 1), outcome
    assert set(outcome.granted) == {"old", "new"}, outcome


async def test_the_server_before_the_newest_migration_beside_todays(
    fresh_url: str, tmp_path: Path
) -> None:
    outcome = await upgrade_beside(f"{newest_migration_commit()}^", fresh_url, tmp_path)
    assert outcome.old_revision != head_revision()
    assert (outcome.new_unexpected, outcome.new_health) == (set(), "SERVING"), outcome
    breakage = BREAKS_THE_SERVER_BEFORE_IT.get(str(head_revision()), Breakage({}, ready=True))
    backend = "sqlite" if fresh_url.startswith("sqlite") else "postgresql"
    assert outcome.unexpected == breakage.failures.get(backend, set()), outcome
    assert outcome.old_ready == breakage.ready, outcome
    assert sum(outcome.granted.values()) == (SEATS - 2) + (SEATS + 1), "none oversold"
