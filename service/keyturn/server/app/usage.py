"""Usage reports: the event log of one entitlement replayed into buckets (domain/usage.py).

Replayed, not rolled up: every seat change is an event written in its seat
transaction, so the log is already the exact history, and a lapse recorded late
(its effective time is when the seat was freed) needs no rewrite of buckets
already summed. The cost is one indexed read of the entitlement's events per
report. The lapses not recorded yet (nobody touched the entitlement since, and
no sweep ran) are read from the activations, as the seat rule sees them now.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from keyturn.server.domain.errors import entitlement_not_found, raise_if_invalid
from keyturn.server.domain.usage import (
    SEAT_ENDED,
    SEAT_TAKEN,
    Granularity,
    LimitChange,
    SeatChange,
    UsageBucket,
    report_violations,
    usage_buckets,
)
from keyturn.server.store.event_repository import StoredEvent
from keyturn.server.store.unit_of_work import ReadStore

from .context import AppContext
from .fulfillment import entitlement_id_violations
from .standby_reads import found_on_standby_or_primary
from .views import from_snapshot


@dataclass(frozen=True)
class UsageReport:
    entitlement_id: str
    granularity: Granularity
    buckets: tuple[UsageBucket, ...]


def seat_changes(history: list[StoredEvent]) -> list[SeatChange]:
    """The seat events of a history, each at its effective time (a late lapse's), in log
    order; order events and the like change no seat."""
    changes = []
    for event in history:
        taken, ended = event.type in SEAT_TAKEN, event.type in SEAT_ENDED
        if (taken or ended) and event.activation_id:
            when = event.effective_time or event.create_time
            changes.append(SeatChange(when, event.activation_id, takes=taken))
    return changes


async def usage_report(
    ctx: AppContext,
    *,
    entitlement_id: str,
    start: datetime | None,
    end: datetime | None,
    granularity: Granularity | None,
) -> UsageReport:
    """Peak, average and limit of seats in use for each bucket of [start, end), up to now."""
    raise_if_invalid(
        entitlement_id_violations(entitlement_id) + report_violations(start, end, granularity)
    )
    if start is None or end is None or granularity is None:  # named above
        raise AssertionError("a report's range is checked first")
    now = await ctx.seats.now()  # the instant seat decisions are taken at

    async def read(store: ReadStore) -> UsageReport | None:
        async with store.read() as tx:
            entitlement = await tx.entitlements.get(entitlement_id)
            if entitlement is None:
                return None
            until = min(end, now)
            history = await tx.events.effective_before(entitlement_id, until)
            pending = await tx.activations.pending_lapses(entitlement, now, ctx.lapse_grace)
        changes = seat_changes(history)
        changes += [SeatChange(lapse.freed_time, lapse.activation_id, False) for lapse in pending]
        limits = [
            LimitChange(
                e.create_time, from_snapshot(entitlement, e.snapshot).entitlement.seat_limit
            )
            for e in history
            if e.effective_time is None  # a late lapse's snapshot is of its recording
        ]
        buckets = usage_buckets(
            changes, limits, start=start, end=end, granularity=granularity, now=now
        )
        return UsageReport(entitlement_id, granularity, tuple(buckets))

    report = await found_on_standby_or_primary(ctx, read)
    if report is None:
        raise entitlement_not_found(entitlement_id)
    return report
