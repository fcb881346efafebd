"""A PostgreSQL server for the tests, and throwaway databases on it.

`postgres_admin_url()` finds or starts a server and yields a superuser DSN
(`postgresql://user@host:port/postgres`), in this order:

1. the environment variable `KEYTURN_TEST_PG_ADMIN_URL`, when set and non-empty;
2. a server on 127.0.0.1:5432 that accepts a login as `postgres` without a
   password (skipped when `KEYTURN_TEST_PG_FORCE_THROWAWAY=1`);
3. a throwaway cluster: `initdb` into a temporary directory, started on a free
   loopback port, stopped and deleted on exit. As root it runs as the
   `postgres` system user (initdb refuses to run as root).

`create_database()` and `drop_database()` make and remove databases on that
server with asyncpg. `LocalCluster` is the throwaway cluster of step 3, for
tests that need a server of their own (such as a primary and its standby,
support/replication.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ENV_ADMIN_URL = "KEYTURN_TEST_PG_ADMIN_URL"
ENV_FORCE_THROWAWAY = "KEYTURN_TEST_PG_FORCE_THROWAWAY"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5432
DEFAULT_ADMIN_URL = f"postgresql://postgres@{DEFAULT_HOST}:{DEFAULT_PORT}/postgres"

_NAME_RE = re.compile(r"^[a-z0-9_]+$")
_SYSTEM_PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
_START_TIMEOUT_S = 60

T = TypeVar("T")


@contextlib.contextmanager
def postgres_admin_url() -> Iterator[str]:
    """Yield a superuser DSN of a PostgreSQL server usable for tests."""
    from_env = os.environ.get(ENV_ADMIN_URL, "").strip()
    if from_env:
        yield from_env
        return
    if not _env_flag(ENV_FORCE_THROWAWAY) and _server_accepts_login(DEFAULT_ADMIN_URL):
        yield DEFAULT_ADMIN_URL
        return
    with _throwaway_cluster() as url:
        yield url


async def create_database(admin_url: str, name: str, template: str | None = None) -> str:
    """Create database `name` (from `template`, if given) on the server of
    `admin_url`; return its SQLAlchemy URL (`postgresql+asyncpg://...`).

    PostgreSQL copies a template only while nobody else is connected to it.
    """
    sql = f"CREATE DATABASE {_quote_name(name)}"
    if template is not None:
        sql += f" TEMPLATE {_quote_name(template)}"
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
    parts = urlsplit(admin_url)
    return urlunsplit(("postgresql+asyncpg", parts.netloc, f"/{name}", parts.query, ""))


async def drop_database(admin_url: str, name: str) -> None:
    """Drop database `name` if it exists, disconnecting its sessions."""
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {_quote_name(name)} WITH (FORCE)")
    finally:
        await conn.close()


def _quote_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"database name {name!r} does not match {_NAME_RE.pattern}")
    return f'"{name}"'


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


# --- probing an existing server ----------------------------------------------


def _server_accepts_login(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1):
            pass
    except OSError:
        return False

    async def login() -> None:
        conn = await asyncpg.connect(url, timeout=3)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    try:
        _run_coroutine(login())
    except Exception:
        return False
    return True


def _run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(coro), in a thread of its own when a loop already runs here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name="pg-probe")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


# --- a throwaway cluster -----------------------------------------------------


def _find_pg_bin() -> Path:
    """The directory holding both initdb and pg_ctl: PATH first, then the
    highest version under /usr/lib/postgresql/*/bin (Debian's layout)."""
    on_path = shutil.which("pg_ctl")
    if on_path:
        directory = Path(on_path).resolve().parent
        if (directory / "initdb").is_file():
            return directory
    candidates = [Path(p) for p in Path("/").glob(_SYSTEM_PG_BIN_GLOB.lstrip("/"))]
    candidates = [d for d in candidates if (d / "initdb").is_file() and (d / "pg_ctl").is_file()]
    if candidates:
        return max(candidates, key=lambda d: _version_key(d.parent.name))
    server = (
        f"{ENV_FORCE_THROWAWAY} is set, so {DEFAULT_HOST}:{DEFAULT_PORT} was not tried"
        if _env_flag(ENV_FORCE_THROWAWAY)
        else f"no server on {DEFAULT_HOST}:{DEFAULT_PORT} accepts a login as 'postgres'"
    )
    raise RuntimeError(
        "No PostgreSQL server binaries (initdb and pg_ctl) found on PATH or under "
        f"{_SYSTEM_PG_BIN_GLOB}, and {server}. Fix: install the Debian package 'postgresql' "
        "(apt-get install postgresql), or set "
        f"{ENV_ADMIN_URL}=postgresql://USER@HOST:PORT/postgres to a server where USER "
        "may create databases."
    )


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", text)) or (-1,)


def _run_as_prefix() -> list[str]:
    """Command prefix that drops root for initdb and pg_ctl."""
    if os.geteuid() != 0:
        return []
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(
            "Running as root, and initdb refuses to run as root, but there is no "
            "'postgres' system user to run the throwaway PostgreSQL cluster as. Fix: "
            "install the Debian package 'postgresql' (it creates that user), run the "
            f"tests as a non-root user, or set {ENV_ADMIN_URL}."
        ) from None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise RuntimeError(
            "Running as root needs 'runuser' (util-linux) to start the throwaway "
            f"PostgreSQL cluster as the 'postgres' user; install it or set {ENV_ADMIN_URL}."
        )
    return [runuser, "-u", "postgres", "--"]


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((DEFAULT_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _conf_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# Settings of a cluster only tests use: durability traded for speed.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class LocalCluster:
    """A PostgreSQL cluster of the tests' own in a temporary folder, on a free loopback
    port; run as the `postgres` system user when the tests run as root. `remove()`
    stops it and deletes the folder. Made by `initdb()`, or by `basebackup_of()` as a
    streaming standby of another LocalCluster."""

    def __init__(self, name: str = "data") -> None:
        self.bindir = _find_pg_bin()
        self._prefix = _run_as_prefix()
        self.base = Path(tempfile.mkdtemp(prefix=f"keyturn-pg-{name}-"))
        self.data = self.base / "data"
        self.log = self.base / "postgres.log"
        self.port = 0
        self._running = False  # pg_ctl may have left a postmaster even when start failed
        if self._prefix:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self.base, user.pw_uid, user.pw_gid)

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@{DEFAULT_HOST}:{self.port}/postgres"

    @property
    def running(self) -> bool:
        return self._running

    def run(self, tool: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """A PostgreSQL program of this cluster's version, as the cluster's user.
        cwd=base: the postgres user may not be allowed into the caller's cwd."""
        return subprocess.run(
            [*self._prefix, str(self.bindir / tool), *args],
            cwd=self.base,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _check(self, result: subprocess.CompletedProcess[str], what: str) -> None:
        if result.returncode != 0:
            raise RuntimeError(
                f"{what} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
            )

    def initdb(self) -> None:
        result = self.run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            timeout=120,
        )
        self._check(result, "initdb")

    def allow_replication(self) -> None:
        """Let pg_basebackup and standbys connect from loopback without a password."""
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write("host replication postgres 127.0.0.1/32 trust\n")

    def basebackup_of(self, primary: LocalCluster) -> None:
        """This cluster's data: a copy of the running `primary`, set up to follow it as a
        streaming standby (-R writes primary_conninfo and standby.signal)."""
        result = self.run(
            "pg_basebackup",
            "-h",
            DEFAULT_HOST,
            "-p",
            str(primary.port),
            "-U",
            "postgres",
            "-D",
            str(self.data),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
            timeout=120,
        )
        self._check(result, "pg_basebackup")

    def start(self, settings: Mapping[str, str], port: int | None = None) -> None:
        """Start on `port`, or on a free one (tried three times: a free port can be taken
        before the server binds it). `settings` are appended to postgresql.auto.conf,
        where the last line of a name wins over what initdb or pg_basebackup wrote."""
        output = ""
        for _attempt in range(1 if port else 3):
            self.port = port or _free_loopback_port()
            lines = {
                "listen_addresses": DEFAULT_HOST,
                "port": str(self.port),
                "unix_socket_directories": str(self.base),
                **settings,
            }
            with (self.data / "postgresql.auto.conf").open("a") as conf:
                conf.writelines(f"{k} = {_conf_quote(v)}\n" for k, v in lines.items())
            result = self.run(
                "pg_ctl",
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                str(_START_TIMEOUT_S),
                "start",
                timeout=_START_TIMEOUT_S + 10,
            )
            self._running = True
            if result.returncode == 0:
                return
            output = result.stdout + result.stderr
            self.stop("immediate")
        server_log = self.log.read_text(errors="replace") if self.log.exists() else ""
        raise RuntimeError(
            f"could not start a PostgreSQL cluster in {self.base}:\n{output}\n{server_log}"
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (fast: disconnect clients, shut down cleanly), if it runs."""
        if not self._running:
            return
        result = self.run(
            "pg_ctl", "-D", str(self.data), "stop", "-m", mode, "-w", "-t", "30", timeout=40
        )
        if result.returncode != 0 and mode != "immediate":
            self.run("pg_ctl", "-D", str(self.data), "stop", "-m", "immediate", timeout=40)
        self._running = False

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def local_cluster(name: str = "data") -> Iterator[LocalCluster]:
    """A LocalCluster (not yet made or started) that is removed on exit."""
    cluster = LocalCluster(name)
    try:
        yield cluster
    finally:
        cluster.remove()


@contextlib.contextmanager
def _throwaway_cluster() -> Iterator[str]:
    with local_cluster() as cluster:
        cluster.initdb()
        cluster.start(FAST_SETTINGS)
        yield cluster.admin_url
