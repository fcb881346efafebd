"""Counting an entitlement's deactivations against its SKU's limit, on SQLAlchemy.

The rule is `domain.deactivation_limits`; this reads what it needs: the times of the
newest counted events within the period, at most `count` of them (the index on
entitlement, type and time finds them). The caller holds the entitlement's row lock,
so deactivations (and counted releases) of one entitlement count each other and
cannot pass the limit together. PgSeats counts the same events with asyncpg.
"""

from __future__ import annotations

from datetime import datetime

from keyturn.server.domain.deactivation_limits import ensure_allowed
from keyturn.server.domain.entitlement import Entitlement

from .unit_of_work import Transaction


async def ensure_within_limit(tx: Transaction, entitlement: Entitlement, now: datetime) -> None:
    """Raise DEACTIVATION_LIMIT_REACHED when one more deactivation (or counted release)
    at `now` would pass the entitlement's limit; nothing when it has none."""
    limit = entitlement.deactivation_limit
    if limit is None:
        return
    newest = await tx.events.newest_times(
        entitlement.entitlement_id,
        [t.value for t in limit.counted_types],
        limit.window_start(now),
        limit.count,
    )
    ensure_allowed(limit, newest, now)
