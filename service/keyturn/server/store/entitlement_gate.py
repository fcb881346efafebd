"""A bound on how many seat claims of one process wait on one entitlement at once.

Claims on one entitlement take its row lock in turn. Without a bound, a lock held
long (a slow order, another session) lets the claims queued behind it take every
pooled connection, and calls on other entitlements then wait for a connection
too. The gate lets `width` claims per entitlement hold connections (enough to keep
the lock busy); the others wait here, holding nothing, for at most `wait_seconds`
(the lock timeout), and are then answered DATABASE_BUSY.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from keyturn.server.domain.errors import database_busy


@dataclass
class _Lane:
    slots: asyncio.Semaphore
    users: int = field(default=0)


class EntitlementGate:
    def __init__(self, width: int, wait_seconds: float) -> None:
        if width < 1:
            raise ValueError("width must be at least 1")
        self._width = width
        self._wait_seconds = wait_seconds
        self._lanes: dict[str, _Lane] = {}

    @contextlib.asynccontextmanager
    async def passage(self, key: str) -> AsyncIterator[None]:
        """Hold one of the entitlement's `width` slots (its key hash or id) while inside."""
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane(asyncio.Semaphore(self._width))
        lane.users += 1
        try:
            if lane.slots.locked():
                try:
                    async with asyncio.timeout(self._wait_seconds):
                        await lane.slots.acquire()
                except TimeoutError as error:
                    raise database_busy("lock_timeout") from error
            else:
                await lane.slots.acquire()  # free: taken at once, no timer needed
            try:
                yield
            finally:
                lane.slots.release()
        finally:
            lane.users -= 1
            if lane.users == 0:
                del self._lanes[key]

    def waiting(self, key: str) -> int:
        """Claims inside or queued for `key` (for tests and metrics)."""
        lane = self._lanes.get(key)
        return 0 if lane is None else lane.users
