"""After a process fault: is what the server acknowledged in the database as acknowledged?

Read with plain SQL, independent of the code under test: every acknowledged lease is
the stored activation's (same id, jti, entitlement and fingerprint), every acknowledged
release is stored, no activation was released unasked; the event log holds one
seat_activated event per activation and one seat_released per release, numbered
1..N without a gap (what the change stream would skip); the kept seat counts equal
what they count. `faults_line` prints a run's figures in the one form the hardening
runs share.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from keyturn.server.app.context import AppContext
from keyturn.server.domain.events import EventType
from keyturn.server.store.tables import activations, entitlements, events

from .activation_load import Ledger
from .faults import TALLY_FIELDS, FaultTally, record
from .seats import KeptCount, kept_counts, live_seats


@dataclass(frozen=True)
class LoggedEvent:
    sequence: int | None
    type: str
    entitlement_id: str
    activation_id: str


async def lost_writes(app: AppContext, ledger: Ledger) -> list[str]:
    """Each acknowledged write the database does not hold as acknowledged, and each
    release nobody asked for, described."""
    async with app.store.read() as tx:
        rows = {
            row["activation_id"]: row
            for row in (await tx.connection.execute(select(activations))).mappings()
        }
    lost = []
    for activation_id, lease in ledger.leases.items():
        row = rows.get(activation_id)
        if row is None:
            lost.append(f"{activation_id}: acknowledged activation, no row")
            continue
        stored = (row["lease_jti"], row["entitlement_id"], row["fingerprint"])
        acknowledged = (
            lease.claims["jti"],
            lease.claims["entitlement_id"],
            ledger.fingerprints[activation_id],
        )
        if stored != acknowledged:
            lost.append(f"{activation_id}: acknowledged {acknowledged}, stored {stored}")
        if activation_id in ledger.released and row["released_time"] is None:
            lost.append(f"{activation_id}: acknowledged release, not released")
        if activation_id not in ledger.asked_release and row["released_time"] is not None:
            lost.append(f"{activation_id}: released, never asked to be")
    return lost


async def event_log(app: AppContext) -> list[LoggedEvent]:
    """Every event, in insertion order."""
    async with app.store.read() as tx:
        result = await tx.connection.execute(
            select(
                events.c.sequence, events.c.type, events.c.entitlement_id, events.c.activation_id
            ).order_by(events.c.event_id)
        )
        return [LoggedEvent(*row) for row in result]


async def unnumbered_events(app: AppContext) -> int:
    """Committed events not yet given their sequence (PostgreSQL numbers after commit)."""
    async with app.store.read() as tx:
        query = select(func.count()).select_from(events).where(events.c.sequence.is_(None))
        return int((await tx.connection.execute(query)).scalar_one())


def sequence_gaps(log: list[LoggedEvent]) -> list[str]:
    """What keeps the log's sequences from being exactly 1..N."""
    missing = [e for e in log if e.sequence is None]
    numbered = sorted(e.sequence for e in log if e.sequence is not None)
    gaps = [f"{len(missing)} events without a sequence"] if missing else []
    if numbered != list(range(1, len(numbered) + 1)):
        skipped = sorted(set(range(1, (numbered or [0])[-1] + 1)) - set(numbered))
        gaps.append(f"sequences skipped: {skipped[:20]} (of {len(skipped)})")
    return gaps


async def seat_event_mismatches(app: AppContext, log: list[LoggedEvent]) -> list[str]:
    """Activations without their one seat_activated event, releases without their one
    seat_released event, and seat events of no such change."""
    async with app.store.read() as tx:
        rows = list(
            await tx.connection.execute(
                select(activations.c.activation_id, activations.c.released_time)
            )
        )
    expected = Counter({(EventType.SEAT_ACTIVATED.value, a): 1 for a, _ in rows})
    expected.update((EventType.SEAT_RELEASED.value, a) for a, released in rows if released)
    seat_types = {EventType.SEAT_ACTIVATED.value, EventType.SEAT_RELEASED.value}
    logged = Counter((e.type, e.activation_id) for e in log if e.type in seat_types)
    return [
        f"{kind} {activation_id}: {logged[(kind, activation_id)]} events, "
        f"{expected[(kind, activation_id)]} expected"
        for kind, activation_id in sorted(set(expected) | set(logged))
        if logged[(kind, activation_id)] != expected[(kind, activation_id)]
    ]


async def all_kept_counts(app: AppContext) -> dict[str, KeptCount]:
    """Entitlement id -> its kept count and what it counts, read in one transaction."""
    async with app.store.read() as tx:
        ids = (await tx.connection.execute(select(entitlements.c.entitlement_id))).scalars()
        return {i: await kept_counts(tx.connection, i) for i in list(ids)}


async def oversold(app: AppContext) -> int:
    """Live seats beyond each entitlement's seats, summed over the entitlements."""
    now = app.clock.now()
    over = 0
    for entitlement_id, kept in (await all_kept_counts(app)).items():
        over += max(0, await live_seats(app, entitlement_id, now) - kept.seats)
    return over


def sqlite_integrity(database: Path) -> str:
    """`PRAGMA integrity_check` of a SQLite file: 'ok' when it is sound."""
    connection = sqlite3.connect(database)
    try:
        return "\n".join(row[0] for row in connection.execute("PRAGMA integrity_check"))
    finally:
        connection.close()


def faults_line(name: str, **figures: object) -> None:
    """`FAULTS name: key=value ...`: the figures that are a FaultTally's go to the run's
    fault report (support/faults.py), the others are printed beside them."""
    tally = FaultTally(**{k: int(str(v)) for k, v in figures.items() if k in TALLY_FIELDS})
    record(name, tally, **{k: v for k, v in figures.items() if k not in TALLY_FIELDS})
