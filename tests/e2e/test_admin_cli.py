"""The admin commands cannot silently act on another database than the server's.

Run in a folder without the server's SQLite database, `keyturn tokens create` (and
every other admin command) refuses to make a new database or secret unless given
--create, and each says on stderr which database it acts on. A database copied
without its secrets file is refused with the name of that file. `tokens list` shows
the tokens, `tokens revoke` takes the id or the token itself, `migrate` says what it
did, and `--version` and `--help` say what they should.
"""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path

import pytest

from conftest import TEST_SECRET, server_settings
from support.rpc import failure_of
from support.subprocess_server import (
    create_token,
    run_cli,
    run_to_the_end,
    serving,
    sqlite_settings,
)

TOKEN_LINE = re.compile(
    r"^(?P<id>tok_\w+)  scopes=(?P<scopes>\S+)  created (?P<created>\S+Z)  "
    r"expires (?P<expires>never|\S+Z)  last used (?P<used>never|\S+Z)  "
    r"(?P<state>active|expired|revoked \S+Z)(  (?P<description>.+))?$"
)
SHOWN = "%Y-%m-%dT%H:%M:%SZ"  # how the admin commands show a time
ADMIN_COMMANDS = [
    ["tokens", "create", "--scope", "read"],
    ["tokens", "list"],
    ["tokens", "revoke", "tok_x"],
    ["keys", "list"],
    ["keys", "rotate"],
    ["catalog", "apply", "catalog.yaml"],
]


def tokens_list(cwd: Path, settings: dict[str, str], *args: str) -> list[dict[str, str]]:
    lines = run_cli(["tokens", "list", *args], cwd, settings).stdout.splitlines()
    listed = []
    for line in lines:
        match = TOKEN_LINE.match(line)
        assert match, f"unexpected line of keyturn tokens list: {line!r}"
        listed.append({k: v for k, v in match.groupdict().items() if v is not None})
    return listed


@pytest.mark.parametrize("command", ADMIN_COMMANDS, ids=" ".join)
def test_an_admin_command_makes_no_new_database_without_create(
    tmp_path: Path, command: list[str]
) -> None:
    result = run_to_the_end(command, tmp_path, {})
    database = tmp_path / "keyturn.db"
    assert result.stderr.splitlines() == [
        f"keyturn: no database at {database}: run this where the server's database is, or "
        "set KEYTURN_DATABASE_URL to it; --create makes a new one"
    ]
    assert result.returncode == 2
    assert list(tmp_path.iterdir()) == []  # neither a database nor a secret


def test_create_makes_the_database_and_says_which(tmp_path: Path) -> None:
    created = run_cli(["tokens", "create", "--create", "--scope", "read"], tmp_path, {})
    database = tmp_path / "keyturn.db"
    assert created.stderr.splitlines()[0] == f"keyturn: database {database}"
    assert database.exists()
    assert Path(f"{database}.secrets").exists()
    # From now on, without --create too, naming the database each time.
    listed = run_cli(["tokens", "list"], tmp_path, {})
    assert listed.stderr.splitlines() == [f"keyturn: database {database}"]


def test_a_database_without_a_secret_is_refused_unless_create(tmp_path: Path) -> None:
    database = tmp_path / "keyturn.db"
    database.touch()  # an empty file, say made by hand, with no secret beside it
    result = run_to_the_end(["keys", "list"], tmp_path, {})
    assert result.stderr.splitlines() == [
        f"keyturn: {database}.secrets (the secret of {database}) does not exist: set "
        "KEYTURN_SECRET_KEY or KEYTURN_SECRETS_FILE to the server's; --create makes a new one"
    ]
    assert result.returncode == 2
    assert not Path(f"{database}.secrets").exists()


async def test_a_database_copied_without_its_secrets_file_names_the_file(
    tmp_path: Path,
) -> None:
    original = tmp_path / "original"
    original.mkdir()
    settings = sqlite_settings(original / "keyturn.db")
    async with serving(original, settings):
        pass  # the first start: the schema, the secret, the first signing key
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(original / "keyturn.db", copy / "keyturn.db")
    why = (
        f"keyturn: {copy}/keyturn.db.secrets is missing: it holds the secret of "
        f"{copy}/keyturn.db, whose keys cannot be opened without it; copy it beside the "
        "database (it is made with the database and kept with it by keyturn backup), or set "
        "KEYTURN_SECRET_KEY to that secret"
    )
    served = run_to_the_end(["serve", "--listen", "127.0.0.1:0"], copy, {"KEYTURN_WORKERS": "1"})
    assert served.stderr.splitlines() == [why]
    assert served.returncode == 2
    for command in (["keys", "list"], ["keys", "list", "--create"]):
        listed = run_to_the_end(command, copy, {})
        assert listed.stderr.splitlines() == [f"keyturn: database {copy}/keyturn.db", why]
        assert listed.returncode == 2
    assert sorted(p.name for p in copy.iterdir() if p.name.endswith(".secrets")) == []
    shutil.copy(original / "keyturn.db.secrets", copy / "keyturn.db.secrets")
    assert "signing" in run_cli(["keys", "list"], copy, {}).stdout


def test_tokens_list_shows_each_token_and_revoke_takes_the_id_or_the_token(
    tmp_path: Path,
) -> None:
    settings = sqlite_settings(tmp_path / "keyturn.db")
    run_cli(["migrate"], tmp_path, settings)
    assert tokens_list(tmp_path, settings) == []
    secrets = {}
    for description, scopes in (("shop", ["fulfill"]), ("", ["read", "catalog"])):
        args = ["tokens", "create", *(f"--scope={scope}" for scope in scopes)]
        if description:
            args += ["--description", description]
        made = run_cli(args, tmp_path, settings)
        token_id = made.stderr.splitlines()[-1].split()[1]
        secrets[token_id] = made.stdout.strip()
    by_id, by_secret = secrets
    listed = tokens_list(tmp_path, settings)
    assert [
        (t["id"], t["scopes"], t["used"], t["state"], t.get("description")) for t in listed
    ] == [
        (by_id, "fulfill", "never", "active", "shop"),
        (by_secret, "catalog,read", "never", "active", None),
    ]
    assert not any(secret in str(listed) for secret in secrets.values())

    assert run_cli(["tokens", "revoke", by_id], tmp_path, settings).stdout == f"revoked {by_id}\n"
    revoked = run_cli(["tokens", "revoke", secrets[by_secret]], tmp_path, settings)
    assert revoked.stdout == f"revoked {by_secret}\n"
    for again in (by_id, secrets[by_secret], "kt_not-a-token", "tok_nothing"):
        refused = run_to_the_end(["tokens", "revoke", again], tmp_path, settings)
        assert refused.returncode == 1
        assert refused.stderr.splitlines()[-1] == "keyturn: no such active token"
    assert tokens_list(tmp_path, settings) == []
    every = tokens_list(tmp_path, settings, "--all")
    assert [t["id"] for t in every] == list(secrets)
    assert all(t["state"].startswith("revoked ") for t in every)


async def test_a_revoked_token_is_refused_by_the_server(tmp_path: Path) -> None:
    import grpc

    from keyturn.fulfillment.v1 import catalog_pb2, catalog_pb2_grpc

    settings = sqlite_settings(tmp_path / "keyturn.db")
    async with serving(tmp_path, settings) as server:
        secret = run_cli(["tokens", "create", "--scope", "catalog"], tmp_path, settings).stdout
        secret = secret.strip()
        run_cli(["tokens", "revoke", secret], tmp_path, settings)
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = catalog_pb2_grpc.CatalogServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListProducts(
                    catalog_pb2.ListProductsRequest(),
                    metadata=(("authorization", f"Bearer {secret}"),),
                    timeout=30,
                )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_tokens_list_shows_when_the_server_last_saw_each_token(
    tmp_path: Path, database_url: str
) -> None:
    import grpc

    from keyturn.fulfillment.v1 import catalog_pb2, catalog_pb2_grpc

    settings = server_settings(database_url)
    used = await create_token(tmp_path, settings, ["catalog"])
    await create_token(tmp_path, settings, ["read"])
    listed = tokens_list(tmp_path, settings)
    assert [t["used"] for t in listed] == ["never", "never"]
    async with (
        serving(tmp_path, settings) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        before = datetime.now(UTC).replace(microsecond=0)
        await catalog_pb2_grpc.CatalogServiceStub(channel).ListProducts(
            catalog_pb2.ListProductsRequest(),
            metadata=(("authorization", f"Bearer {used}"),),
            timeout=30,
        )
        after = datetime.now(UTC)
    # The server writes the uses it noted before it exits.
    by_scope = {t["scopes"]: t for t in tokens_list(tmp_path, settings)}
    assert by_scope["read"]["used"] == "never"
    shown = datetime.strptime(by_scope["catalog"]["used"], SHOWN).replace(tzinfo=UTC)
    assert before <= shown <= after


def shown_time(text: str) -> datetime:
    return datetime.strptime(text, SHOWN).replace(tzinfo=UTC)


async def test_tokens_create_sets_each_tokens_end_and_list_shows_it(
    tmp_path: Path, database_url: str
) -> None:
    import grpc

    from keyturn.fulfillment.v1 import catalog_pb2, catalog_pb2_grpc

    settings = server_settings(database_url)
    before = datetime.now(UTC).replace(microsecond=0)
    made = {}
    for name, options in {
        "default": [],
        "two-days": ["--expires-in", "2"],
        "forever": ["--no-expiry"],
    }.items():
        args = ["tokens", "create", "--scope", "catalog", "--description", name, *options]
        result = run_cli(args, tmp_path, settings)
        made[name] = result.stdout.strip()
        assert re.fullmatch(
            r"token tok_\w+ scopes=catalog expires (never|\S+Z)", result.stderr.splitlines()[-1]
        )
    zero = server_settings(database_url, KEYTURN_API_TOKEN_LIFETIME_DAYS="0")
    args = ["tokens", "create", "--scope", "read", "--description", "setting-0"]
    assert run_cli(args, tmp_path, zero).stderr.splitlines()[-1].endswith(" expires never")
    after = datetime.now(UTC)

    listed = {t["description"]: t for t in tokens_list(tmp_path, settings)}
    assert {name: t["state"] for name, t in listed.items()} == dict.fromkeys(
        ["default", "two-days", "forever", "setting-0"], "active"
    )
    for name, days in (("default", 365), ("two-days", 2)):
        end = shown_time(listed[name]["expires"])
        assert before + timedelta(days=days) <= end <= after + timedelta(days=days), name
    assert (listed["forever"]["expires"], listed["setting-0"]["expires"]) == ("never", "never")

    # Three days on, the two-day token is expired, in the list and at the server.
    later = {**settings, "KEYTURN_CLOCK_OFFSET_SECONDS": str(3 * 24 * 3600)}
    states = {t["description"]: t["state"] for t in tokens_list(tmp_path, later)}
    assert states["two-days"] == "expired"
    assert {states[n] for n in ("default", "forever", "setting-0")} == {"active"}
    async with (
        serving(tmp_path, later) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)

        async def list_with(secret: str) -> None:
            await stub.ListProducts(
                catalog_pb2.ListProductsRequest(),
                metadata=(("authorization", f"Bearer {secret}"),),
                timeout=30,
            )

        await list_with(made["default"])
        await list_with(made["forever"])
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await list_with(made["two-days"])
    failure = failure_of(refused.value)
    assert (failure.code, failure.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED")
    assert shown_time(listed["two-days"]["expires"]) == datetime.fromisoformat(
        failure.metadata["expire_time"]
    ).replace(microsecond=0)
    assert failure.metadata["token_id"] == listed["two-days"]["id"]


@pytest.mark.parametrize(
    ("options", "why"),
    [
        (["--expires-in", "0"], "argument --expires-in: must be 1 to 36500 days"),
        (["--expires-in", "36501"], "argument --expires-in: must be 1 to 36500 days"),
        (
            ["--expires-in", "a week"],
            "argument --expires-in: 'a week' is not a whole number of days",
        ),
        (
            ["--expires-in", "3", "--no-expiry"],
            "argument --no-expiry: not allowed with argument --expires-in",
        ),
    ],
    ids=["zero", "too-long", "not-a-number", "both"],
)
def test_a_wrong_expiry_is_one_line_and_exit_2(
    tmp_path: Path, options: list[str], why: str
) -> None:
    command = ["tokens", "create", "--create", "--scope", "read", *options]
    result = run_to_the_end(command, tmp_path, {})
    assert result.stderr.splitlines() == [
        f"keyturn tokens create: {why}; see keyturn tokens create --help"
    ]
    assert result.returncode == 2
    assert result.stdout == ""
    assert not (tmp_path / "keyturn.db").exists(), "refused before anything is made"


def test_migrate_says_what_it_did(tmp_path: Path) -> None:
    from keyturn.server.store.migrate import head_revision, upgrade

    database = tmp_path / "keyturn.db"
    settings = sqlite_settings(database)
    head = head_revision()
    first = run_cli(["migrate"], tmp_path, settings).stdout
    assert first == f"created the schema at {head} ({database})\n"
    again = run_cli(["migrate"], tmp_path, settings).stdout
    assert again == f"schema is up to date at {head} ({database})\n"

    older = tmp_path / "older.db"
    upgrade(f"sqlite+aiosqlite:///{older}", "0005")
    migrated = run_cli(["migrate"], tmp_path, sqlite_settings(older)).stdout
    assert migrated == f"migrated from 0005 to {head} ({older})\n"


async def test_migrate_on_postgresql_names_the_database_without_its_password(
    tmp_path: Path, postgres_url: str
) -> None:
    from sqlalchemy.engine import make_url

    from keyturn.server.store.migrate import head_revision

    settings = server_settings(postgres_url, KEYTURN_SECRET_KEY=TEST_SECRET)
    done = run_cli(["migrate"], tmp_path, settings).stdout
    shown = make_url(postgres_url).render_as_string(hide_password=True)
    assert done == f"schema is up to date at {head_revision()} ({shown})\n"


def test_version_is_the_package_version() -> None:
    result = run_to_the_end(["--version"], Path.cwd(), {})
    assert result.stdout == f"keyturn {version('keyturn')}\n"
    assert result.returncode == 0


# The connectors call the admin port (mutual TLS) when the server has one.
ADMIN_TARGET_DEFAULT = (
    "(default: KEYTURN_ADMIN_LISTEN when set, else KEYTURN_LISTEN, else 127.0.0.1:50051)"
)


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        (["serve"], "(default: KEYTURN_LISTEN, else 127.0.0.1:50051)"),
        (["health"], "(default: 3.0)"),
        (["connect", "stripe"], "(default: KEYTURN_STRIPE_LISTEN, else 127.0.0.1:8080)"),
        (["connect", "stripe"], "(default: KEYTURN_STRIPE_PATH, else /stripe/webhook)"),
        (["connect", "stripe"], ADMIN_TARGET_DEFAULT),
        (["connect", "stripe"], "(default: KEYTURN_TARGET_TLS, else auto)"),
        (["orders", "import"], "(default: import)"),
        (["orders", "import"], ADMIN_TARGET_DEFAULT),
        (["health"], "(default: KEYTURN_TARGET_CA_FILE, else the server's own"),
        (["tokens", "create"], "what the token is for"),  # and no "(default: )"
    ],
)
def test_help_shows_the_defaults(command: list[str], shown: str) -> None:
    result = run_to_the_end([*command, "--help"], Path.cwd(), {})
    assert result.returncode == 0
    assert shown in " ".join(result.stdout.split())
    assert "(default: None)" not in result.stdout
    assert "(default: )" not in result.stdout
