"""The change feed of one process: one reader of new events that every open stream follows.

Without it each WatchEntitlementEvents stream read the database on its own every
poll period, so 2,000 idle streams kept a core busy. Here one task reads new
events (at once when a commit of this process rings the store's bell, else every
`poll_seconds` for those of other replicas), builds each event's view once and
keeps the newest `tail_size` views in memory. A stream whose cursor is inside
that tail takes its events from there and, once it has them all, sleeps until
the tail grows; a stream behind the tail (resumed from an old sequence, or too
slow for a burst) reads the database in batches until it reaches the tail.

The tail holds every event with a sequence in (floor, last], in order, so a
stream at or above `floor` gets from it exactly the events after its cursor:
nothing skipped, nothing repeated. The feed reads only while a stream is open;
when the last one closes it drops its tail, and starts a new one at the end of
the log when the next opens. It also admits streams: at most `max_streams` at once.

The rows come from the read store, a streaming standby when one is configured;
the wake-ups from this process's commits on the primary (`bell`). A standby
always shows a prefix 1..N of the numbered events: the numbering rounds of
store/event_numbering.py commit one after the other (an advisory lock held to
commit), each numbering the events after the last, and a standby replays
commits in their order. So reading after a cursor there skips and repeats
nothing either; it may only show the newest events later. A commit of this
process may ring before the standby has replayed it: its events then come with
the next poll, up to `poll_seconds` later.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import Iterator

from keyturn.server.domain.errors import watch_streams_exhausted
from keyturn.server.store.unit_of_work import CommitBell, ReadStore

from .event_views import EventView, event_views

log = logging.getLogger("keyturn.event_feed")

TAIL_SIZE = 4096
READ_BATCH = 500


class EventFeed:
    """New events of the whole deployment, read once per process and kept as a bounded tail."""

    def __init__(
        self,
        store: ReadStore,
        bell: CommitBell,
        *,
        poll_seconds: float,
        max_streams: int,
        tail_size: int = TAIL_SIZE,
    ) -> None:
        self._store = store
        self._bell = bell
        self.poll_seconds = poll_seconds
        self.max_streams = max_streams
        self._tail_size = tail_size
        self._views: list[EventView] = []
        self._sequences: list[int] = []  # of `_views`, for bisecting
        self._floor: int | None = None  # None: no tail (not reading)
        self._last = 0
        self._grown = asyncio.Event()
        self._open_streams = 0
        self._wanted = asyncio.Event()  # set while a stream is open
        self._task: asyncio.Task[None] | None = None

    @property
    def open_streams(self) -> int:
        return self._open_streams

    @property
    def last_sequence(self) -> int | None:
        """The newest sequence the tail holds up to; None when there is no tail."""
        return None if self._floor is None else self._last

    def start(self) -> None:
        """Start the reader (once, however many servers share this process's context)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="keyturn-event-feed")

    async def stop(self) -> None:
        """Stop reading and wake every stream, so it sees the server stopping."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._drop_tail()
        self._ring()

    @contextlib.contextmanager
    def stream_slot(self) -> Iterator[None]:
        """Hold one of the `max_streams` slots for as long as a stream is open."""
        if self._open_streams >= self.max_streams:
            raise watch_streams_exhausted(self.max_streams)
        self._open_streams += 1
        self._wanted.set()
        try:
            yield
        finally:
            self._open_streams -= 1
            if not self._open_streams:
                self._wanted.clear()

    def armed(self) -> asyncio.Event:
        """Set when the tail next grows (or the feed stops). Take it before calling `after`."""
        return self._grown

    def after(self, cursor: int, limit: int) -> list[EventView] | None:
        """Up to `limit` views of the tail after `cursor`, oldest first.

        None when the tail does not reach back to `cursor` (or there is no tail):
        those events are to be read from the database."""
        if self._floor is None or cursor < self._floor:
            return None
        start = bisect.bisect_right(self._sequences, cursor)
        return self._views[start : start + limit]

    async def _run(self) -> None:
        while True:
            if not self._open_streams:
                self._drop_tail()
                await self._wanted.wait()
            signal = self._bell.armed()
            try:
                read = await self._read()
            except Exception:
                log.exception("reading new events failed; retrying in %ss", self.poll_seconds)
                read = 0
            if read < READ_BATCH:  # a full batch: there may be more right away
                await self._bell.wait(signal, self.poll_seconds)

    async def _read(self) -> int:
        """Read the next batch into the tail. Without a tail, start one holding the newest
        READ_BATCH events, so that streams resuming just behind the end read nothing."""
        starting = self._floor is None
        async with self._store.read() as tx:
            after = self._last
            if starting:
                after = max(0, await tx.events.last_sequence() - READ_BATCH)
            found = await tx.events.after(after, READ_BATCH)
            views = await event_views(tx, found)
        if starting:
            self._floor = self._last = after
        if views:
            self._append(views)
        elif starting:
            self._ring()  # streams waiting for a tail look again
        return len(found)

    def _drop_tail(self) -> None:
        self._floor = None
        self._views.clear()
        self._sequences.clear()

    def _append(self, views: list[EventView]) -> None:
        self._views.extend(views)
        self._sequences.extend(v.event.sequence for v in views)
        self._last = self._sequences[-1]
        excess = len(self._views) - self._tail_size
        if excess > 0:
            self._floor = self._sequences[excess - 1]
            del self._views[:excess]
            del self._sequences[:excess]
        self._ring()

    def _ring(self) -> None:
        self._grown.set()
        self._grown = asyncio.Event()
