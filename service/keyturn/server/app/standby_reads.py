"""Reads that may come from a streaming standby, and what its lag must not break.

A standby shows the primary's data as of a moment ago (its replication lag).
For rows that change, that is what the read RPCs promise: seats in use, dates
and lists as of that moment. For rows that are new it is not: an entitlement
created a moment ago must not be reported missing, nor a license key sold a
moment ago refused. So a read that finds nothing on the standby is asked again
of the primary, and only a miss there is a miss. Misses are rare (a wrong id or
key), so the primary carries little of this.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from keyturn.server.store.unit_of_work import ReadStore

from .context import AppContext

T = TypeVar("T")


async def found_on_standby_or_primary(
    ctx: AppContext, read: Callable[[ReadStore], Awaitable[T | None]]
) -> T | None:
    """`read` on the read store; None there is read again on the primary."""
    found = await read(ctx.read_store)
    if found is None and ctx.reads_from_standby:
        found = await read(ctx.store)
    return found
