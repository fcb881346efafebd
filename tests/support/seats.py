"""Seats counted with plain SQL, independent of the seat code under test.

`live_seats` counts the activations that hold a floating seat now; `Monitor` does
so over and over while a storm or a fault lasts and keeps every count; `kept_counts`
reads the count kept on the entitlement (`seats_held`) beside the activations it
must equal (unreleased, lapse not recorded).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from keyturn.server.app.context import AppContext
from keyturn.server.store.tables import activations, entitlements


async def live_seats(app: AppContext, entitlement_id: str, now: datetime) -> int:
    """Live seats of a floating entitlement at `now`."""
    async with app.store.read() as tx:
        result = await tx.connection.execute(
            text(
                "SELECT count(*) FROM activations WHERE entitlement_id = :id "
                "AND released_time IS NULL AND lease_expire_time > :now"
            ),
            {"id": entitlement_id, "now": now},
        )
    return int(result.scalar_one())


class Monitor:
    """Counts live seats again and again until stopped; remembers every count. Paused, it
    leaves the CPU to others (while no server runs, say, when nothing can change)."""

    def __init__(self, app: AppContext, entitlement_id: str) -> None:
        self._app = app
        self._entitlement_id = entitlement_id
        self.samples: list[int] = []
        self._stop = asyncio.Event()
        self._counting = asyncio.Event()
        self._counting.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            await self._counting.wait()
            now = self._app.clock.now()
            self.samples.append(await live_seats(self._app, self._entitlement_id, now))

    def pause(self) -> None:
        self._counting.clear()

    def resume(self) -> None:
        self._counting.set()

    def stop(self) -> None:
        self._stop.set()
        self._counting.set()


@dataclass(frozen=True)
class KeptCount:
    seats: int  # the entitlement's seats
    held: int  # entitlements.seats_held
    unlapsed: int  # its activations unreleased and with no lapse recorded


async def kept_counts(connection: AsyncConnection, entitlement_id: str) -> KeptCount:
    """The kept count of one entitlement and what it counts, in the caller's transaction."""
    seats, held = (
        await connection.execute(
            select(entitlements.c.seats, entitlements.c.seats_held).where(
                entitlements.c.entitlement_id == entitlement_id
            )
        )
    ).one()
    unlapsed = (
        await connection.execute(
            select(func.count())
            .select_from(activations)
            .where(
                activations.c.entitlement_id == entitlement_id,
                activations.c.released_time.is_(None),
                activations.c.lapse_recorded_time.is_(None),
            )
        )
    ).scalar_one()
    return KeptCount(int(seats), int(held), int(unlapsed))
