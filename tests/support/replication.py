"""A PostgreSQL primary and a streaming standby of it, both the tests' own.

`primary_and_standby()` makes a throwaway primary (wal_level replica, WAL
senders, replication allowed from loopback), copies it with `pg_basebackup -R
-X stream` into a standby, starts that as a hot standby on another free port
and yields both; on exit both are stopped and their folders removed. Only these
clusters are ever stopped or started here, never a shared server.

Replay on the standby can be paused and resumed, and `caught_up()` waits,
bounded, until the standby has replayed everything the primary has written.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from .postgres import LocalCluster, local_cluster

PRIMARY_SETTINGS = {
    "wal_level": "replica",
    "max_wal_senders": "4",
    "fsync": "off",  # the tests' clusters need no durability
    "full_page_writes": "off",
    "track_commit_timestamp": "on",  # what replication lag is measured from
    # synchronous_commit stays on: the WAL senders send only flushed WAL, and with it
    # off the WAL writer would flush (and so replicate) only every wal_writer_delay.
}
STANDBY_SETTINGS = {"hot_standby": "on", "fsync": "off"}
REPLAY_TIMEOUT_S = 60.0
POLL_S = 0.01  # between two looks at the standby's replay progress


@dataclass
class Replicated:
    primary: LocalCluster
    standby: LocalCluster

    def on_standby(self, url: str) -> str:
        """`url` of a database on the primary, as the standby serves it."""
        parts = urlsplit(url)
        netloc = f"{parts.username or 'postgres'}@127.0.0.1:{self.standby.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def stop_standby(self) -> None:
        self.standby.stop()

    def start_standby(self) -> None:
        """Start the stopped standby again on its port; it then catches up."""
        self.standby.start(STANDBY_SETTINGS, port=self.standby.port)


@contextlib.contextmanager
def primary_and_standby() -> Iterator[Replicated]:
    with local_cluster("primary") as primary, local_cluster("standby") as standby:
        primary.initdb()
        primary.allow_replication()
        primary.start(PRIMARY_SETTINGS)
        standby.basebackup_of(primary)
        standby.start(STANDBY_SETTINGS)
        yield Replicated(primary, standby)


async def _fetchval(url: str, query: str) -> object:
    connection = await asyncpg.connect(url, timeout=10)
    try:
        return await connection.fetchval(query)
    finally:
        await connection.close()


async def pause_replay(standby_admin: str) -> None:
    """Pause WAL replay: the standby's data stays as it is until `resume_replay`."""
    await _fetchval(standby_admin, "SELECT pg_wal_replay_pause()")
    state = "SELECT pg_get_wal_replay_pause_state()"
    await _until(lambda: _fetchval(standby_admin, state), "paused", "replay to pause")


async def resume_replay(standby_admin: str) -> None:
    await _fetchval(standby_admin, "SELECT pg_wal_replay_resume()")


async def caught_up(replicated: Replicated) -> None:
    """Wait until the standby has replayed all WAL the primary has written by now."""
    target = await _fetchval(replicated.primary.admin_url, "SELECT pg_current_wal_lsn()::text")
    query = f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"
    await _until(lambda: _fetchval(replicated.standby.admin_url, query), True, "the standby")


async def _until(look: Callable[[], Awaitable[object]], wanted: object, what: str) -> None:
    """Poll `look()` until it returns `wanted`, for at most REPLAY_TIMEOUT_S."""
    deadline = time.monotonic() + REPLAY_TIMEOUT_S
    while (found := await look()) != wanted:
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {REPLAY_TIMEOUT_S}s for {what}: {found!r}")
        await asyncio.sleep(POLL_S)  # replay progress has no notification to wait on
