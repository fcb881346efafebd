"""Writes down when each API token was last used, off the path of the calls that use it.

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
from datetime import datetime, timedelta

from keyturn.server.clock import Clock
from keyturn.server.domain.token_use import RECORD_INTERVAL, recorded_before, use_is_due
from keyturn.server.store.token_repository import ApiToken
from keyturn.server.store.unit_of_work import Store

log = logging.getLogger("keyturn.tokens")

MAX_REMEMBERED = 10_000  # tokens whose last write is remembered (as the token cache's bound)


class TokenUseRecorder:
    def __init__(self, store: Store, clock: Clock, interval: timedelta = RECORD_INTERVAL) -> None:
        self._store = store
        self._clock = clock
        self._interval = interval
        self._written: dict[str, datetime] = {}  # token id: the use last queued for writing
        self._pending: dict[str, datetime] = {}  # token id: the use to write
        self._writer: asyncio.Task[None] | None = None

    def note(self, token: ApiToken) -> None:
        """`token` authenticated a call just now: queue the use if one is due."""
        now = self._clock.now()
        known = [t for t in (self._written.get(token.token_id), token.last_used_time) if t]
        if not use_is_due(max(known, default=None), now, self._interval):
            return
        if len(self._written) >= MAX_REMEMBERED:
            self._written.clear()  # at worst one extra conditional update per token
        self._written[token.token_id] = now
        self._pending[token.token_id] = now
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending())

    async def _write_pending(self) -> None:
        while self._pending:
            uses, self._pending = self._pending, {}
            try:
                async with self._store.write() as tx:
                    # In id order: replicas writing the same tokens lock their rows alike.
                    for token_id, used in sorted(uses.items()):
                        await tx.tokens.record_use(
                            token_id, used, recorded_before(used, self._interval)
                        )
            except Exception:  # best effort: a lost record must never reach a call
                log.warning(
                    "could not record the last use of %d token(s); tried again at their "
                    "next use after %s",
                    len(uses),
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
            log.warning("gave up recording the last use of tokens at shutdown")
