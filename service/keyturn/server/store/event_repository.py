"""The entitlement event log: one global, gap-free sequence of every change, in commit order.

Events are buffered during a transaction and inserted by `flush` as its last
step. No writer takes a counter: on PostgreSQL an event is inserted without a
sequence, and after commit `EventNumbering` gives every committed event the
next numbers, one numberer at a time (see store/event_numbering.py). Readers
only see numbered events, so a reader that has seen sequence N has seen every
number below it, and a rollback leaves no gap. SQLite has one writer at a
time: there `flush` numbers at insert, under the write lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import events


@dataclass(frozen=True)
class NewEvent:
    entitlement_id: str
    type: str
    create_time: datetime
    snapshot: dict[str, Any]
    order_source: str = ""
    order_id: str = ""
    activation_id: str = ""
    effective_time: datetime | None = None  # before create_time: a lapse recorded late
    actor: str = ""  # who made the change (token:ID, device:ID, system:JOB); "": before 0010


@dataclass(frozen=True)
class StoredEvent(NewEvent):
    sequence: int = 0


STORED_COLUMNS = (
    events.c.sequence,
    events.c.entitlement_id,
    events.c.type,
    events.c.create_time,
    events.c.order_source,
    events.c.order_id,
    events.c.activation_id,
    events.c.snapshot,
    events.c.effective_time,
    func.coalesce(events.c.actor, "").label("actor"),
)


def event_row(event: NewEvent) -> dict[str, Any]:
    return {
        "entitlement_id": event.entitlement_id,
        "type": event.type,
        "create_time": event.create_time,
        "order_source": event.order_source,
        "order_id": event.order_id,
        "activation_id": event.activation_id,
        "snapshot": event.snapshot,
        "effective_time": event.effective_time,
        "actor": event.actor,
    }


class EventRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._db = connection
        self._numbers_at_insert = connection.dialect.name == "sqlite"
        self._pending: list[NewEvent] = []

    async def append(self, event: NewEvent) -> None:
        """Record an event; it is written when the transaction ends."""
        self._pending.append(event)

    async def flush(self) -> int:
        """Write the buffered events; the number written."""
        pending, self._pending = self._pending, []
        if not pending:
            return 0
        rows = [event_row(event) for event in pending]
        if self._numbers_at_insert:
            last = await self.last_sequence()
            for offset, row in enumerate(rows, start=1):
                row["sequence"] = last + offset
        await self._db.execute(insert(events), rows)
        return len(pending)

    async def last_sequence(self) -> int:
        query = select(func.coalesce(func.max(events.c.sequence), 0))
        return int((await self._db.execute(query)).scalar_one())

    async def after(self, sequence: int, limit: int, entitlement_id: str = "") -> list[StoredEvent]:
        """Events with a sequence above `sequence`, oldest first; of one entitlement if named."""
        query = select(*STORED_COLUMNS).where(events.c.sequence > sequence)
        if entitlement_id:
            query = query.where(events.c.entitlement_id == entitlement_id)
        rows = (await self._db.execute(query.order_by(events.c.sequence).limit(limit))).mappings()
        return [StoredEvent(**row) for row in rows]

    async def orders_of(self, entitlement_id: str) -> list[tuple[str, str]]:
        """(source, order id) of every order that changed the entitlement, oldest first."""
        first = func.min(events.c.event_id)
        query = (
            select(events.c.order_source, events.c.order_id)
            .where(events.c.entitlement_id == entitlement_id, events.c.order_source != "")
            .group_by(events.c.order_source, events.c.order_id)
            .order_by(first)
        )
        return [(row[0], row[1]) for row in await self._db.execute(query)]

    async def effective_before(self, entitlement_id: str, before: datetime) -> list[StoredEvent]:
        """Every committed event of one entitlement that took effect before `before` (a
        lapse recorded later included), numbered yet or not, in insertion order: the
        history a usage report replays."""
        effective = func.coalesce(events.c.effective_time, events.c.create_time)
        query = (
            select(*STORED_COLUMNS)
            .where(events.c.entitlement_id == entitlement_id, effective < before)
            .order_by(events.c.event_id)
        )
        rows = (await self._db.execute(query)).mappings()
        return [StoredEvent(**{**row, "sequence": row["sequence"] or 0}) for row in rows]

    async def newest_times(
        self, entitlement_id: str, types: Sequence[str], since: datetime, limit: int
    ) -> list[datetime]:
        """When the newest events of these types after `since` happened, newest first, at
        most `limit` (through ix_entitlement_events_entitlement_id_type_create_time).
        Committed ones, numbered or not: the caller holds the entitlement's lock."""
        query = (
            select(events.c.create_time)
            .where(
                events.c.entitlement_id == entitlement_id,
                events.c.type.in_(list(types)),
                events.c.create_time > since,
            )
            .order_by(events.c.create_time.desc())
            .limit(limit)
        )
        return list((await self._db.execute(query)).scalars())
