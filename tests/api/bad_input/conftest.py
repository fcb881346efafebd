"""One world per backend for the whole package: every module's cases share it."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from .world import World, world_on
from conftest import BACKENDS, sqlite_url
from support.postgres import create_database, drop_database
from support.threads import run_in_own_loop


@pytest.fixture(scope="package", params=BACKENDS)
def world_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated, empty database shared by every case of one backend."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("bad-input") / "keyturn.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield sqlite_url(path)
        return
    admin: str = request.getfixturevalue("pg_admin")
    template: str = request.getfixturevalue("pg_template")
    name = f"keyturn_bad_{uuid.uuid4().hex[:12]}"
    yield run_in_own_loop(create_database(admin, name, template=template))
    run_in_own_loop(drop_database(admin, name))


@pytest.fixture(scope="package")
async def world(world_database_url: str) -> AsyncIterator[World]:
    async with world_on(world_database_url) as built:
        yield built
