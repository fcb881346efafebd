"""The audit trail: one row per change, with the actor that made it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import audit_events


@dataclass(frozen=True)
class AuditFilter:
    """ListAuditEvents filters; empty ones match everything. A `resource` ending in "/"
    matches every resource below it; `start_time` is inclusive, `end_time` exclusive."""

    actor: str = ""
    action: str = ""
    entitlement_id: str = ""
    resource: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None


@dataclass(frozen=True)
class AuditEvent:
    audit_id: int
    create_time: datetime
    actor: str
    action: str
    resource: str
    entitlement_id: str | None
    details: dict[str, Any] = field(default_factory=dict)


def _conditions(where: AuditFilter) -> list[ColumnElement[bool]]:
    t = audit_events
    found: list[ColumnElement[bool]] = []
    if where.actor:
        found.append(t.c.actor == where.actor)
    if where.action:
        found.append(t.c.action == where.action)
    if where.entitlement_id:
        found.append(t.c.entitlement_id == where.entitlement_id)
    if where.resource.endswith("/"):
        # Not LIKE: SQLite's ignores case and PostgreSQL's does not; this is exact on both.
        prefix = where.resource
        found.append(func.substr(t.c.resource, 1, len(prefix)) == prefix)
    elif where.resource:
        found.append(t.c.resource == where.resource)
    if where.start_time is not None:
        found.append(t.c.create_time >= where.start_time)
    if where.end_time is not None:
        found.append(t.c.create_time < where.end_time)
    return found


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

    async def list(self, where: AuditFilter, before: int | None, limit: int) -> list[AuditEvent]:
        """The records matching `where`, newest first, below audit id `before` if given."""
        t = audit_events
        query = select(t).where(*_conditions(where))
        if before is not None:
            query = query.where(t.c.audit_id < before)
        query = query.order_by(t.c.audit_id.desc()).limit(limit)
        rows = (await self._db.execute(query)).mappings()
        return [AuditEvent(**row) for row in rows]
