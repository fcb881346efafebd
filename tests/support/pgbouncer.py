"""A PgBouncer in transaction pooling mode in front of the tests' PostgreSQL server.

`pgbouncer_in_front(admin_url)` starts Debian's `pgbouncer` (installed by
scripts/setup.sh --for-tests) on a free loopback port, forwarding every database
name to the server of `admin_url`, and yields a `Bouncer` that turns a database
URL into one through the pooler and back. As root it runs as the `postgres`
system user (pgbouncer refuses to run as root). Stopped and removed on exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

START_TIMEOUT_S = 30.0
POOL_SIZE = 40  # server connections per database: enough for three replicas' pools at once


@dataclass(frozen=True)
class Bouncer:
    host: str
    port: int
    server_netloc: str

    def pooled(self, url: str) -> str:
        """`url` (a database on the server) through the pooler."""
        parts = urlsplit(url)
        user = parts.username or "postgres"
        return urlunsplit(parts._replace(netloc=f"{user}@{self.host}:{self.port}"))

    def is_pooled(self, url: str) -> bool:
        parts = urlsplit(url)
        return (parts.hostname, parts.port) == (self.host, self.port)

    def direct(self, url: str) -> str:
        """A pooled URL back on the server itself (for what a pooler cannot carry:
        migrations, the tests' own SQL)."""
        if not self.is_pooled(url):
            return url
        return urlunsplit(urlsplit(url)._replace(netloc=self.server_netloc))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _binary() -> str:
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if Path(p).is_file()), None
    )
    if found is None:
        raise RuntimeError(
            "pgbouncer not found: run `bash scripts/setup.sh --for-tests` (it installs the "
            "Debian package pgbouncer), or apt-get install pgbouncer"
        )
    return found


def _wait_until_listening(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited with {process.returncode}: {log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)  # polling a port that is being opened; nothing to wait on instead
    raise RuntimeError(f"pgbouncer did not listen within {START_TIMEOUT_S}s: {log.read_text()}")


@contextlib.contextmanager
def pgbouncer_in_front(admin_url: str) -> Iterator[Bouncer]:
    server = urlsplit(admin_url)
    port = _free_port()
    folder = Path(tempfile.mkdtemp(prefix="keyturn-pgbouncer-"))
    user = server.username or "postgres"
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server.hostname} port={server.port or 5432} user={user}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = any\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {POOL_SIZE}\n"
        "max_client_conn = 2000\n"
        "server_reset_query =\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
        f"logfile = {folder / 'pgbouncer.log'}\n"
        f"pidfile = {folder / 'pgbouncer.pid'}\n"
    )
    command = [_binary(), str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        command[1:1] = ["-u", "postgres"]
    log = folder / "pgbouncer.log"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_until_listening(process, port, log)
        netloc = f"{user}@{server.hostname}:{server.port or 5432}"
        yield Bouncer("127.0.0.1", port, netloc)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)
