"""Engine creation: one place that knows the differences between SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

READ_ONLY = "keyturn_read_only"


@dataclass(frozen=True)
class DatabaseLimits:
    """How long a call may wait on the database before it is answered DATABASE_BUSY or
    DATABASE_UNAVAILABLE, rather than holding its connection (and its caller) until the
    caller gives up: a stopped, frozen or locked database must fail calls fast.

    `statement` and `lock` are enforced by PostgreSQL (statement_timeout, lock_timeout,
    sent at connect) and, for a database that no longer answers at all, by the driver a
    little later (`command_seconds`). Behind a transaction pooler the startup settings
    cannot be sent: set them on the database role instead (README).
    """

    connect: float = 5.0
    statement: float = 10.0
    lock: float = 2.0
    pool: float = 5.0

    @property
    def command_seconds(self) -> float:
        """The driver's own bound on a statement: past the server's, so that PostgreSQL
        says which limit it was when it can."""
        return self.statement + 2.0

    def server_settings(self) -> dict[str, str]:
        """The session settings PostgreSQL enforces (milliseconds; 0 would mean none)."""
        return {
            "statement_timeout": str(max(1, round(self.statement * 1000))),
            "lock_timeout": str(max(1, round(self.lock * 1000))),
        }


DEFAULT_LIMITS = DatabaseLimits()


def is_sqlite_url(url: str) -> bool:
    return url.startswith("sqlite")


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for other databases and in-memory ones."""
    if not is_sqlite_url(url):
        return None
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def sqlite_side_files(database: Path) -> tuple[Path, Path]:
    """The write-ahead log and shared-memory index SQLite keeps beside the file in WAL mode."""
    return Path(f"{database}-wal"), Path(f"{database}-shm")


def create_sqlite_file(url: str) -> None:
    """Create the SQLite file readable by this user only (0600), before SQLite opens it:
    SQLite would create it world-readable (0644), and it holds customer names and
    emails. SQLite gives its -wal and -shm files the database file's mode, so they are
    private too. An existing file is left as it is; where the file cannot be created
    (no such folder), SQLite's own open reports why."""
    path = sqlite_file(url)
    if path is not None:
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def create_engine(
    url: str,
    pool_size: int = 10,
    transaction_pooler: bool = False,
    limits: DatabaseLimits = DEFAULT_LIMITS,
) -> AsyncEngine:
    """An engine whose write transactions serialise where they must.

    SQLite: every write transaction starts with BEGIN IMMEDIATE, so two writers
    never interleave (the seat count cannot be read stale); reads start a
    plain deferred BEGIN. PostgreSQL: READ COMMITTED plus explicit row locks.
    Behind a transaction pooler (PgBouncer 1.18 keeps no prepared statement from
    one transaction to the next) statements are prepared under unique names and
    not cached. Neither engine puts statement parameters (customer names, emails)
    into the errors it raises or the lines it logs (`hide_parameters`).
    """
    if not is_sqlite_url(url):
        connect_args: dict[str, Any] = {
            "timeout": limits.connect,
            "command_timeout": limits.command_seconds,
        }
        if transaction_pooler:
            connect_args |= {
                "prepared_statement_cache_size": 0,
                "statement_cache_size": 0,
                "prepared_statement_name_func": _unique_statement_name,
            }
        else:
            connect_args["server_settings"] = limits.server_settings()
        return create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_timeout=limits.pool,
            pool_pre_ping=True,
            connect_args=connect_args,
            hide_parameters=True,
        )
    create_sqlite_file(url)
    engine = create_async_engine(
        url, connect_args={"timeout": limits.statement}, hide_parameters=True
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we send BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={round(limits.statement * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def database_dsn(url: str) -> str:
    """The libpq DSN of a SQLAlchemy `postgresql+asyncpg://` URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec(
        "json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


def _unique_statement_name() -> str:
    return f"__keyturn_{uuid.uuid4().hex}__"


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Nothing to reset when a connection goes back to the pool: the seat path sets no
    session state (no SET, LISTEN or session locks); an open transaction is rolled back
    by asyncpg itself. Saves the round trip of asyncpg's default reset."""


async def create_pool(
    url: str,
    size: int,
    transaction_pooler: bool = False,
    limits: DatabaseLimits = DEFAULT_LIMITS,
) -> asyncpg.Pool:
    """Connections for the seat path: prepared statements cached per connection, unless
    behind a transaction pooler that does not keep them (PgBouncer before 1.21)."""
    pool = await asyncpg.create_pool(
        database_dsn(url),
        min_size=1,
        max_size=size,
        init=_init_connection,
        reset=_keep_session,
        statement_cache_size=0 if transaction_pooler else 100,
        timeout=limits.connect,
        command_timeout=limits.command_seconds,
        server_settings=None if transaction_pooler else limits.server_settings(),
    )
    assert pool is not None
    return pool
