"""Backup and restore of a PostgreSQL database with `pg_dump` and `pg_restore`.

The backup opens a REPEATABLE READ transaction, exports its snapshot and has
`pg_dump --snapshot` dump exactly that (custom format): the recovery point it tells
(the time, the last event number) is the dump's own, and servers keep writing
meanwhile. Events committed but not yet numbered at that instant (the numbering runs
just after commit, store/event_numbering.py) are in the dump unnumbered; the first
server on the restored database numbers them, after every event numbered before.

The master secret (KEYTURN_SECRET_KEY) is in no table, so not in the dump. A
restore first reads the dump's schema version and signing keys (`pg_restore
--data-only` of those two tables) and checks that the secret it is given opens
them, then runs `pg_restore --single-transaction --clean`: the target ends as the
backup, or as it was. Events the dump holds unnumbered are numbered right after, as
their writers' servers would have done.

The programs are looked up on PATH, then in the newest /usr/lib/postgresql/*/bin
(Debian's layout); pg_dump must be as new as the server.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from .backup import (
    PG_DUMP_MAGIC,
    SCHEMA_TABLE,
    BackupError,
    RecoveryPoint,
    Restored,
    check_backup_file,
    check_known_revision,
    check_new_file,
    check_secret_opens,
    check_target_empty,
    contents_of,
    one_line,
    partial_path,
    table_names,
    tables_with_data,
)
from .database import create_pool
from .event_numbering import EventNumbering

TOOLS_GLOB = "/usr/lib/postgresql/*/bin"
COPY_START = re.compile(r"^COPY (?:\S+\.)?\"?(?P<table>\w+)\"? \((?P<columns>[^)]*)\) FROM stdin;$")
COPY_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def find_tool(name: str) -> Path:
    """`name` on PATH, else in the newest PostgreSQL version folder."""
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    versions = sorted(
        (folder for folder in Path("/").glob(TOOLS_GLOB.lstrip("/")) if (folder / name).is_file()),
        key=lambda folder: [int(n) for n in re.findall(r"\d+", folder.parent.name)],
    )
    if not versions:
        raise BackupError(
            f"{name} is not on PATH nor under {TOOLS_GLOB}: install PostgreSQL's client "
            "programs (Debian: postgresql-client) as new as the server"
        )
    return versions[-1] / name


def libpq_target(database_url: str) -> tuple[str, dict[str, str]]:
    """The libpq URI of a SQLAlchemy URL, and its password as PGPASSWORD (kept out of
    the command line, which other users of the machine can read)."""
    url = make_url(database_url).set(drivername="postgresql")
    environment = {"PGPASSWORD": url.password} if url.password else {}
    query = dict(url.query)
    if "ssl" in query:  # asyncpg's name for libpq's sslmode
        query["sslmode"] = query.pop("ssl")
    url = url.set(password=None, query=query)
    return url.render_as_string(hide_password=False), environment


def shown(database_url: str) -> str:
    """The URL as people may see it (no password)."""
    return make_url(database_url).render_as_string(hide_password=True)


async def _run(tool: str, arguments: Sequence[str], environment: dict[str, str]) -> str:
    """Run a PostgreSQL program to completion; its stdout, or BackupError with its error."""
    program = find_tool(tool)
    try:
        process = await asyncio.create_subprocess_exec(
            str(program),
            *arguments,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **environment},
        )
    except OSError as error:
        raise BackupError(f"{program} cannot run: {error}") from None
    stdout, stderr = await process.communicate()
    if process.returncode != 0:
        raise BackupError(f"{tool} failed: {_first_error(tool, stderr.decode(errors='replace'))}")
    return stdout.decode(errors="replace")


def _first_error(tool: str, stderr: str) -> str:
    """The first error line of a PostgreSQL program, without its `tool: error:` prefix."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line.lower()]
    line = (errors or lines or ["no message"])[0]
    return re.sub(rf"^{re.escape(tool)}: (error: )?", "", line)


@asynccontextmanager
async def _connected(database_url: str) -> AsyncIterator[AsyncConnection]:
    """One connection to the database; failures to reach or read it as BackupError."""
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        try:
            connection = await engine.connect()
        except (SQLAlchemyError, OSError) as error:  # refused, unknown host or database...
            raise BackupError(f"database {shown(database_url)}: {one_line(error)}") from None
        try:
            yield connection
        except SQLAlchemyError as error:
            raise BackupError(f"database {shown(database_url)}: {one_line(error)}") from None
        finally:
            await connection.close()
    finally:
        await engine.dispose()


async def backup_postgres(database_url: str, target: Path, *, force: bool) -> RecoveryPoint:
    """`pg_dump --format=custom` of one exported snapshot into `target`."""
    check_new_file(target, force)
    uri, environment = libpq_target(database_url)
    partial = partial_path(target)
    partial.unlink(missing_ok=True)
    async with _connected(database_url) as connection:
        snapshot_reader = await connection.execution_options(
            isolation_level="REPEATABLE READ", postgresql_readonly=True
        )
        async with snapshot_reader.begin():
            row = (await snapshot_reader.execute(text("SELECT pg_export_snapshot(), now()"))).one()
            snapshot, taken_at = str(row[0]), row[1]
            assert isinstance(taken_at, datetime)
            contents = await snapshot_reader.run_sync(contents_of, shown(database_url))
            try:
                await _run(
                    "pg_dump",
                    ["--format=custom", f"--snapshot={snapshot}", f"--file={partial}", uri],
                    environment,
                )
                os.chmod(partial, 0o600)  # customers' data and sealed keys
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)
    return RecoveryPoint(taken_at, contents)


def _unescape(field: str) -> str | None:
    """One field of COPY's text format."""
    if field == "\\N":
        return None
    return re.sub(r"\\(.)", lambda m: COPY_ESCAPES.get(m[1], m[1]), field)


def copy_rows(script: str) -> dict[str, list[dict[str, str | None]]]:
    """The rows of every `COPY ... FROM stdin` block of a SQL script, by table."""
    tables: dict[str, list[dict[str, str | None]]] = {}
    lines = iter(script.splitlines())
    for line in lines:
        start = COPY_START.match(line)
        if start is None:
            continue
        columns = [column.strip().strip('"') for column in start["columns"].split(",")]
        rows = tables.setdefault(start["table"], [])
        for row in lines:
            if row == "\\.":
                break
            rows.append(dict(zip(columns, map(_unescape, row.split("\t")), strict=True)))
    return tables


def _bytea(value: str | None) -> bytes:
    if value is None or not value.startswith("\\x"):
        raise BackupError("the backup holds a signing key that is not stored as bytes")
    return bytes.fromhex(value[2:])


async def _backup_header(backup: Path) -> tuple[str, list[tuple[str, bytes]]]:
    """The schema revision of a dump and its sealed signing keys, read without restoring."""
    try:
        script = await _run(
            "pg_restore",
            [
                "--data-only",
                f"--table={SCHEMA_TABLE}",
                "--table=signing_keys",
                "--file=-",
                str(backup),
            ],
            {},
        )
    except BackupError as error:
        raise BackupError(f"{backup} is not a readable pg_dump archive ({error})") from None
    tables = copy_rows(script)
    versions = [row["version_num"] for row in tables.get(SCHEMA_TABLE, [])]
    if not versions or versions[0] is None:
        raise BackupError(f"{backup} holds no Keyturn schema (no {SCHEMA_TABLE} row)")
    keys = [
        (str(row["kid"]), _bytea(row["private_key_sealed"]))
        for row in tables.get("signing_keys", [])
    ]
    return versions[0], keys


async def restore_postgres(
    backup: Path, database_url: str, *, force: bool, secret: str
) -> Restored:
    """Replace the database's content by the dump's, in one transaction, after checking
    that `secret` opens the dump's signing keys."""
    check_backup_file(backup, PG_DUMP_MAGIC, "PostgreSQL")
    revision, sealed = await _backup_header(backup)
    check_known_revision(revision, str(backup))
    check_secret_opens(secret, "KEYTURN_SECRET_KEY", sealed)
    where = shown(database_url)
    async with _connected(database_url) as connection:
        check_target_empty(await connection.run_sync(tables_with_data), where, force)
        if SCHEMA_TABLE in await connection.run_sync(table_names):
            current = (
                await connection.execute(text(f"SELECT version_num FROM {SCHEMA_TABLE}"))
            ).scalar()
            if current is not None and current != revision:
                # --clean replaces the backup's tables only: those of another schema would stay.
                raise BackupError(
                    f"{where} has schema {current} and the backup schema {revision}: restore "
                    "into an empty database (drop and create it first)"
                )
        await connection.rollback()
    uri, environment = libpq_target(database_url)
    try:
        await _run(
            "pg_restore",
            [
                "--single-transaction",
                "--exit-on-error",
                "--clean",
                "--if-exists",
                "--no-owner",
                "--no-privileges",
                f"--dbname={uri}",
                str(backup),
            ],
            environment,
        )
    except BackupError as error:
        raise BackupError(f"{error}; {where} is as it was") from None
    async with _connected(database_url) as connection:
        contents = await connection.run_sync(contents_of, where)
    if not contents.unnumbered:
        return Restored(contents, 0)
    numbered = await _number_events(database_url)
    async with _connected(database_url) as connection:
        return Restored(await connection.run_sync(contents_of, where), numbered)


async def _number_events(database_url: str) -> int:
    """Number the events the backup holds unnumbered, as a server would after their commit:
    after every event numbered before the backup, in the order they were written."""
    pool = await create_pool(database_url, 1)

    async def opened() -> asyncpg.Pool:
        return pool

    try:
        return await EventNumbering(opened, lambda: None).number_all()
    finally:
        await pool.close()
