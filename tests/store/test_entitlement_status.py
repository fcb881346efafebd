"""One status rule, two places: `Entitlement.status` (Python) and its SQL twin
`status_condition` (the ListEntitlements filter). Every combination of cancelled,
suspended, end date, grace and trial is stored, then listed under each status; the
SQL must put each entitlement exactly where Python does, on every backend."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

from test_conformance import NOW, add_entitlements, entitlement

from keyturn.server.app.context import AppContext
from keyturn.server.domain.entitlement import Entitlement, Status
from keyturn.server.store.entitlement_repository import EntitlementFilter

DAY = timedelta(days=1)
ENDS: tuple[datetime | None, ...] = (None, NOW - 3 * DAY, NOW - DAY / 2, NOW, NOW + DAY)
GRACES = (timedelta(0), DAY)
HELD: tuple[datetime | None, ...] = (None, NOW - DAY)


def cases() -> list[Entitlement]:
    made = []
    combos = itertools.product(ENDS, GRACES, (False, True), HELD, HELD)
    for i, (end, grace, trial, cancelled, suspended) in enumerate(combos):
        made.append(
            entitlement(
                f"ent_{i:03d}",
                end_time=end,
                grace=grace,
                trial=trial,
                cancel_time=cancelled,
                suspend_time=suspended,
            )
        )
    return made


async def test_sql_status_equals_python_status_on_every_combination(app: AppContext) -> None:
    store = app.store
    made = cases()
    await add_entitlements(store, *made)
    expected = {
        status: {e.entitlement_id for e in made if e.status(NOW) is status} for status in Status
    }
    assert all(expected.values())  # every status has cases
    async with store.read() as tx:
        for status in Status:
            found = await tx.entitlements.list(EntitlementFilter(status=status), NOW, "", 1000)
            assert {e.entitlement_id for e in found} == expected[status], status
        stored = await tx.entitlements.get_many({e.entitlement_id for e in made})
    assert {e.entitlement_id: e.suspend_time for e in stored.values()} == {
        e.entitlement_id: e.suspend_time for e in made
    }


def test_precedence_cancelled_then_suspended_then_expired() -> None:
    ended = entitlement(end_time=NOW - DAY)
    held = entitlement(end_time=NOW - DAY, suspend_time=NOW - 2 * DAY)
    assert ended.status(NOW) is Status.EXPIRED
    assert held.status(NOW) is Status.SUSPENDED
    assert entitlement(trial=True, suspend_time=NOW).status(NOW) is Status.SUSPENDED
    gone = entitlement(end_time=NOW - DAY, suspend_time=NOW - DAY, cancel_time=NOW)
    assert gone.status(NOW) is Status.CANCELLED
