"""The lapse sweep: writes `lease lapsed` events for leases nobody renewed.

Seat counting never needs it (a lapsed lease counts as free the moment it
lapses); it only makes the change stream tell sync consumers, even when no
device uses the entitlement again.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from keyturn.server.domain.entitlement import Entitlement
from keyturn.server.domain.events import EventType
from keyturn.server.domain.seats import Lapse
from keyturn.server.store.event_repository import NewEvent

from .audit import system_actor
from .context import AppContext
from .views import new_event

log = logging.getLogger("keyturn.lapses")
SWEEP_BATCH = 100
# A lapse is nobody's act (a lease ran out): its events are the system's, named after what
# noticed it, the sweep or a seat call of another device on the same entitlement.
SWEEP = system_actor("lapse-sweep")
NOTICED_BY_SEAT_CALL = system_actor("lease-expiry")


def lapse_events(
    entitlement: Entitlement,
    lapsed: tuple[Lapse, ...],
    now: datetime,
    seats_in_use: int,
    *,
    actor: str = NOTICED_BY_SEAT_CALL,
) -> list[NewEvent]:
    """A LEASE_LAPSED event for each lapse just noticed: recorded now, effective when the
    seat rule freed its seat (what the usage reports count)."""
    return [
        new_event(
            EventType.LEASE_LAPSED,
            entitlement,
            now,
            seats_in_use,
            activation_id=lapse.activation_id,
            effective_time=lapse.freed_time,
            actor=actor,
        )
        for lapse in lapsed
    ]


async def sweep_lapses(ctx: AppContext) -> int:
    """Record every lapse not yet recorded; returns how many were. One transaction per
    entitlement, under its lock, so it never races a seat claim noticing the same lapse."""
    recorded = 0
    while True:
        now = await ctx.seats.now()  # as seat claims judge lapses, on every replica
        async with ctx.store.read() as tx:
            ids = await tx.activations.with_unnoticed_lapses(now, ctx.lapse_grace, SWEEP_BATCH)
        if not ids:
            return recorded
        for entitlement_id in ids:
            async with ctx.store.write() as tx:
                entitlement = await tx.entitlements.get(entitlement_id, lock=True)
                if entitlement is None:
                    continue
                lapsed = await tx.activations.note_lapses(entitlement, now, ctx.lapse_grace)
                in_use = await tx.activations.seats_held(entitlement_id)
                for event in lapse_events(entitlement, lapsed, now, in_use, actor=SWEEP):
                    await tx.events.append(event)
            recorded += len(lapsed)


async def run_lapse_sweeps(ctx: AppContext, interval: float) -> None:
    """Sweep every `interval` seconds until cancelled; a failed sweep is retried next time."""
    while True:
        await asyncio.sleep(interval)
        try:
            recorded = await sweep_lapses(ctx)
        except Exception:
            log.exception("lapse sweep failed; retrying in %ss", interval)
            continue
        if recorded:
            log.info("recorded %d lapsed leases", recorded)
        else:
            log.debug("lapse sweep: no lapsed lease to record")
