"""The entitlement event log: one global, gap-free sequence of every change, in commit order.

Events are buffered during a transaction and written by `flush` as its last
step. `flush` takes the next numbers from the single `event_sequence` row,
whose row lock (SQLite: the write lock) is held until commit: a transaction
that numbers its events after another has committed, so a reader that has
seen sequence N has seen every number below it, and a rollback leaves no gap.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import event_sequence, events


@dataclass(frozen=True)
class NewEvent:
    entitlement_id: str
    type: str
    create_time: datetime
    snapshot: dict[str, Any]
    order_source: str = ""
    order_id: str = ""
    activation_id: str = ""


@dataclass(frozen=True)
class StoredEvent(NewEvent):
    sequence: int = 0


class EventRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._db = connection
        self._pending: list[NewEvent] = []

    async def append(self, event: NewEvent) -> None:
        """Record an event; it gets its sequence number when the transaction ends."""
        self._pending.append(event)

    async def flush(self) -> int:
        """Number and write the buffered events; the number written."""
        pending, self._pending = self._pending, []
        if not pending:
            return 0
        counter = (
            update(event_sequence)
            .where(event_sequence.c.id == 1)
            .values(last_sequence=event_sequence.c.last_sequence + len(pending))
            .returning(event_sequence.c.last_sequence)
        )
        last = int((await self._db.execute(counter)).scalar_one())
        first = last - len(pending) + 1
        await self._db.execute(
            insert(events),
            [
                {
                    "sequence": first + offset,
                    "entitlement_id": event.entitlement_id,
                    "type": event.type,
                    "create_time": event.create_time,
                    "order_source": event.order_source,
                    "order_id": event.order_id,
                    "activation_id": event.activation_id,
                    "snapshot": event.snapshot,
                }
                for offset, event in enumerate(pending)
            ],
        )
        return len(pending)

    async def last_sequence(self) -> int:
        query = select(func.coalesce(func.max(events.c.sequence), 0))
        return int((await self._db.execute(query)).scalar_one())

    async def after(self, sequence: int, limit: int, entitlement_id: str = "") -> list[StoredEvent]:
        """Events with a sequence above `sequence`, oldest first; of one entitlement if named."""
        query = select(events).where(events.c.sequence > sequence)
        if entitlement_id:
            query = query.where(events.c.entitlement_id == entitlement_id)
        rows = (await self._db.execute(query.order_by(events.c.sequence).limit(limit))).mappings()
        return [StoredEvent(**row) for row in rows]
