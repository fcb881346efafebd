"""The cheap whole-database counts that the metrics endpoint reads at every scrape.

Kept apart from the repositories of the seat path: each gauge is one method here.
Seats in use come from the counts kept on the entitlements (seats_held), so a
scrape reads no released history.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from keyturn.server.domain.messages import MessageState

from .activation_repository import in_use_column
from .tables import events, outbox


class MetricsRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._db = connection

    async def seats_in_use(self, now: datetime, lapse_grace: timedelta) -> int:
        """Seats in use over every entitlement: the kept counts, less pending lapses."""
        query = select(func.coalesce(func.sum(in_use_column(now, lapse_grace)), 0))
        return int((await self._db.execute(query)).scalar_one())

    async def queued_messages(self) -> int:
        """Emails of the outbox not yet sent nor given up on (due or waiting for a retry)."""
        query = (
            select(func.count())
            .select_from(outbox)
            .where(outbox.c.state == MessageState.QUEUED.value)
        )
        return int((await self._db.execute(query)).scalar_one())

    async def last_event_sequence(self) -> int:
        """The sequence of the newest event written (0: none yet)."""
        query = select(func.coalesce(func.max(events.c.sequence), 0))
        return int((await self._db.execute(query)).scalar_one())
