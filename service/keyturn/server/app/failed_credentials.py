"""The budget of wrong credentials per peer, counted in the database so that it holds
across workers and replicas.

A wrong credential is counted (one upsert, in its own transaction, before the call is
answered). A call whose count is past the budget is answered RATE_LIMITED instead of
its wrong-credential reason, so that however many guesses are in flight at once, on
however many processes, at most the budget of them learn that they missed. Once a
peer reached its budget, the process that saw it refuses the peer's calls with a
credential at once until the window ends, without asking the database again; another
process learns it at the peer's next failure there. Counting is best effort: a
database that cannot count loses the count, never the call.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from keyturn.server.clock import Clock
from keyturn.server.domain.abuse_limits import seconds_until, window_start
from keyturn.server.domain.errors import DomainError, rate_limited
from keyturn.server.store.unit_of_work import Store

log = logging.getLogger("keyturn.limits")

MAX_BLOCKED = 100_000  # peers remembered as over budget (past windows are dropped first)


class FailedCredentials:
    """At most `budget` wrong credentials per peer and `window`."""

    def __init__(self, store: Store, clock: Clock, budget: int, window: timedelta) -> None:
        self._store = store
        self._clock = clock
        self.budget = budget
        self.window = window
        self._blocked: dict[str, datetime] = {}  # peer: end of the window it is blocked in

    def refusal(self, peer: str) -> DomainError | None:
        """RATE_LIMITED if `peer` used up its budget in the current window, else None."""
        end = self._blocked.get(peer)
        if end is None:
            return None
        now = self._clock.now()
        if now >= end:
            del self._blocked[peer]
            return None
        return rate_limited("failed_credentials", seconds_until(now, end))

    async def record(self, peer: str) -> DomainError | None:
        """Counts one wrong credential of `peer`: RATE_LIMITED if that is past its
        budget (the answer to give instead), else None."""
        now = self._clock.now()
        start = window_start(now, self.window)
        try:
            async with self._store.write() as tx:
                failures = await tx.credential_failures.count(peer, start)
                if failures == 1:  # a peer's first failure of the window: drop older rows
                    await tx.credential_failures.forget_before(start - self.window)
        except Exception:
            log.warning("could not count a failed credential of %s", peer, exc_info=True)
            return None
        end = start + self.window
        if failures >= self.budget:
            self._block(peer, end, now)
        if failures > self.budget:
            return rate_limited("failed_credentials", seconds_until(now, end))
        return None

    def _block(self, peer: str, until: datetime, now: datetime) -> None:
        if len(self._blocked) >= MAX_BLOCKED:
            self._blocked = {p: end for p, end in self._blocked.items() if end > now}
            if len(self._blocked) >= MAX_BLOCKED:
                self._blocked.clear()
        self._blocked[peer] = until
