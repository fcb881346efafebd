"""Writes down when each API token (or identity token) was last used, off the path of the
calls that use it.

Authenticating a call only notes the use (`note`: a clock read and a dict lookup). A
use is written at most once an interval per token and process (domain.token_use),
and the store's update is conditional, so replicas that all see a token in use write
it about once an interval between them. One background task does the writing, one
transaction at a time: recording never takes more than one pooled connection, and a
busy or unreachable database delays or loses a record, never a call. A use that
could not be written is tried again at the token's next use after the interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from keyturn.server.clock import Clock
from keyturn.server.domain.token_use import RECORD_INTERVAL, recorded_before, use_is_due
from keyturn.server.store.unit_of_work import Store, Transaction

log = logging.getLogger("keyturn.tokens")

MAX_REMEMBERED = 10_000  # tokens whose last write is remembered (as the token cache's bound)


# Writes one use: (transaction, id, used, recorded_before) -> whether it was written; a
# conditional update that repeats domain.token_use.use_is_due in SQL.
UseWriter = Callable[[Transaction, str, datetime, datetime], Awaitable[bool]]


async def write_token_use(tx: Transaction, token_id: str, used: datetime, before: datetime) -> bool:
    return await tx.tokens.record_use(token_id, used, before)


async def write_identity_use(
    tx: Transaction, user_id: str, used: datetime, before: datetime
) -> bool:
    return await tx.named_users.record_identity_use(user_id, used, before)


class UseRecorder:
    """The last uses of one kind of credential (`what`, for the logs), by id."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        write: UseWriter = write_token_use,
        *,
        what: str = "token",
        interval: timedelta = RECORD_INTERVAL,
    ) -> None:
        self._store = store
        self._clock = clock
        self._write = write
        self._what = what
        self._interval = interval
        self._written: dict[str, datetime] = {}  # token id: the use last queued for writing
        self._pending: dict[str, datetime] = {}  # token id: the use to write
        self._writer: asyncio.Task[None] | None = None

    def note(self, key: str, last_used: datetime | None) -> None:
        """The credential `key`, whose stored last use is `last_used` (None: none),
        authenticated a call just now: queue the use if one is due."""
        now = self._clock.now()
        known = [t for t in (self._written.get(key), last_used) if t]
        if not use_is_due(max(known, default=None), now, self._interval):
            return
        if len(self._written) >= MAX_REMEMBERED:
            self._written.clear()  # at worst one extra conditional update per token
        self._written[key] = now
        self._pending[key] = now
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending())

    async def _write_pending(self) -> None:
        while self._pending:
            uses, self._pending = self._pending, {}
            try:
                async with self._store.write() as tx:
                    # In id order: replicas writing the same tokens lock their rows alike.
                    for key, used in sorted(uses.items()):
                        await self._write(tx, key, used, recorded_before(used, self._interval))
            except Exception:  # best effort: a lost record must never reach a call
                log.warning(
                    "could not record the last use of %d %s(s); tried again at their "
                    "next use after %s",
                    len(uses),
                    self._what,
                    self._interval,
                    exc_info=True,
                )

    async def settle(self) -> None:
        """Until the uses noted so far are written (or failed to be)."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    async def close(self, within_seconds: float) -> None:
        """At shutdown: the noted uses get up to `within_seconds` to be written, then are
        given up (a frozen database must not hold the shutdown)."""
        try:
            async with asyncio.timeout(within_seconds):
                await self.settle()
        except TimeoutError:
            if self._writer is not None:
                self._writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._writer
            log.warning("gave up recording the last use of %ss at shutdown", self._what)
