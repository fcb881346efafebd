"""The audit trail: one row per change, with the actor that made it."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import audit_events


class AuditRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._db = connection

    async def append(
        self,
        *,
        create_time: datetime,
        actor: str,
        action: str,
        resource: str,
        entitlement_id: str | None,
        details: Mapping[str, Any],
    ) -> None:
        """Written in the transaction of the change it records, so one never stands
        without the other."""
        await self._db.execute(
            insert(audit_events).values(
                create_time=create_time,
                actor=actor,
                action=action,
                resource=resource,
                entitlement_id=entitlement_id,
                details=dict(details),
            )
        )
