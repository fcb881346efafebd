"""The master secret and the files that hold secrets, as the `keyturn` command treats them.

Outside the quick start (SQLite with a generated secrets file) a missing or weak
KEYTURN_SECRET_KEY stops `keyturn serve` before it writes anything, with one line
that says how to make a good one. The quick start's files (the database, its -wal
and -shm, the secrets file) are created readable by their owner only, whatever the
umask; a database made open to others before is pointed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from keyturn.server.store.database import database_dsn

from support.subprocess_server import (
    run_cli,
    run_cli_async,
    run_to_the_end,
    serving,
    sqlite_settings,
)

SERVE = ["serve", "--listen", "127.0.0.1:0"]
HOW_TO = 'python -c "import secrets; print(secrets.token_urlsafe(48))"'
WEAK_SECRETS = {
    "short": ("Tr0ub4dor&3-but-31-characters!!", "too short: 31 characters, at least 32"),
    "one character": ("x" * 48, "too few different characters: 1, at least 8"),
    # Thue-Morse: never repeats itself, yet draws on two letters only.
    "two characters": (
        "abbabaabbaababbabaababbaabbabaab",
        "too few different characters: 2, at least 8",
    ),
    "a word repeated": ("correct-horse-" * 3, "a shorter part repeated"),
}


def mode_of(path: Path) -> str:
    return f"{stat.S_IMODE(path.stat().st_mode):03o}"


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """Processes started meanwhile inherit `mask`."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


async def signing_key_count(database_url: str) -> int:
    connection = await asyncpg.connect(database_dsn(database_url))
    try:
        count = await connection.fetchval("SELECT count(*) FROM signing_keys")
    finally:
        await connection.close()
    assert isinstance(count, int)
    return count


async def serve_until_exit(cwd: Path, settings: dict[str, str]) -> tuple[int, str, str]:
    """`keyturn serve` with two workers (a supervisor, as by default), to its exit."""
    result = await asyncio.to_thread(
        run_to_the_end,
        SERVE,
        cwd,
        {"KEYTURN_WORKERS": "2", **settings},
    )
    return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize("case", [*WEAK_SECRETS, "missing"])
async def test_serve_refuses_a_weak_or_missing_secret_in_one_line(
    postgres_url: str, tmp_path: Path, case: str
) -> None:
    settings = {"KEYTURN_DATABASE_URL": postgres_url}
    if case != "missing":
        secret, why = WEAK_SECRETS[case]
        settings["KEYTURN_SECRET_KEY"] = secret
    code, stdout, stderr = await serve_until_exit(tmp_path, settings)
    assert code == 2
    assert stdout == ""
    [line] = stderr.splitlines()
    if case == "missing":
        assert line.startswith("keyturn: KEYTURN_SECRET_KEY is required with PostgreSQL"), line
    else:
        assert line.startswith(f"keyturn: KEYTURN_SECRET_KEY is too weak ({why}); "), line
        assert secret not in line
    assert line.endswith(f"for example the output of: {HOW_TO}"), line
    assert await signing_key_count(postgres_url) == 0  # stopped before the first key


async def test_the_quick_start_makes_its_files_private_whatever_the_umask(
    tmp_path: Path,
) -> None:
    database = tmp_path / "data" / "keyturn.db"  # in a folder that does not exist yet
    settings = sqlite_settings(database)
    with umask(0):  # files would be created 0666 and 0644 by default
        async with serving(tmp_path, settings):
            await run_cli_async(["tokens", "create", "--scope", "read"], tmp_path, settings)
            # While the server has the database open, in WAL mode.
            files = [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
            modes = {path.name: mode_of(path) for path in files}
    secrets = Path(f"{database}.secrets")
    modes[secrets.name] = mode_of(secrets)
    assert modes == {
        "keyturn.db": "600",
        "keyturn.db-wal": "600",
        "keyturn.db-shm": "600",
        "keyturn.db.secrets": "600",
    }


def test_a_database_open_to_others_is_pointed_out(tmp_path: Path) -> None:
    database = tmp_path / "keyturn.db"
    settings = sqlite_settings(database)
    run_cli(["migrate"], tmp_path, settings)
    assert "open to other users" not in run_cli(["keys", "list"], tmp_path, settings).stderr
    database.chmod(0o644)  # as Keyturn made it before it made it private
    warned = run_cli(["keys", "list"], tmp_path, settings)
    assert (
        f"{database} is open to other users (mode 644): it holds secrets or customer data; "
        f"make it private with: chmod 600 {database}"
    ) in warned.stderr


def test_a_weak_secrets_file_is_refused_in_one_line(tmp_path: Path) -> None:
    database = tmp_path / "keyturn.db"
    secrets = Path(f"{database}.secrets")
    secrets.write_text("change-me " * 4 + "\n")
    result = run_to_the_end(SERVE, tmp_path, sqlite_settings(database))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"keyturn: the secret in {secrets} is too weak (a shorter part repeated); "
        f"set it to a random value of 32+ characters, for example the output of: {HOW_TO}"
    ]
