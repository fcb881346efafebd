"""Shared fixtures: a fresh database per test on every backend, a real server on loopback."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.api.server import (
    CATALOG_SERVICE,
    FULFILLMENT_SERVICE,
    LICENSING_SERVICE,
    SERVICES,
    KeyturnServer,
)
from keyturn.server.app.context import AppContext
from keyturn.server.app.tokens import create_token
from keyturn.server.bootstrap import build_context
from keyturn.server.config import Settings
from keyturn.server.store.migrate import upgrade

from support.catalog import new_license
from support.faults import REPORT_ENV, read_report
from support.http_stub import HttpStub
from support.pgbouncer import Bouncer, pgbouncer_in_front
from support.postgres import create_database, drop_database, postgres_admin_url
from support.smtp import SmtpServer
from support.threads import run_in_own_loop

BACKENDS = [b for b in os.environ.get("KEYTURN_TEST_BACKENDS", "sqlite,postgresql").split(",") if b]
TEST_SECRET = "test-secret-key-0123456789-abcdefghijklmnop"
GRPC, HTTP = "grpc", "http"  # the transports of the stub fixtures (fixture `transport`)


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[str]:
    with postgres_admin_url() as url:
        yield url


@pytest.fixture(scope="session")
def pg_template(pg_admin: str) -> Iterator[str]:
    """A migrated database that each test's database is copied from."""
    name = f"keyturn_tpl_{uuid.uuid4().hex[:12]}"
    url = run_in_own_loop(create_database(pg_admin, name))
    upgrade(url)
    yield name
    run_in_own_loop(drop_database(pg_admin, name))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "keyturn.db"
    upgrade(sqlite_url(path))
    return path


_FAULT_REPORT = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    """The run's fault report file (support/faults.py), set before pytest-xdist starts its
    workers so that they inherit it."""
    if not hasattr(config, "workerinput") and not os.environ.get(REPORT_ENV):
        handle, path = tempfile.mkstemp(prefix="keyturn-faults-", suffix=".jsonl")
        os.close(handle)
        os.environ[REPORT_ENV] = path
        config.stash[_FAULT_REPORT] = Path(path)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """The fault tests' tallies, one line each, and their sums."""
    path = config.stash.get(_FAULT_REPORT, None)
    if path is None:
        return
    rows = read_report(path)
    path.unlink(missing_ok=True)
    if not rows:
        return
    terminalreporter.section("faults injected and what was lost")
    totals: dict[str, int] = {}
    for row in sorted(rows, key=lambda r: str(r["name"])):
        counts = {k: int(v) for k, v in row.items() if k != "name"}
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
        terminalreporter.write_line(
            f"{row['name']}: " + " ".join(f"{k}={v}" for k, v in counts.items())
        )
    terminalreporter.write_line("TOTAL: " + " ".join(f"{k}={v}" for k, v in totals.items()))


# Modules that set THROUGH_PGBOUNCER = True also run on PostgreSQL through a PgBouncer
# in transaction pooling mode (backend "pgbouncer"), as replicas behind one would.
PGBOUNCER = "pgbouncer"
_bouncer: Bouncer | None = None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test on a database runs on each backend (the fixture `database_url`)."""
    if "database_url" not in metafunc.fixturenames:
        return
    for marker in metafunc.definition.iter_markers("parametrize"):
        if "database_url" in str(marker.args[0]).replace(" ", "").split(","):
            return  # the test names its own backends
    backends = list(BACKENDS)
    if getattr(metafunc.module, "THROUGH_PGBOUNCER", False) and "postgresql" in BACKENDS:
        backends.append(PGBOUNCER)
    metafunc.parametrize("database_url", backends, indirect=True)


@pytest.fixture(scope="session")
def bouncer(pg_admin: str) -> Iterator[Bouncer]:
    global _bouncer
    with pgbouncer_in_front(pg_admin) as started:
        _bouncer = started
        yield started
        _bouncer = None


def is_pooled(database_url: str) -> bool:
    return _bouncer is not None and _bouncer.is_pooled(database_url)


def direct_url(database_url: str) -> str:
    """The database itself, also when the test's servers reach it through PgBouncer."""
    return database_url if _bouncer is None else _bouncer.direct(database_url)


def server_settings(database_url: str, **extra: str) -> dict[str, str]:
    """The KEYTURN_* environment of a `keyturn serve` child on this (migrated) database."""
    settings = {
        "KEYTURN_DATABASE_URL": database_url,
        "KEYTURN_SECRET_KEY": TEST_SECRET,
        "KEYTURN_AUTO_MIGRATE": "false",
    }
    if is_pooled(database_url):
        settings["KEYTURN_DATABASE_TRANSACTION_POOLER"] = "true"
    settings.update(extra)
    return settings


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database of its own for one test."""
    if request.param == PGBOUNCER:
        pooler: Bouncer = request.getfixturevalue("bouncer")
        admin: str = request.getfixturevalue("pg_admin")
        name = f"keyturn_test_{uuid.uuid4().hex[:12]}"
        template_name: str = request.getfixturevalue("pg_template")
        direct = run_in_own_loop(create_database(admin, name, template=template_name))
        yield pooler.pooled(direct)
        run_in_own_loop(drop_database(admin, name))
        return
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "keyturn.db"
        shutil.copyfile(template, path)
        path.chmod(0o600)  # as Keyturn creates its own
        yield sqlite_url(path)
        return
    admin: str = request.getfixturevalue("pg_admin")
    template_name: str = request.getfixturevalue("pg_template")
    name = f"keyturn_test_{uuid.uuid4().hex[:12]}"
    yield run_in_own_loop(create_database(admin, name, template=template_name))
    run_in_own_loop(drop_database(admin, name))


@pytest.fixture
def postgres_url(pg_admin: str, pg_template: str) -> Iterator[str]:
    """A migrated, empty PostgreSQL database of its own, for tests of PostgreSQL only."""
    name = f"keyturn_test_{uuid.uuid4().hex[:12]}"
    yield run_in_own_loop(create_database(pg_admin, name, template=pg_template))
    run_in_own_loop(drop_database(pg_admin, name))


def settings_for(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "secret_key": TEST_SECRET,
        "auto_migrate": False,
        "listen": "127.0.0.1:0",
        "database_transaction_pooler": is_pooled(database_url),
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def app(database_url: str) -> AsyncIterator[AppContext]:
    ctx = await build_context(settings_for(database_url))
    yield ctx
    await ctx.store.close()


@pytest.fixture
def transport() -> str:
    """What the stub fixtures call over: "grpc", or "http" (Keyturn's HTTP/JSON port) in a
    module that overrides this fixture to run its tests over HTTP/JSON."""
    return GRPC


@pytest.fixture
async def server(app: AppContext, transport: str) -> AsyncIterator[KeyturnServer]:
    running = KeyturnServer(
        app, "127.0.0.1:0", http_listen="127.0.0.1:0" if transport == HTTP else ""
    )
    await running.start()
    yield running
    await running.stop(grace=1.0)


@pytest.fixture
async def channel(server: KeyturnServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.address) as opened:
        yield opened


class Tokens:
    """Bearer metadata for each scope, and the id of each scope's token (`ids`, by scope)."""

    def __init__(self, secrets: dict[str, str], ids: dict[str, str] | None = None) -> None:
        self._secrets = secrets
        self.ids = ids or {}

    def __call__(self, scope: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self._secrets[scope]}"),)

    def actor_of(self, metadata: Any) -> str:
        """The audit actor of a call made with this metadata: `token:ID` of its token."""
        by_header = {f"Bearer {secret}": scope for scope, secret in self._secrets.items()}
        (scope,) = [by_header[v] for k, v in metadata or () if k == "authorization"]
        return f"token:{self.ids[scope]}"


@pytest.fixture
async def tokens(app: AppContext) -> Tokens:
    secrets, ids = {}, {}
    for scope in ("catalog", "fulfill", "read", "webhooks"):
        # Never ending: tests that move the clock years ahead are not about token expiry
        # (tests/api/test_token_expiry.py is).
        token, secret = await create_token(app, {scope}, f"test {scope}", lifetime=None)
        secrets[scope], ids[scope] = secret, token.token_id
    return Tokens(secrets, ids)


@pytest.fixture
async def http_client(server: KeyturnServer) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the server's HTTP/JSON port (on only when `transport` is "http")."""
    assert server.http_address, "the server has no HTTP/JSON port: set `transport` to http"
    async with httpx.AsyncClient(base_url=f"http://{server.http_address}", timeout=30) as client:
        yield client


def _stub(request: pytest.FixtureRequest, transport: str, service: str, grpc_stub: Any) -> Any:
    """The generated gRPC stub on `channel`, or one of the same shape over HTTP/JSON."""
    if transport == HTTP:
        return HttpStub(request.getfixturevalue("http_client"), SERVICES[service])
    return grpc_stub(request.getfixturevalue("channel"))


@pytest.fixture
def catalog_stub(
    request: pytest.FixtureRequest, transport: str
) -> catalog_pb2_grpc.CatalogServiceStub:
    stub: catalog_pb2_grpc.CatalogServiceStub = _stub(
        request, transport, CATALOG_SERVICE, catalog_pb2_grpc.CatalogServiceStub
    )
    return stub


@pytest.fixture
def fulfillment_stub(
    request: pytest.FixtureRequest, transport: str
) -> fulfillment_pb2_grpc.FulfillmentServiceStub:
    stub: fulfillment_pb2_grpc.FulfillmentServiceStub = _stub(
        request, transport, FULFILLMENT_SERVICE, fulfillment_pb2_grpc.FulfillmentServiceStub
    )
    return stub


@pytest.fixture
def licensing_stub(
    request: pytest.FixtureRequest, transport: str
) -> licensing_pb2_grpc.LicensingServiceStub:
    stub: licensing_pb2_grpc.LicensingServiceStub = _stub(
        request, transport, LICENSING_SERVICE, licensing_pb2_grpc.LicensingServiceStub
    )
    return stub


@pytest.fixture
async def license_of(
    catalog_stub: catalog_pb2_grpc.CatalogServiceStub,
    fulfillment_stub: fulfillment_pb2_grpc.FulfillmentServiceStub,
    tokens: Tokens,
):  # type: ignore[no-untyped-def]
    """Makes a fresh entitlement of N seats (floating unless a model is given), with its key."""

    async def make(seats: int, model: int = cat.LICENSE_MODEL_FLOATING) -> ful.Entitlement:
        return await new_license(
            catalog_stub, fulfillment_stub, tokens("catalog"), tokens("fulfill"), seats, model
        )

    return make


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    """A real SMTP server (aiosmtpd) on a loopback port of its own."""
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


__all__ = ["TEST_SECRET", "Tokens", "asyncio", "settings_for", "sqlite_url"]
