"""What every use case needs, assembled once by the composition root."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from keyturn.server.clock import Clock
from keyturn.server.leases.keyring import SigningKeys
from keyturn.server.sealing import Sealer
from keyturn.server.store.seats import SeatCheck, SeatStore
from keyturn.server.store.unit_of_work import ReadStore, Store

from .event_feed import EventFeed
from .token_use import UseRecorder

if TYPE_CHECKING:
    from .webhook_sender import EventPoster


@dataclass
class AppContext:
    store: Store  # the primary: every write, and the reads that must be exact
    sealer: Sealer
    keys: SigningKeys
    clock: Clock
    seats: SeatStore
    feed: EventFeed  # new events for every change stream; started and stopped by the server
    # The read-only RPCs read here (see app/standby_reads.py): a streaming standby when
    # KEYTURN_READ_DATABASE_URL is set, else the very objects above.
    read_store: ReadStore
    read_seats: SeatCheck
    identity_uses: UseRecorder  # when each identity token was last used; closed by the server
    issuer: str = "keyturn"
    api_token_lifetime: timedelta | None = timedelta(days=365)  # of new tokens; None: no end
    identity_idle_limit: timedelta | None = timedelta(days=180)  # unused this long: ends
    lapse_grace: timedelta = timedelta(seconds=30)
    lapse_sweep_seconds: float = 60.0  # 0: no sweep
    readiness_timeout: float = 2.0  # a database slower than this to answer is not ready
    stopping: asyncio.Event = field(default_factory=asyncio.Event)  # set on shutdown
    # Posts webhooks (RedeliverWebhooks by id, and the sender); set by the composition
    # root, which alone may hand app the API's JSON of an event. None: not built.
    webhooks: EventPoster | None = None

    @property
    def reads_from_standby(self) -> bool:
        return self.read_store is not self.store

    async def is_ready(self) -> bool:
        """The database answers with the newest schema, and so does the standby that serves
        the reads: without it those RPCs could only answer UNAVAILABLE."""
        if not await self.store.is_ready(self.readiness_timeout):
            return False
        return not self.reads_from_standby or await self.read_store.is_ready(self.readiness_timeout)

    async def close(self) -> None:
        if self.webhooks is not None:
            await self.webhooks.close()
        if self.reads_from_standby:
            await self.read_store.close()
        await self.store.close()
