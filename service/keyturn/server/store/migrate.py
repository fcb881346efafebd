"""Schema migrations with Alembic, run from code (`keyturn migrate`, server start, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from .database import READ_ONLY

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the schema to `revision`. Blocking: call it from a thread in async code."""
    command.upgrade(alembic_config(database_url), revision)


def head_revision() -> str | None:
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def known_revisions() -> set[str]:
    return {script.revision for script in ScriptDirectory(str(MIGRATIONS)).walk_revisions()}


def serves_schema(revision: str | None) -> bool:
    """Whether this code serves a database at `revision`: its own newest, or one it does
    not know, which only a newer Keyturn can have written. Migrations keep the code of the
    release before them working (expand, then contract: tests/e2e/test_mixed_versions.py),
    so a replica not yet upgraded stays in service while the database is migrated ahead
    of it. A known older revision is not served: the code would miss what it needs."""
    return revision is not None and (
        revision == head_revision() or revision not in known_revisions()
    )


async def current_revision(engine: AsyncEngine) -> str | None:
    def _read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        await connection.execution_options(**{READ_ONLY: True})
        return await connection.run_sync(_read)
