"""Whole-deployment numbers read from the database when the metrics are scraped.

They describe the database, not a process: with several workers or replicas
each scrape reads them once, wherever it is answered.
"""

from __future__ import annotations

from dataclasses import dataclass

from keyturn.server.store.metrics_repository import MetricsRepository

from .context import AppContext


@dataclass(frozen=True)
class DatabaseGauges:
    seats_in_use: int
    queued_messages: int
    last_event_sequence: int


async def read_database_gauges(ctx: AppContext) -> DatabaseGauges:
    """One read transaction, three counts (see store/metrics_repository.py)."""
    now = ctx.clock.now()
    async with ctx.store.read() as tx:
        counts = MetricsRepository(tx.connection)
        return DatabaseGauges(
            seats_in_use=await counts.seats_in_use(now, ctx.lapse_grace),
            queued_messages=await counts.queued_messages(),
            last_event_sequence=await counts.last_event_sequence(),
        )
