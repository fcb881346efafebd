"""Events as the API shows them: each with the entitlement as it stood right after it."""

from __future__ import annotations

from dataclasses import dataclass

from keyturn.server.store.event_repository import StoredEvent
from keyturn.server.store.unit_of_work import Transaction

from .views import EntitlementView, from_snapshot


@dataclass(frozen=True, eq=False)
class EventView:
    """An event with the entitlement as it stood right after it.

    Compared by identity: the change feed hands the same view to every stream, and
    the API may remember what it built for one view object.
    """

    event: StoredEvent
    entitlement: EntitlementView


async def event_views(tx: Transaction, events: list[StoredEvent]) -> list[EventView]:
    """The views of `events`: their snapshots on top of the entitlements' current rows."""
    current = await tx.entitlements.get_many({e.entitlement_id for e in events})
    return [EventView(e, from_snapshot(current[e.entitlement_id], e.snapshot)) for e in events]
