"""Orders are fulfilled exactly once: a replay changes nothing, a failure writes nothing.

Random orders (1 to 5 lines of SKUs covering every operation, targets named by entitlement id
or external reference, some of them wrong) go through `fulfil_order` against a real SQLite
file; every order is fulfilled, then replayed, with a dump of every table before and after.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, get_args

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from keyturn.server.app.catalog import put_product, put_sku
from keyturn.server.app.context import AppContext
from keyturn.server.app.fulfillment import FulfilledOrder, fulfil_order
from keyturn.server.bootstrap import build_context
from keyturn.server.domain.catalog import (
    AddFeatures,
    AddSeats,
    Cancel,
    ChangeEdition,
    ConvertTrial,
    Create,
    Edition,
    Feature,
    Operation,
    Product,
    Reinstate,
    RemoveFeatures,
    RemoveSeats,
    Renew,
    RenewalAnchor,
    Sku,
    Suspend,
)
from keyturn.server.domain.entitlement import Customer
from keyturn.server.domain.errors import DomainError, Reason
from keyturn.server.domain.orders import OrderLine, OrderRequest
from keyturn.server.store.unit_of_work import Store

from conftest import settings_for, sqlite_url
from support.threads import run_in_own_loop

START = datetime(2025, 3, 10, 12, 0, 0, 250_000, tzinfo=UTC)
SOURCE = "shop"
CUSTOMER = Customer("cust-1", "Ada Lovelace", "ada@example.com")

PRODUCTS = (
    Product(
        "acme",
        editions=(
            Edition("std", features=(Feature("export"), Feature("projects", 10))),
            Edition("pro", features=(Feature("export"), Feature("projects", 100), Feature("api"))),
            Edition("lite"),
        ),
    ),
    Product("other", editions=(Edition("basic", features=(Feature("view"),)),)),
)


def sku(sku_id: str, *operations: object, product: str = "acme") -> Sku:
    return Sku(sku_id, product, operations)  # type: ignore[arg-type]


CREATING = (
    sku("SUB-1Y", Create("std", 2, "P1Y", grace=timedelta(days=7))),
    sku("SUB-1M-PRO", Create("pro", 1, "P1M", features=(Feature("sso"),))),
    sku("TRIAL-14D", Create("std", 1, "P14D", trial=True)),
    sku("PERPETUAL", Create("lite", 1, None)),
    sku(
        "BUNDLE",
        Create("std", 1, "P1M"),
        AddSeats(2),
        AddFeatures((Feature("api", 3),)),
        Renew("P1M", RenewalAnchor.FROM_EXPIRY),
    ),
    sku("OTHER-SUB", Create("basic", 1, "P1Y"), product="other"),
)
CHANGING = (
    sku("RENEW-1Y-EXPIRY", Renew("P1Y", RenewalAnchor.FROM_EXPIRY)),
    sku("RENEW-1M-NOW", Renew("P1M", RenewalAnchor.FROM_NOW)),
    sku("RENEW-30D", Renew("P30D", RenewalAnchor.FROM_NOW_IF_EXPIRED)),
    sku("ADD-SEATS", AddSeats(5)),
    sku("REMOVE-SEATS", RemoveSeats(3)),
    sku("UPGRADE-PRO", ChangeEdition("pro")),
    sku("DOWNGRADE-LITE", ChangeEdition("lite")),
    sku("ADDON", AddFeatures((Feature("sso"), Feature("projects", 500)))),
    sku("DROP-EXPORT", RemoveFeatures(("export",))),
    sku("CONVERT-1Y", ConvertTrial("P1Y")),
    sku("CONVERT-PERPETUAL", ConvertTrial(None)),
    sku("CANCEL", Cancel()),
    sku("SUSPEND", Suspend()),
    sku("REINSTATE", Reinstate()),
    sku("SUSPEND-AND-ADD-SEATS", Suspend(), AddSeats(1)),
    sku("UPGRADE-BUNDLE", ChangeEdition("pro"), AddSeats(1), RemoveSeats(1), Renew("P1M")),
    sku("OTHER-RENEW", Renew("P1Y"), product="other"),
)
MISSING_SKU = "NO-SUCH-SKU"
CREATING_IDS = {item.sku_id for item in CREATING}


# --- what the database holds --------------------------------------------------------------

Dump = dict[str, list[str]]


async def dump(store: Store) -> Dump:
    """Every row of every table (migrations, event sequence and all), in a stable order."""
    tables: Dump = {}
    async with store.read() as tx:
        names = await tx.connection.execute(
            text("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        )
        for (name,) in list(names):
            rows = await tx.connection.execute(text(f'SELECT * FROM "{name}"'))
            tables[name] = sorted(repr(tuple(row)) for row in rows)
    return tables


def assert_same(before: Dump, after: Dump, what: str) -> None:
    """Equal dumps; otherwise name each changed table with the rows it lost and gained."""
    if after == before:
        return
    changes = []
    for table in sorted(set(before) | set(after)):
        old, new = set(before.get(table, [])), set(after.get(table, []))
        if old != new:
            lost, gained = sorted(old - new)[:2], sorted(new - old)[:2]
            changes.append(f"{table}: -{len(old - new)} {lost} +{len(new - old)} {gained}")
    pytest.fail(f"{what} changed the database:\n" + "\n".join(changes))


# --- orders as plans, resolved against what the run has created so far -----------------

TargetKind = Literal[
    "none",  # no target (wrong for a changing SKU)
    "id",  # an entitlement of the run, by id
    "ref",  # an entitlement of the run, by one of its external references
    "id+own-ref",  # by id, with a reference it already has
    "id+new-ref",  # by id, attaching a new reference
    "id+taken-ref",  # by id, with a reference of some entitlement (maybe another one)
    "this-order-ref",  # the new reference given to an earlier line of this order
    "missing-id",
    "missing-ref",
    "new-ref",  # a fresh reference (for a creating SKU: the reference of the new entitlement)
]


@dataclass(frozen=True)
class LinePlan:
    sku_id: str
    quantity: int
    target: TargetKind
    pick: int  # which entitlement or reference of the run, modulo how many there are


@dataclass(frozen=True)
class OrderPlan:
    lines: tuple[LinePlan, ...]
    advance: timedelta  # how far the clock moves before the order


@dataclass(frozen=True)
class Known:
    """What the run has committed so far."""

    entitlement_ids: list[str]
    references: dict[str, str]  # external reference -> entitlement id


async def known(store: Store) -> Known:
    async with store.read() as tx:
        ids = await tx.connection.execute(
            text("SELECT entitlement_id FROM entitlements ORDER BY entitlement_id")
        )
        refs = await tx.connection.execute(
            text(
                "SELECT external_reference, entitlement_id FROM external_references "
                "ORDER BY external_reference"
            )
        )
        return Known([row[0] for row in ids], {row[0]: row[1] for row in refs})


def resolve(plan: OrderPlan, number: int, run: Known) -> OrderRequest:
    lines: list[OrderLine] = []
    fresh: list[str] = []  # new references given by earlier lines of this order
    ids, refs = run.entitlement_ids, sorted(run.references)
    for index, line in enumerate(plan.lines):
        new_ref = f"crm:{number}-{index}"
        entitlement_id = ids[line.pick % len(ids)] if ids else "ent_00000000000000000000000000"
        reference = refs[line.pick % len(refs)] if refs else "crm:never-given"
        own = [r for r, e in run.references.items() if e == entitlement_id]
        by_ref = {"external_reference": reference} if refs else {"entitlement_id": entitlement_id}
        target: dict[str, str] = {
            "none": {},
            "id": {"entitlement_id": entitlement_id},
            "ref": by_ref,
            "id+own-ref": {
                "entitlement_id": entitlement_id,
                "external_reference": own[0] if own else new_ref,
            },
            "id+new-ref": {"entitlement_id": entitlement_id, "external_reference": new_ref},
            "id+taken-ref": {"entitlement_id": entitlement_id, "external_reference": reference},
            "this-order-ref": (
                {"external_reference": fresh[line.pick % len(fresh)]} if fresh else by_ref
            ),
            "missing-id": {"entitlement_id": f"ent_missing_{number}"},
            "missing-ref": {"external_reference": f"crm:missing-{number}"},
            "new-ref": {"external_reference": new_ref},
        }[line.target]
        if target.get("external_reference") == new_ref:
            fresh.append(new_ref)
        lines.append(OrderLine(line.sku_id, line.quantity, **target))
    return OrderRequest(SOURCE, f"order-{number}", CUSTOMER, "it@example.com", tuple(lines))


quantities = st.one_of(st.integers(1, 3), st.sampled_from([0, 40, 100_000]))
create_targets: st.SearchStrategy[TargetKind] = st.sampled_from(["ref", "id"])
missing_sku_targets: st.SearchStrategy[TargetKind] = st.sampled_from(["none", "id"])
change_targets: st.SearchStrategy[TargetKind] = st.sampled_from(
    ["id+taken-ref", "none", "missing-id", "missing-ref"]
)
# Most lines name their target rightly (they still fail on the rules: a cancelled target, too
# few seats, a trial conversion of a paid entitlement, a SKU of another product...).
good_create_targets: st.SearchStrategy[TargetKind] = st.sampled_from(["none", "new-ref"])
good_change_targets: st.SearchStrategy[TargetKind] = st.sampled_from(
    ["id", "id", "ref", "ref", "id+own-ref", "id+new-ref", "this-order-ref"]
)


@st.composite
def line_plans(draw: st.DrawFn, clean: bool, creating: bool | None = None) -> LinePlan:
    """A line; a clean one has a SKU that exists, a sensible quantity and a fitting target."""
    if creating is None:
        creating = draw(st.integers(0, 4)) < 2
    if not clean and draw(st.integers(0, 3)) == 0:
        sku_id, target = MISSING_SKU, draw(missing_sku_targets)
    elif creating:
        sku_id = draw(st.sampled_from(CREATING)).sku_id
        target = draw(good_create_targets if clean else create_targets)
    else:
        sku_id = draw(st.sampled_from(CHANGING)).sku_id
        target = draw(good_change_targets if clean else change_targets)
    quantity = draw(st.integers(1, 3) if clean else quantities)
    return LinePlan(sku_id, quantity, target, draw(st.integers(0, 50)))


@st.composite
def order_plans(draw: st.DrawFn, first: bool = False) -> OrderPlan:
    """An order; the first of a run is a clean one that creates entitlements to work on."""
    clean = first or draw(st.integers(0, 9)) < 7
    lines = draw(
        st.lists(line_plans(clean, creating=True if first else None), min_size=1, max_size=5)
    )
    if not clean and all(line_plans_ok(line) for line in lines):
        lines[0] = replace(lines[0], sku_id=MISSING_SKU)  # at least one thing wrong
    advance = draw(st.just(timedelta(0)) | st.timedeltas(timedelta(0), timedelta(days=400)))
    return OrderPlan(tuple(lines), advance)


def line_plans_ok(line: LinePlan) -> bool:
    good = ("none", "new-ref") if line.sku_id in CREATING_IDS else ("id", "ref", "id+own-ref")
    return line.sku_id != MISSING_SKU and 1 <= line.quantity <= 3 and line.target in good


# --- the run ------------------------------------------------------------------------------


class ManualClock:
    """The application's clock, moved only by the test."""

    def __init__(self, now: datetime) -> None:
        self.current = now

    def now(self) -> datetime:
        return self.current


@dataclass(frozen=True)
class Outcome:
    fulfilled: FulfilledOrder | None
    error: DomainError | None


async def attempt(ctx: AppContext, order: OrderRequest) -> Outcome:
    try:
        return Outcome(await fulfil_order(ctx, order), None)
    except DomainError as error:
        return Outcome(None, error)


def assert_same_failure(first: DomainError, again: DomainError) -> None:
    assert again.reason is first.reason, (first, again)
    assert again.metadata.get("line") == first.metadata.get("line")
    assert [v.field for v in again.violations] == [v.field for v in first.violations]


async def run_orders(database: Path, plans: list[OrderPlan]) -> list[str]:
    """Fulfil and replay every order; what happened to each, for the statistics."""
    outcomes: list[str] = []
    clock = ManualClock(START)
    ctx = await build_context(settings_for(sqlite_url(database), auto_migrate=True), clock)
    try:
        fulfilled: list[tuple[OrderRequest, FulfilledOrder]] = []
        for number, plan in enumerate(plans):
            clock.current += plan.advance
            order = resolve(plan, number, await known(ctx.store))
            before = await dump(ctx.store)
            first = await attempt(ctx, order)
            after = await dump(ctx.store)
            replayed = await attempt(ctx, order)
            assert_same(after, await dump(ctx.store), f"replaying {order}")
            if first.error is not None:
                outcomes.append(f"failed: {first.error.reason}")
                assert_same(before, after, f"failed order {order} ({first.error.reason})")
                assert replayed.error is not None, f"a failed order succeeded on replay: {order}"
                assert_same_failure(first.error, replayed.error)
                continue
            outcomes.append(f"fulfilled with {len(order.lines)} lines")
            assert first.fulfilled is not None
            assert not first.fulfilled.replayed
            assert after != before
            assert replayed.error is None, f"replay of {order} failed: {replayed.error!r}"
            assert replayed.fulfilled is not None
            assert replayed.fulfilled.replayed
            assert replayed.fulfilled.order == first.fulfilled.order
            assert replayed.fulfilled.entitlements == first.fulfilled.entitlements
            results = first.fulfilled.order.results
            assert [r.line_index for r in results] == list(range(len(order.lines)))
            assert [r.sku_id for r in results] == [line.sku_id for line in order.lines]
            fulfilled.append((order, first.fulfilled))

        # Later, after other orders changed the entitlements, every replay still answers with
        # the stored results and writes nothing; the same key with other content conflicts.
        clock.current += timedelta(days=30)
        settled = await dump(ctx.store)
        for order, first_result in fulfilled:
            again = await attempt(ctx, order)
            assert again.fulfilled is not None, f"late replay of {order}: {again.error!r}"
            assert again.fulfilled.replayed
            assert again.fulfilled.order == first_result.order
            keys = {
                v.entitlement.entitlement_id: v.license_key for v in again.fulfilled.entitlements
            }
            assert keys == {
                v.entitlement.entitlement_id: v.license_key for v in first_result.entitlements
            }
            changed = replace(order, ship_to_email="someone-else@example.com")
            conflict = await attempt(ctx, changed)
            assert conflict.error is not None
            assert conflict.error.reason is Reason.ORDER_CONFLICT
        assert_same(settled, await dump(ctx.store), "late replays")
        return outcomes
    finally:
        await ctx.store.close()


async def put_catalog(database: Path) -> None:
    ctx = await build_context(settings_for(sqlite_url(database), auto_migrate=True))
    try:
        for product in PRODUCTS:
            await put_product(ctx, product)
        for item in (*CREATING, *CHANGING):
            await put_sku(ctx, item)
    finally:
        await ctx.store.close()


@pytest.fixture(scope="module")
def catalog_database(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated database holding the catalog, copied for every example."""
    path = tmp_path_factory.mktemp("replay") / "catalog.db"
    shutil.copyfile(sqlite_template, path)
    run_in_own_loop(put_catalog(path))
    return path


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(first=order_plans(first=True), later=st.lists(order_plans(), min_size=2, max_size=9))
def test_replaying_an_order_changes_nothing_and_a_failed_order_writes_nothing(
    catalog_database: Path, first: OrderPlan, later: list[OrderPlan]
) -> None:
    plans = [first, *later]
    with tempfile.TemporaryDirectory(prefix="keyturn-replay-") as folder:
        database = Path(folder) / "keyturn.db"
        shutil.copyfile(catalog_database, database)
        outcomes = run_in_own_loop(run_orders(database, plans))
    for outcome in outcomes:  # hypothesis notes only from the test's own thread
        event(outcome)


def test_the_catalog_covers_every_operation() -> None:
    """Every kind of the Operation union (a new one too) is in some SKU of the walk."""
    names = {op.name for item in (*CREATING, *CHANGING) for op in item.operations}
    assert names == {kind.name for kind in get_args(Operation)}
    anchors = {op.anchor for item in CHANGING for op in item.operations if isinstance(op, Renew)}
    assert anchors == set(RenewalAnchor)


async def renew_to_the_calendar_end(database: Path) -> tuple[Dump, Dump, BaseException | None]:
    """Create an entitlement with 90 days of grace, then renew it (by days, a legal term of
    under 100 years per unit) so that it would end on 9999-12-01."""
    created_end = START.replace(year=START.year + 1)
    target = created_end.replace(year=9999, month=12, day=1)
    base = target - 79 * timedelta(days=36_524)
    days = (base - created_end).days
    assert base == created_end + timedelta(days=days)
    assert 0 < days <= 36_524
    ctx = await build_context(
        settings_for(sqlite_url(database), auto_migrate=True), ManualClock(START)
    )
    try:
        await put_sku(ctx, sku("GRACE-90", Create("std", 1, "P1Y", grace=timedelta(days=90))))
        await put_sku(ctx, sku("RENEW-DAYS", Renew(f"P{days}D", RenewalAnchor.FROM_EXPIRY)))
        await put_sku(ctx, sku("RENEW-CENTURY", Renew("P36524D", RenewalAnchor.FROM_EXPIRY)))
        made = await fulfil_order(
            ctx, OrderRequest(SOURCE, "o-create", CUSTOMER, "", (OrderLine("GRACE-90", 1),))
        )
        entitlement_id = made.entitlements[0].entitlement.entitlement_id
        await fulfil_order(
            ctx,
            OrderRequest(
                SOURCE, "o-days", CUSTOMER, "", (OrderLine("RENEW-DAYS", 1, entitlement_id),)
            ),
        )
        before = await dump(ctx.store)
        late = OrderLine("RENEW-CENTURY", 79, entitlement_id)
        try:
            await fulfil_order(ctx, OrderRequest(SOURCE, "o-late", CUSTOMER, "", (late,)))
            error: BaseException | None = None
        except Exception as exc:  # whatever escapes the use case is what the API would map
            error = exc
        return before, await dump(ctx.store), error
    finally:
        await ctx.store.close()


def test_a_renewal_ending_near_the_calendar_end_fails_as_invalid_request(
    catalog_database: Path, tmp_path: Path
) -> None:
    """An order whose renewal leaves end date + grace past datetime.max must be refused as
    INVALID_REQUEST (like any term that ends too late) and write nothing; the server lets an
    OverflowError out of `fulfil_order` instead (an INTERNAL error on the API)."""
    database = tmp_path / "keyturn.db"
    shutil.copyfile(catalog_database, database)
    before, after, error = run_in_own_loop(renew_to_the_calendar_end(database))
    assert_same(before, after, "the refused renewal")
    assert error is not None, "an end date on 9999-12-01 with 90 days of grace was accepted"
    assert isinstance(error, DomainError), f"{type(error).__name__}: {error}"
    assert error.reason is Reason.INVALID_REQUEST
