"""A fresh PostgreSQL database for one benchmark run, dropped at the end whatever happens.

The server is found the way the tests find theirs (tests/support/postgres.py):
`--admin-url` when given, else KEYTURN_TEST_PG_ADMIN_URL, else 127.0.0.1:5432 as
`postgres`, else a throwaway cluster started from the local PostgreSQL binaries.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from support.postgres import create_database, drop_database, postgres_admin_url


@dataclass(frozen=True)
class Database:
    """One database of the run, under the three spellings its clients want."""

    name: str
    admin_url: str  # postgresql://user@host:port/postgres (asyncpg, pgbench)

    @property
    def dsn(self) -> str:
        """postgresql://... of this database (asyncpg)."""
        parts = urlsplit(self.admin_url)
        return urlunsplit(("postgresql", parts.netloc, f"/{self.name}", parts.query, ""))

    @property
    def sqlalchemy_url(self) -> str:
        """postgresql+asyncpg://... of this database (KEYTURN_DATABASE_URL)."""
        parts = urlsplit(self.admin_url)
        return urlunsplit(("postgresql+asyncpg", parts.netloc, f"/{self.name}", parts.query, ""))

    def libpq_env(self) -> dict[str, str]:
        """PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE for libpq tools (pgbench)."""
        parts = urlsplit(self.admin_url)
        env = {
            "PGHOST": parts.hostname or "127.0.0.1",
            "PGPORT": str(parts.port or 5432),
            "PGUSER": parts.username or "postgres",
            "PGDATABASE": self.name,
        }
        if parts.password:
            env["PGPASSWORD"] = parts.password
        return env


def admin_dsn(url: str) -> str:
    """A server URL as asyncpg takes it: any database on it, +driver suffix dropped."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"{url!r} is not a PostgreSQL URL (postgresql://user@host:port/db)")
    return urlunsplit(("postgresql", parts.netloc, "/postgres", parts.query, ""))


@contextlib.contextmanager
def admin_url(given: str | None) -> Iterator[str]:
    """The superuser URL of the server to use (a throwaway cluster lives as long as this)."""
    if given:
        yield admin_dsn(given)
        return
    with postgres_admin_url() as url:
        yield url


@contextlib.contextmanager
def fresh_database(admin: str) -> Iterator[Database]:
    """A new, empty database, dropped (its sessions disconnected) on the way out."""
    name = f"keyturn_bench_{uuid.uuid4().hex[:12]}"
    asyncio.run(create_database(admin, name))
    try:
        yield Database(name, admin)
    finally:
        asyncio.run(drop_database(admin, name))
