"""What every use case needs, assembled once by the composition root."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta

from keyturn.server.clock import Clock
from keyturn.server.leases.keyring import SigningKeys
from keyturn.server.sealing import Sealer
from keyturn.server.store.seats import SeatStore
from keyturn.server.store.unit_of_work import Store

from .event_feed import EventFeed


@dataclass
class AppContext:
    store: Store
    sealer: Sealer
    keys: SigningKeys
    clock: Clock
    seats: SeatStore
    feed: EventFeed  # new events for every change stream; started and stopped by the server
    issuer: str = "keyturn"
    lapse_grace: timedelta = timedelta(seconds=30)
    lapse_sweep_seconds: float = 60.0  # 0: no sweep
    stopping: asyncio.Event = field(default_factory=asyncio.Event)  # set on shutdown
