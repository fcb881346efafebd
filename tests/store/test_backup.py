"""`keyturn backup` and `keyturn restore` on both backends: what they copy, what they
refuse (one line each, exit 1, nothing written) and that a restore that fails midway
leaves the database as it was.

The commands run in this process (`cli.main`) with the settings in the environment;
the end-to-end test with a serving server is tests/e2e/test_backup_restore.py.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from keyturn.server.app.tokens import create_token
from keyturn.server.bootstrap import build_context
from keyturn.server.cli import main
from keyturn.server.store.event_repository import NewEvent
from keyturn.server.store.migrate import head_revision, upgrade
from keyturn.server.store.unit_of_work import Store

from conftest import TEST_SECRET, settings_for
from support.empty_database import empty_database
from support.rows import table_digests
from support.threads import run_in_own_loop

OTHER_SECRET = "another-secret-key-9876543210-zyxwvutsrqponm"
CREATED = datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str


Keyturn = Callable[..., Outcome]


@pytest.fixture
def keyturn(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Keyturn:
    """Runs `keyturn ARGS...` here with exactly the KEYTURN_* settings given."""

    def run(env: dict[str, str], *args: str) -> Outcome:
        for name in list(os.environ):
            if name.startswith("KEYTURN_") and not name.startswith("KEYTURN_TEST_"):
                monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        code = main(list(args))
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        return Outcome(code, captured.out, captured.err)

    return run


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def env_of(url: str, secret: str | None = TEST_SECRET) -> dict[str, str]:
    """Settings of a command on `url`; SQLite's secret is its generated file."""
    env = {"KEYTURN_DATABASE_URL": url}
    if not is_sqlite(url) and secret is not None:
        env["KEYTURN_SECRET_KEY"] = secret
    return env


def where(url: str) -> str:
    """The database as the commands name it."""
    parsed = make_url(url)
    return str(parsed.database) if is_sqlite(url) else parsed.render_as_string()


def database_file(url: str) -> Path:
    return Path(str(make_url(url).database))


async def _populate(url: str, label: str) -> None:
    """The schema, a signing key (made on first open), a token and two events."""
    secret = None if is_sqlite(url) else TEST_SECRET
    ctx = await build_context(settings_for(url, secret_key=secret, auto_migrate=True))
    try:
        await create_token(ctx, {"read"}, label)
        async with ctx.store.write() as tx:
            for kind in ("created", "seat_activated"):
                await tx.events.append(
                    NewEvent(
                        entitlement_id=f"ent_{label}", type=kind, create_time=CREATED, snapshot={}
                    )
                )
    finally:
        await ctx.close()


def populate(url: str, label: str) -> None:
    run_in_own_loop(_populate(url, label))


async def _digests(url: str) -> dict[str, str]:
    store = Store.from_url(url)
    try:
        return await table_digests(store)
    finally:
        await store.close()


def digests(url: str) -> dict[str, str]:
    return run_in_own_loop(_digests(url))


async def _execute(url: str, *statements: str) -> list[object]:
    store = Store.from_url(url)
    try:
        async with store.engine.begin() as connection:
            results = [await connection.execute(text(sql)) for sql in statements]
            return [r.scalar() if r.returns_rows else None for r in results]
    finally:
        await store.close()


def execute(url: str, *statements: str) -> list[object]:
    return run_in_own_loop(_execute(url, *statements))


def table_count(url: str) -> int:
    if is_sqlite(url):
        path = database_file(url)
        if not path.exists():
            return 0
        with contextlib.closing(sqlite3.connect(path)) as connection:
            return int(connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0])
    [count] = execute(url, "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()")
    assert isinstance(count, int)
    return count


@pytest.fixture
def target_url(database_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """An empty database of the same backend, to restore into."""
    backend = "sqlite" if is_sqlite(database_url) else "postgresql"
    with empty_database(request, backend, tmp_path / "target", "target") as url:
        yield url


@pytest.fixture
def backup_file(tmp_path: Path) -> Path:
    folder = tmp_path / "backups"
    folder.mkdir()
    return folder / "keyturn.backup"


def said(outcome: Outcome, message: str, code: int = 1) -> None:
    """The command failed with `code`, saying `keyturn: MESSAGE` on one line, and nothing
    else."""
    assert (outcome.code, outcome.out, outcome.err) == (code, "", f"keyturn: {message}\n")


def backed_up(keyturn: Keyturn, database_url: str, backup_file: Path) -> Outcome:
    """A populated database, backed up."""
    populate(database_url, "source")
    made = keyturn(env_of(database_url), "backup", str(backup_file))
    assert made.code == 0, made.err
    return made


def secrets_of(path: Path) -> Path:
    return path.with_name(f"{path.name}.secrets")


def test_restore_into_an_empty_database_copies_every_row(
    database_url: str, target_url: str, backup_file: Path, keyturn: Keyturn
) -> None:
    made = backed_up(keyturn, database_url, backup_file)
    assert made.out.startswith(f"backup written to {backup_file}: everything committed before ")
    assert f"(schema {head_revision()}, 0 entitlements, events 1..2)" in made.out
    restored = keyturn(env_of(target_url), "restore", str(backup_file))
    assert restored.code == 0, restored.err
    assert restored.out.splitlines()[0] == (
        f"restored {backup_file} into {where(target_url)}: schema {head_revision()}, "
        "0 entitlements, events 1..2; what was written after the backup began is not in it"
    )
    assert digests(target_url) == digests(database_url)
    if is_sqlite(database_url):
        assert secrets_of(backup_file).stat().st_mode & 0o777 == 0o600
        target_secrets = secrets_of(database_file(target_url))
        assert target_secrets.read_text() == secrets_of(database_file(database_url)).read_text()
        assert target_secrets.stat().st_mode & 0o777 == 0o600
        assert restored.out.splitlines()[1] == f"its secret was put in {target_secrets}"
    else:
        assert made.err == (
            f"keyturn: WARNING: {backup_file} does not hold the secret: keep KEYTURN_SECRET_KEY "
            "with it; without the secret the backup's license keys and signing keys cannot be "
            "used\n"
        )
        assert "servers on it need this KEYTURN_SECRET_KEY" in restored.out
    # A server opens the restored signing keys with the restored secret.
    listed = keyturn(env_of(target_url), "keys", "list")
    assert listed.code == 0, listed.err
    assert listed.out == keyturn(env_of(database_url), "keys", "list").out


def test_restore_refuses_a_database_holding_data_unless_forced(
    database_url: str, target_url: str, backup_file: Path, keyturn: Keyturn
) -> None:
    backed_up(keyturn, database_url, backup_file)
    populate(target_url, "target")
    before = digests(target_url)
    said(
        keyturn(env_of(target_url), "restore", str(backup_file)),
        # audit_events: the target's token and order were recorded (app/audit.py)
        f"{where(target_url)} holds data "
        "(tables api_tokens, audit_events, entitlement_events, signing_keys): "
        "restore into an empty database, or pass --force to replace everything in it",
    )
    assert digests(target_url) == before
    forced = keyturn(env_of(target_url), "restore", "--force", str(backup_file))
    assert forced.code == 0, forced.err
    assert digests(target_url) == digests(database_url)
    assert keyturn(env_of(target_url), "keys", "list").code == 0


def test_restore_with_another_secret_writes_nothing(
    database_url: str, target_url: str, backup_file: Path, keyturn: Keyturn
) -> None:
    backed_up(keyturn, database_url, backup_file)
    [kid] = [
        line.split()[0] for line in keyturn(env_of(database_url), "keys", "list").out.splitlines()
    ]
    tail = (
        f" does not open the backup's signing key {kid}: a restore needs the secret of the "
        "database the backup was made from; nothing was written"
    )
    given = {**env_of(target_url), "KEYTURN_SECRET_KEY": OTHER_SECRET}
    said(keyturn(given, "restore", str(backup_file)), f"KEYTURN_SECRET_KEY{tail}")
    if is_sqlite(database_url):
        secrets_of(backup_file).write_text(OTHER_SECRET + "\n")
        said(
            keyturn(env_of(target_url), "restore", str(backup_file)),
            f"the secret in {secrets_of(backup_file)}{tail}",
        )
        assert not secrets_of(database_file(target_url)).exists()
    assert table_count(target_url) == 0


def test_a_restore_that_fails_midway_leaves_the_database_as_it_was(
    database_url: str, target_url: str, backup_file: Path, keyturn: Keyturn
) -> None:
    backed_up(keyturn, database_url, backup_file)
    populate(target_url, "target")
    if is_sqlite(database_url):
        # A backup damaged past its first page: found before anything is written.
        damaged = bytearray(backup_file.read_bytes())
        damaged[4096:8192] = b"\xff" * 4096
        backup_file.write_bytes(bytes(damaged))
        expected = f"keyturn: {backup_file}"
    else:
        # The target has an object the backup does not know that depends on one of its
        # tables: pg_restore --clean drops constraints, indexes and tables, then fails.
        execute(target_url, "CREATE VIEW held_keys AS SELECT kid FROM signing_keys")
        expected = "keyturn: pg_restore failed: "
    before = digests(target_url)
    failed = keyturn(env_of(target_url), "restore", "--force", str(backup_file))
    assert failed.code == 1
    assert failed.err.startswith(expected), failed.err
    assert failed.err.count("\n") == 1, failed.err
    if not is_sqlite(database_url):
        assert failed.err.endswith(f"; {where(target_url)} is as it was\n"), failed.err
        assert execute(target_url, "SELECT count(*) FROM held_keys") == [1]
    assert digests(target_url) == before


def test_backup_refuses_an_existing_file_unless_forced(
    database_url: str, backup_file: Path, keyturn: Keyturn
) -> None:
    populate(database_url, "source")
    backup_file.write_bytes(b"an older backup")
    said(
        keyturn(env_of(database_url), "backup", str(backup_file)),
        f"{backup_file} exists: choose another name, or pass --force to replace it",
    )
    assert backup_file.read_bytes() == b"an older backup"
    assert keyturn(env_of(database_url), "backup", "--force", str(backup_file)).code == 0
    assert backup_file.read_bytes() != b"an older backup"
    assert sorted(p.name for p in backup_file.parent.iterdir()) == sorted(
        [backup_file.name] + ([secrets_of(backup_file).name] if is_sqlite(database_url) else [])
    ), "no partial file left behind"


def test_restore_refuses_what_is_not_a_backup_of_its_kind(
    database_url: str, target_url: str, backup_file: Path, keyturn: Keyturn, tmp_path: Path
) -> None:
    env = env_of(target_url)
    nothing = tmp_path / "nothing"
    said(keyturn(env, "restore", str(nothing)), f"no backup file at {nothing}")
    backup_file.write_text("not a backup\n")
    said(
        keyturn(env, "restore", str(backup_file)),
        f"{backup_file} is not a Keyturn backup (neither a SQLite file nor a pg_dump archive)",
    )
    if is_sqlite(database_url):
        backup_file.write_bytes(b"PGDMP\x01\x0e\x00" + bytes(64))
        kind, backend = "PostgreSQL (pg_dump archive)", "SQLite"
    else:
        sqlite_file = backup_file.with_suffix(".db")
        with contextlib.closing(sqlite3.connect(sqlite_file)) as connection:
            connection.execute("CREATE TABLE t (x)")
        sqlite_file.replace(backup_file)
        kind, backend = "SQLite", "PostgreSQL"
    said(
        keyturn(env, "restore", str(backup_file)),
        f"{backup_file} is a backup of a {kind} database and KEYTURN_DATABASE_URL is "
        f"{backend}: restore it into a database of its kind",
    )
    assert table_count(target_url) == 0


def test_backup_of_a_database_without_the_schema_is_refused(
    target_url: str, backup_file: Path, keyturn: Keyturn
) -> None:
    if is_sqlite(target_url):
        sqlite3.connect(database_file(target_url)).close()  # an empty file
    said(
        keyturn(env_of(target_url), "backup", str(backup_file)),
        f"{where(target_url)} holds no Keyturn schema (no alembic_version table)",
    )
    assert list(backup_file.parent.iterdir()) == []


def test_restore_refuses_a_schema_this_version_does_not_know(
    database_url: str, target_url: str, backup_file: Path, keyturn: Keyturn
) -> None:
    populate(database_url, "source")
    execute(database_url, "UPDATE alembic_version SET version_num = '0099'")
    assert keyturn(env_of(database_url), "backup", str(backup_file)).code == 0
    said(
        keyturn(env_of(target_url), "restore", str(backup_file)),
        f"{backup_file} has schema 0099, which this keyturn (schema {head_revision()}) does not "
        "know: restore it with the version of keyturn that made it, or a newer one",
    )
    assert table_count(target_url) == 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_backup_without_its_secret_file(
    database_url: str, target_url: str, backup_file: Path, keyturn: Keyturn
) -> None:
    backed_up(keyturn, database_url, backup_file)
    kept = secrets_of(backup_file)
    kept.unlink()
    said(
        keyturn(env_of(target_url), "restore", str(backup_file)),
        f"{kept} is missing: it holds the secret that opens the backup's license keys and "
        "signing keys; put it beside the backup, or set KEYTURN_SECRET_KEY to the secret of "
        "the database the backup was made from",
    )
    assert not database_file(target_url).exists()
    secret = secrets_of(database_file(database_url)).read_text().strip()
    given = {**env_of(target_url), "KEYTURN_SECRET_KEY": secret}
    restored = keyturn(given, "restore", str(backup_file))
    assert restored.code == 0, restored.err
    assert not secrets_of(database_file(target_url)).exists(), "the secret is given, not a file"
    assert keyturn(given, "keys", "list").code == 0

    # With KEYTURN_SECRET_KEY the backup has no secret file, and says so.
    again = backup_file.with_name("again.backup")
    made = keyturn(given, "backup", str(again))
    assert made.code == 0
    assert made.err.startswith(f"keyturn: WARNING: {again} does not hold the secret: keep ")
    assert not secrets_of(again).exists()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgres_restore_needs_the_secret_key(
    database_url: str, target_url: str, backup_file: Path, keyturn: Keyturn
) -> None:
    backed_up(keyturn, database_url, backup_file)
    said(
        keyturn(env_of(target_url, secret=None), "restore", str(backup_file)),
        "restore needs KEYTURN_SECRET_KEY: the secret of the database the backup was made from",
        code=2,
    )
    assert table_count(target_url) == 0


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgres_restore_refuses_a_database_of_another_schema(
    database_url: str, target_url: str, backup_file: Path, keyturn: Keyturn
) -> None:
    backed_up(keyturn, database_url, backup_file)
    upgrade(target_url, "0005")
    said(
        keyturn(env_of(target_url), "restore", "--force", str(backup_file)),
        f"{where(target_url)} has schema 0005 and the backup schema {head_revision()}: restore "
        "into an empty database (drop and create it first)",
    )
    assert execute(target_url, "SELECT version_num FROM alembic_version") == ["0005"]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_events_committed_unnumbered_are_numbered_by_the_restore(
    database_url: str, target_url: str, backup_file: Path, keyturn: Keyturn
) -> None:
    """An event committed but not yet numbered when the dump's snapshot is taken (its
    writer's numbering round had not run): in the backup unnumbered, numbered by the
    restore after the others."""
    populate(database_url, "source")
    execute(
        database_url,
        "INSERT INTO entitlement_events (entitlement_id, type, create_time, order_source, "
        "order_id, activation_id, snapshot) VALUES ('ent_late', 'seat_released', now(), '', '', "
        "'act_late', '{}')",
    )
    made = keyturn(env_of(database_url), "backup", str(backup_file))
    assert "events 1..2 and 1 committed, not numbered yet (a restore numbers them))" in made.out
    restored = keyturn(env_of(target_url), "restore", str(backup_file))
    assert restored.code == 0, restored.err
    assert (
        "events 1..3; the last 1 were committed unnumbered before the backup began and are "
        "numbered now; what was written" in restored.out
    ), restored.out
    assert execute(
        target_url, "SELECT sequence FROM entitlement_events WHERE entitlement_id = 'ent_late'"
    ) == [3]
