"""Backup and restore of a SQLite database with SQLite's online backup API.

The backup copies every page in one step, inside one read transaction: the copy is
the database as of that transaction's start, while servers keep writing (WAL mode
lets writers go on beside a reader). The copy is a plain SQLite file (rollback
journal, so it opens read-only anywhere) written beside the target name and renamed
into place. The generated secret (`DATABASE.secrets`) goes beside it as
`BACKUP.secrets`, mode 0600: without it the copy's license keys and signing keys
cannot be used.

A restore copies the backup into the target with the same API, which writes the
target in one transaction: it fails whole or not at all, and servers that have the
file open see the new content at their next transaction. The secret file is put in
place right after.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from .backup import (
    SQLITE_MAGIC,
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
    read_secret_file,
    tables_with_data,
)

BUSY_TIMEOUT_S = 60.0


def secrets_beside(backup: Path) -> Path:
    """Where a backup's secret is kept: `BACKUP.secrets`, as `DATABASE.secrets` beside a
    database."""
    return backup.with_name(f"{backup.name}.secrets")


@dataclass(frozen=True)
class SqliteBackup:
    point: RecoveryPoint
    secrets: Path | None  # the copied secret file; None when the secret was not in a file


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[Connection]:
    """A SQLAlchemy connection to an existing SQLite file (stdlib driver, no pool)."""
    engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)
    try:
        with engine.connect() as connection:
            yield connection
    except Exception as error:
        if isinstance(error, BackupError):
            raise
        raise BackupError(f"{path}: {one_line(error)}") from None
    finally:
        engine.dispose()


def _connect(path: Path) -> sqlite3.Connection:
    try:
        return sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as error:
        raise BackupError(f"{path}: {error}") from None


def _write_private(path: Path, text: str) -> None:
    """`text` into a new file of mode 0600 (removed first if a failed run left one)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def backup_sqlite(
    database: Path, target: Path, *, force: bool, secrets_file: Path | None
) -> SqliteBackup:
    """Copy `database` to `target` (and `secrets_file`, if given, beside it). Blocking."""
    check_new_file(target, force)
    if not database.is_file():
        raise BackupError(f"no database at {database}")
    if database.resolve() == target.resolve():
        raise BackupError(f"{target} is the database itself: write the backup elsewhere")
    partial = partial_path(target)
    partial.unlink(missing_ok=True)
    source = _connect(database)
    try:
        copy = _connect(partial)
        try:
            taken_at = datetime.now(UTC)
            source.backup(copy)  # every page in one step: one read transaction
            copy.execute("PRAGMA journal_mode=DELETE")  # a file of its own, no -wal beside it
        finally:
            copy.close()
    except sqlite3.Error as error:
        partial.unlink(missing_ok=True)
        raise BackupError(f"backup of {database} failed: {error}") from None
    finally:
        source.close()
    try:
        with _opened(partial) as connection:
            contents = contents_of(connection, str(database))
        os.chmod(partial, 0o600)  # it holds customers' data and sealed keys
        copied = None
        if secrets_file is not None:
            copied = secrets_beside(target)
            _write_private(partial_path(copied), read_secret_file(secrets_file) + "\n")
            os.replace(partial_path(copied), copied)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return SqliteBackup(RecoveryPoint(taken_at, contents), copied)


def _sealed_keys(connection: Connection) -> list[tuple[str, bytes]]:
    rows = connection.exec_driver_sql("SELECT kid, private_key_sealed FROM signing_keys")
    return [(str(kid), bytes(sealed)) for kid, sealed in rows]


def restore_sqlite(
    backup: Path,
    database: Path,
    *,
    force: bool,
    given_secret: str | None,
    secrets_file: Path,
) -> Restored:
    """Replace `database` by `backup`, and its secret file by the backup's (unless the
    secret is given). Blocking. Checks everything before writing anything."""
    check_backup_file(backup, SQLITE_MAGIC, "SQLite")
    if database.exists() and database.resolve() == backup.resolve():
        raise BackupError(f"{backup} is the database itself")
    with _opened(backup) as connection:
        damage = connection.exec_driver_sql("PRAGMA quick_check").scalars().all()
        if damage != ["ok"]:
            raise BackupError(f"{backup} is damaged: {damage[0]}")
        contents = contents_of(connection, str(backup))
        check_known_revision(contents.revision, str(backup))
        sealed = _sealed_keys(connection)
    if given_secret is not None:
        secret, named = given_secret, "KEYTURN_SECRET_KEY"
    else:
        kept = secrets_beside(backup)
        if not kept.is_file():
            raise BackupError(
                f"{kept} is missing: it holds the secret that opens the backup's license keys "
                "and signing keys; put it beside the backup, or set KEYTURN_SECRET_KEY to the "
                "secret of the database the backup was made from"
            )
        secret, named = read_secret_file(kept), f"the secret in {kept}"
    check_secret_opens(secret, named, sealed)
    if database.exists():
        with _opened(database) as connection:
            check_target_empty(tables_with_data(connection), str(database), force)
    database.parent.mkdir(parents=True, exist_ok=True)
    staged = partial_path(secrets_file)
    if given_secret is None:
        _write_private(staged, secret + "\n")
    try:
        source = _connect(backup)
        try:
            target = _connect(database)
            try:
                source.backup(target)  # one write transaction on the target
            finally:
                target.close()
        except sqlite3.Error as error:
            raise BackupError(f"restore into {database} failed, it is as it was: {error}") from None
        finally:
            source.close()
        if given_secret is None:
            os.replace(staged, secrets_file)
    finally:
        staged.unlink(missing_ok=True)
    return Restored(contents, 0)  # SQLite numbers events at insert
