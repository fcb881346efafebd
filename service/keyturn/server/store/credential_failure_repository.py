"""Counts of wrong credentials per peer and fixed window, shared by every replica."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import credential_failures
from .upsert import insert_of


class CredentialFailureRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._db = connection

    async def count(self, peer: str, window_start: datetime) -> int:
        """One more failure of `peer` in the window; how many it has there now. One
        statement, so that concurrent counts of one peer add up on both backends."""
        table = credential_failures
        statement = (
            insert_of(self._db, table)
            .values(peer=peer, window_start=window_start, failures=1)
            .on_conflict_do_update(
                index_elements=["peer", "window_start"],
                set_={"failures": table.c.failures + 1},
            )
            .returning(table.c.failures)
        )
        failures: int = (await self._db.execute(statement)).scalar_one()
        return failures

    async def forget_before(self, window_start: datetime) -> None:
        """Drops the counts of windows that started before `window_start`."""
        await self._db.execute(
            delete(credential_failures).where(credential_failures.c.window_start < window_start)
        )
