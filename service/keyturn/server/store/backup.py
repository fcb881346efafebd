"""What backups and restores of both backends share: what a backup holds, and the checks
a restore makes before it writes anything.

A backup holds every transaction committed before it began (its recovery point) and
nothing after: SQLite copies the file inside one read transaction
(`store/sqlite_backup.py`), PostgreSQL dumps inside one exported snapshot
(`store/pg_backup.py`). A restore first checks that this version knows the backup's
schema, that the secret opens the backup's signing keys (without it the keys, and the
license keys, are useless) and that the target holds no data unless forced; then it
writes the whole backup in one transaction, so that a failure leaves the target as it
was.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import inspect, literal, select, table, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from ..sealing import MIN_SECRET_LENGTH, Sealer, SecretError
from .migrate import MIGRATIONS

SCHEMA_TABLE = "alembic_version"
SQLITE_MAGIC = b"SQLite format 3\x00"
PG_DUMP_MAGIC = b"PGDMP"
BACKUP_KINDS = {SQLITE_MAGIC: "SQLite", PG_DUMP_MAGIC: "PostgreSQL (pg_dump archive)"}


class BackupError(Exception):
    """A backup or restore refused or failed; the message is one line for people."""


@dataclass(frozen=True)
class Contents:
    """What a database (or a backup of it) holds, in the terms a recovery point is told in."""

    revision: str
    entitlements: int
    last_sequence: int  # events are numbered 1..last_sequence, without a gap
    unnumbered: int  # committed events not numbered yet (PostgreSQL numbers after commit)

    def describe(self) -> str:
        events = f"events 1..{self.last_sequence}" if self.last_sequence else "no events"
        if self.unnumbered:
            events += f" and {self.unnumbered} committed, not numbered yet (a restore numbers them)"
        return f"schema {self.revision}, {self.entitlements} entitlements, {events}"


@dataclass(frozen=True)
class RecoveryPoint:
    """A backup: every transaction committed before `taken_at` is in it; those committed
    after are not, but for any that committed in the moment the copy took to begin."""

    taken_at: datetime
    contents: Contents

    def describe(self) -> str:
        return (
            f"everything committed before {self.taken_at.isoformat()} ({self.contents.describe()})"
        )


@dataclass(frozen=True)
class Restored:
    """A database after a restore; `numbered`: events the backup held unnumbered (committed
    just before it began), numbered by the restore after all the others."""

    contents: Contents
    numbered: int

    def describe(self) -> str:
        if not self.numbered:
            return self.contents.describe()
        return (
            f"{self.contents.describe()}; the last {self.numbered} were committed unnumbered "
            "before the backup began and are numbered now"
        )


def one_line(error: BaseException) -> str:
    """What a driver error says, without SQLAlchemy's statement and links."""
    said = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    lines = str(said).strip().splitlines()
    return lines[0] if lines else type(said).__name__


def table_names(connection: Connection) -> list[str]:
    return list(inspect(connection).get_table_names())


def contents_of(connection: Connection, where: str) -> Contents:
    """The schema revision and the counts of a Keyturn database; BackupError without one."""
    if SCHEMA_TABLE not in table_names(connection):
        raise BackupError(f"{where} holds no Keyturn schema (no {SCHEMA_TABLE} table)")
    revision = connection.execute(text(f"SELECT version_num FROM {SCHEMA_TABLE}")).scalar()
    if revision is None:
        raise BackupError(f"{where} holds no Keyturn schema ({SCHEMA_TABLE} is empty)")
    entitlements = connection.execute(text("SELECT count(*) FROM entitlements")).scalar_one()
    last, unnumbered = connection.execute(
        text(
            "SELECT coalesce(max(sequence), 0), count(*) - count(sequence) FROM entitlement_events"
        )
    ).one()
    return Contents(str(revision), int(entitlements), int(last), int(unnumbered))


def tables_with_data(connection: Connection) -> list[str]:
    """Every table of the database that holds a row, but the schema's version."""
    return [
        name
        for name in table_names(connection)
        if name != SCHEMA_TABLE
        and connection.execute(select(literal(1)).select_from(table(name)).limit(1)).first()
    ]


def check_target_empty(tables: list[str], where: str, force: bool) -> None:
    if tables and not force:
        raise BackupError(
            f"{where} holds data (tables {', '.join(sorted(tables))}): restore into an empty "
            "database, or pass --force to replace everything in it"
        )


def check_known_revision(revision: str, where: str) -> None:
    """A backup of a newer schema than this version's would be served by code that does not
    know it."""
    try:
        ScriptDirectory(str(MIGRATIONS)).get_revision(revision)
    except CommandError:
        head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
        raise BackupError(
            f"{where} has schema {revision}, which this keyturn (schema {head}) does not know: "
            "restore it with the version of keyturn that made it, or a newer one"
        ) from None


def check_secret_opens(secret: str, named: str, sealed_keys: Iterable[tuple[str, bytes]]) -> None:
    """Every signing key of the backup opens with `secret` (named as the user knows it)."""
    try:
        sealer = Sealer(secret)
    except SecretError as error:
        raise BackupError(f"{named}: {error}") from None
    for kid, sealed in sealed_keys:
        try:
            sealer.unseal(sealed)
        except SecretError:
            raise BackupError(
                f"{named} does not open the backup's signing key {kid}: a restore "
                "needs the secret of the database the backup was made from; nothing was written"
            ) from None


def read_secret_file(path: Path) -> str:
    secret = path.read_text().strip()
    if len(secret) < MIN_SECRET_LENGTH:
        raise BackupError(f"{path} does not hold a secret of {MIN_SECRET_LENGTH}+ characters")
    return secret


def check_backup_file(path: Path, magic: bytes, backend: str) -> None:
    """`path` exists and is a backup of the kind a `backend` database makes."""
    if not path.is_file():
        raise BackupError(f"no backup file at {path}")
    with path.open("rb") as handle:
        head = handle.read(len(SQLITE_MAGIC))
    if head.startswith(magic):
        return
    for other, kind in BACKUP_KINDS.items():
        if head.startswith(other):
            raise BackupError(
                f"{path} is a backup of a {kind} database and KEYTURN_DATABASE_URL is "
                f"{backend}: restore it into a database of its kind"
            )
    raise BackupError(
        f"{path} is not a Keyturn backup (neither a SQLite file nor a pg_dump archive)"
    )


def check_new_file(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise BackupError(f"{path} exists: choose another name, or pass --force to replace it")
    if not path.parent.is_dir():
        raise BackupError(f"no folder {path.parent} to write {path.name} into")


def partial_path(path: Path) -> Path:
    """Where a file is written before it is renamed into place: a failure leaves no half file."""
    return path.with_name(f".{path.name}.partial")
