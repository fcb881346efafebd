"""The cheap whole-database counts that the metrics endpoint reads at every scrape.

Kept apart from the repositories of the seat path so that a count can later be
replaced by a maintained counter (a row updated with each seat claim) without
touching the scrape code: each gauge is one method here.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from keyturn.server.domain.catalog import LicenseModel
from keyturn.server.domain.messages import MessageState

# The one SQL form of the live-seat rule; reused, not written again.
from .activation_repository import _live_condition
from .tables import activations, entitlements, events, outbox


class MetricsRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._db = connection

    async def seats_in_use(self, now: datetime, lapse_grace: timedelta) -> int:
        """Live activations of every entitlement: one count per license model."""
        total = 0
        for model in LicenseModel:
            query = (
                select(func.count())
                .select_from(
                    activations.join(
                        entitlements,
                        entitlements.c.entitlement_id == activations.c.entitlement_id,
                    )
                )
                .where(
                    entitlements.c.license_model == model.value,
                    _live_condition(model, now, lapse_grace),
                )
            )
            total += int((await self._db.execute(query)).scalar_one())
        return total

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
