"""Numbering of committed events on PostgreSQL, after their transactions, many at once.

A writer inserts its events without a sequence and commits; then it waits for
a numbering round that started after its commit. A round calls
`keyturn_number_events()` (migration 0006), which, under one advisory lock,
gives every committed, unnumbered event the next numbers in insertion order.
Seat and order transactions therefore share no row: only the numberers take
turns, and each turn numbers whatever all replicas committed meanwhile.

Rounds also run every `poll_seconds`, so events whose writer died between
commit and numbering are numbered by any live process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg

log = logging.getLogger("keyturn.events")

BATCH = 5000
NUMBER = "SELECT keyturn_number_events($1)"


class EventNumbering:
    """One per process: commits that wrote events wait here for their numbers."""

    def __init__(
        self,
        pool: Callable[[], Awaitable[asyncpg.Pool]],
        on_numbered: Callable[[], None],
        poll_seconds: float = 1.0,
    ) -> None:
        self._pool = pool
        self._on_numbered = on_numbered
        self._poll_seconds = poll_seconds
        self._wanted = asyncio.Event()
        self._waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="keyturn-event-numbering")

    async def settle(self) -> None:
        """Return once a round that began after this call has ended.

        A failed round is logged, not raised: the change is committed either way,
        and its events are numbered by the next round that succeeds.
        """
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.start()
        self._wanted.set()
        await asyncio.shield(waiter)

    async def number_all(self) -> int:
        """Number every committed event that has no sequence yet; how many were."""
        total = 0
        pool = await self._pool()
        while True:
            numbered = int(await pool.fetchval(NUMBER, BATCH))  # one statement, autocommit
            total += numbered
            if numbered < BATCH:
                return total

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_seconds):
                    await self._wanted.wait()
            self._wanted.clear()
            waiters, self._waiters = self._waiters, []
            numbered = 0
            try:
                numbered = await self.number_all()
            except (
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                asyncpg.InternalClientError,  # a connection the database ended
                OSError,
            ) as error:
                log.warning("numbering events failed (retrying): %s", error)
            except Exception:
                # Whatever failed, the round's waiters must not wait for ever (their calls
                # would hang to their deadlines) and the next round must still run.
                log.exception("numbering events failed (retrying)")
            finally:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
            if numbered:
                self._on_numbered()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
