"""An empty database (no table at all) on either backend, removed at the end: where a
migration starts from, or a restore writes into."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .postgres import create_database, drop_database
from .threads import run_in_own_loop


@contextlib.contextmanager
def empty_database(
    request: pytest.FixtureRequest, backend: str, folder: Path, prefix: str
) -> Iterator[str]:
    """The SQLAlchemy URL of a new SQLite file in `folder` (not yet created), or of a new
    PostgreSQL database on the tests' server (the `pg_admin` fixture), dropped on exit."""
    if backend == "sqlite":
        folder.mkdir(parents=True, exist_ok=True)
        yield f"sqlite+aiosqlite:///{folder / f'{prefix}.db'}"
        return
    admin: str = request.getfixturevalue("pg_admin")
    name = f"keyturn_{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        yield run_in_own_loop(create_database(admin, name))
    finally:
        run_in_own_loop(drop_database(admin, name))
