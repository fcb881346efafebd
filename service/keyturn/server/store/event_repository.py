"""The entitlement event log: one global sequence of every change."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert
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


class EventRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._db = connection

    async def append(self, event: NewEvent) -> None:
        await self._db.execute(
            insert(events).values(
                entitlement_id=event.entitlement_id,
                type=event.type,
                create_time=event.create_time,
                order_source=event.order_source,
                order_id=event.order_id,
                activation_id=event.activation_id,
                snapshot=event.snapshot,
            )
        )
