"""Every common first-hour mistake in the settings: one line naming the fix, exit 2.

Each case runs the real `keyturn serve` to its end, with one process and with a
supervisor of two (where a worker's error is passed up), and asserts the whole of
stderr: the one line, no traceback, nothing on stdout.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from conftest import TEST_SECRET
from support.certificates import Authority
from support.subprocess_server import run_to_the_end, serving, sqlite_settings

ACCEPTED = "use sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DATABASE"
FIX_PORT = "choose another HOST:PORT with --listen or KEYTURN_LISTEN (port 0: any free port)"


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield int(taken.getsockname()[1])


Case = tuple[dict[str, str], list[str], str]


def missing_database(pg_admin: str) -> Case:
    """A URL, in the plain libpq form, of a database that does not exist on the server."""
    admin = make_url(pg_admin)
    name = f"keyturn_missing_{uuid.uuid4().hex[:12]}"
    url = admin.set(drivername="postgresql", database=name)
    createdb = " ".join(
        filter(
            None,
            [
                "createdb",
                f"-h {admin.host}" if admin.host else "",
                f"-p {admin.port}" if admin.port else "",
                f"-U {admin.username}" if admin.username else "",
                name,
            ],
        )
    )
    where = f"{admin.host or 'localhost'}:{admin.port or 5432}"
    settings = {
        "KEYTURN_DATABASE_URL": url.render_as_string(hide_password=False),
        "KEYTURN_SECRET_KEY": TEST_SECRET,
    }
    line = (
        f"keyturn: database {name!r} does not exist on the PostgreSQL server at {where}: "
        f"create it ({createdb}) or fix KEYTURN_DATABASE_URL"
    )
    return settings, [], line


# name: (settings, extra serve arguments, the line), given the taken port and pg_admin.
CASES: dict[str, Callable[[int, str], Case]] = {
    "a URL that is no URL": lambda port, admin: (
        {"KEYTURN_DATABASE_URL": "nonsense", "KEYTURN_SECRET_KEY": TEST_SECRET},
        [],
        f"keyturn: KEYTURN_DATABASE_URL: not a database URL; {ACCEPTED}",
    ),
    "a MySQL URL": lambda port, admin: (
        {"KEYTURN_DATABASE_URL": "mysql://keyturn@127.0.0.1/keyturn"},
        [],
        f"keyturn: KEYTURN_DATABASE_URL: mysql:// is not a database Keyturn can use; {ACCEPTED}",
    ),
    "another PostgreSQL driver": lambda port, admin: (
        {"KEYTURN_DATABASE_URL": "postgresql+psycopg://127.0.0.1/keyturn"},
        [],
        "keyturn: KEYTURN_DATABASE_URL: postgresql+psycopg:// is not a database Keyturn can "
        f"use; {ACCEPTED}",
    ),
    "a bad read database URL": lambda port, admin: (
        {"KEYTURN_READ_DATABASE_URL": "mysql://127.0.0.1/keyturn"},
        [],
        "keyturn: KEYTURN_READ_DATABASE_URL: mysql:// is not a database Keyturn can use; "
        f"{ACCEPTED}",
    ),
    "a PostgreSQL database that does not exist": lambda port, admin: missing_database(admin),
    "a port in use": lambda port, admin: (
        {},
        ["--listen", f"127.0.0.1:{port}"],
        f"keyturn: cannot listen on 127.0.0.1:{port}: Address already in use; {FIX_PORT}",
    ),
    "an HTTP port in use": lambda port, admin: (
        {"KEYTURN_HTTP_LISTEN": f"127.0.0.1:{port}"},
        [],
        f"keyturn: cannot listen on 127.0.0.1:{port}: Address already in use; choose another "
        "HOST:PORT with --http-listen or KEYTURN_HTTP_LISTEN (port 0: any free port)",
    ),
    "a KEYTURN_HTTP_LISTEN that is no address": lambda port, admin: (
        {"KEYTURN_HTTP_LISTEN": "localhost"},
        [],
        "keyturn: KEYTURN_HTTP_LISTEN: 'localhost' is not HOST:PORT (PORT 0-65535), for "
        "example 127.0.0.1:50051",
    ),
    "a --listen that is no address": lambda port, admin: (
        {},
        ["--listen", "localhost"],
        "keyturn: --listen: 'localhost' is not HOST:PORT (PORT 0-65535), for example "
        "127.0.0.1:50051",
    ),
    "a logging level that is none": lambda port, admin: (
        {"KEYTURN_LOG_LEVEL": "verbose"},
        [],
        "keyturn: KEYTURN_LOG_LEVEL: 'verbose' is not a logging level: use one of DEBUG, "
        "INFO, WARNING, ERROR, CRITICAL",
    ),
    "a mail template folder that is not there": lambda port, admin: (
        {"KEYTURN_MAIL_TEMPLATES": "/nonexistent/keyturn-templates"},
        [],
        "keyturn: KEYTURN_MAIL_TEMPLATES: no folder /nonexistent/keyturn-templates: give the "
        "folder that holds the templates",
    ),
    "a port past 65535 in KEYTURN_METRICS_LISTEN": lambda port, admin: (
        {"KEYTURN_METRICS_LISTEN": "127.0.0.1:70000"},
        [],
        "keyturn: KEYTURN_METRICS_LISTEN: '127.0.0.1:70000' is not HOST:PORT (PORT 0-65535), "
        "for example 127.0.0.1:50051",
    ),
    # One Settings for every command: a connector's setting is checked by serve too.
    "a KEYTURN_STRIPE_LISTEN that is no address": lambda port, admin: (
        {"KEYTURN_STRIPE_LISTEN": "localhost:http"},
        [],
        "keyturn: KEYTURN_STRIPE_LISTEN: 'localhost:http' is not HOST:PORT (PORT 0-65535), "
        "for example 127.0.0.1:8080",
    ),
    "a TLS certificate without its key": lambda port, admin: (
        {"KEYTURN_TLS_CERT_FILE": "/etc/keyturn/server.pem"},
        [],
        "keyturn: KEYTURN_TLS_CERT_FILE is set without KEYTURN_TLS_KEY_FILE: set both (a "
        "certificate and its key) or neither",
    ),
    "a client CA without the admin port": lambda port, admin: (
        {
            "KEYTURN_TLS_CERT_FILE": "/etc/keyturn/server.pem",
            "KEYTURN_TLS_KEY_FILE": "/etc/keyturn/server.key",
            "KEYTURN_TLS_CLIENT_CA_FILE": "/etc/keyturn/clients.pem",
        },
        [],
        "keyturn: KEYTURN_TLS_CLIENT_CA_FILE is set without KEYTURN_ADMIN_LISTEN: the admin "
        "port serves Fulfillment and Catalog to clients with a certificate from the client "
        "CA; set both or neither",
    ),
    "a number that is no number": lambda port, admin: (
        {"KEYTURN_LAPSE_GRACE_SECONDS": "thirty"},
        [],
        "keyturn: KEYTURN_LAPSE_GRACE_SECONDS: Input should be a valid integer, unable to "
        "parse string as an integer",
    ),
}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_setting_gets_one_line_and_exit_2(
    tmp_path: Path, taken_port: int, pg_admin: str, case: str, workers: int
) -> None:
    settings, args, line = CASES[case](taken_port, pg_admin)
    env = {**sqlite_settings(tmp_path / "keyturn.db"), "KEYTURN_WORKERS": str(workers)}
    result = run_to_the_end(
        ["serve", "--listen", "127.0.0.1:0", *args], tmp_path, {**env, **settings}
    )
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [line]
    assert result.returncode == 2
    assert result.stdout == ""


@pytest.mark.parametrize("workers", [1, 2])
def test_an_admin_port_in_use_names_the_one_setting_that_moves_it(
    tmp_path: Path, taken_port: int, workers: int
) -> None:
    """The admin port has no --listen of its own: the hint names KEYTURN_ADMIN_LISTEN alone."""
    server_ca, client_ca = Authority("server CA"), Authority("client CA")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    server_ca.server().write(cert, key)
    settings = {
        **sqlite_settings(tmp_path / "keyturn.db"),
        "KEYTURN_WORKERS": str(workers),
        "KEYTURN_TLS_CERT_FILE": str(cert),
        "KEYTURN_TLS_KEY_FILE": str(key),
        "KEYTURN_TLS_CLIENT_CA_FILE": str(client_ca.write(tmp_path / "clients.pem")),
        "KEYTURN_ADMIN_LISTEN": f"127.0.0.1:{taken_port}",
    }
    result = run_to_the_end(["serve", "--listen", "127.0.0.1:0"], tmp_path, settings)
    assert result.stderr.splitlines() == [
        f"keyturn: cannot listen on 127.0.0.1:{taken_port}: Address already in use; choose "
        "another HOST:PORT with KEYTURN_ADMIN_LISTEN (port 0: any free port)"
    ]
    assert (result.returncode, result.stdout) == (2, "")


def _tls_case(folder: Path, case: str) -> tuple[dict[str, str], str]:
    """Settings naming TLS files that exist as settings but cannot be served, and the line."""
    authority = Authority("test CA")
    cert, key = folder / "server.pem", folder / "server.key"
    authority.server().write(cert, key)
    if case == "unreadable certificate":
        cert = folder / "missing.pem"
        line = f"keyturn: KEYTURN_TLS_CERT_FILE: cannot read {cert}: No such file or directory"
    elif case == "the key of another certificate":
        authority.server().write(folder / "other.pem", folder / "other.key")
        key = folder / "other.key"
        line = (
            f"keyturn: KEYTURN_TLS_KEY_FILE: {key} is not the key of the certificate in "
            f"{cert} (KEYTURN_TLS_CERT_FILE)"
        )
    else:  # a certificate file that holds a key
        cert = key
        line = f"keyturn: KEYTURN_TLS_CERT_FILE: {cert} holds no PEM certificate"
    settings = {"KEYTURN_TLS_CERT_FILE": str(cert), "KEYTURN_TLS_KEY_FILE": str(key)}
    return settings, line


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(
    "case", ["unreadable certificate", "the key of another certificate", "no certificate"]
)
def test_tls_files_that_cannot_be_served_get_one_line_and_exit_2(
    tmp_path: Path, case: str, workers: int
) -> None:
    settings, line = _tls_case(tmp_path, case)
    env = {**sqlite_settings(tmp_path / "keyturn.db"), "KEYTURN_WORKERS": str(workers)}
    result = run_to_the_end(["serve", "--listen", "127.0.0.1:0"], tmp_path, {**env, **settings})
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [line]
    assert result.returncode == 2
    assert result.stdout == ""


STRIPE_SECRETS = {"KEYTURN_STRIPE_WEBHOOK_SECRET": "whsec_test", "KEYTURN_FULFILL_TOKEN": "kt_x"}
FULFILL_TOKEN = (
    "KEYTURN_FULFILL_TOKEN (a token with the fulfill scope: keyturn tokens create --scope fulfill)"
)
STRIPE_PORT = "(PORT 0-65535), for example 127.0.0.1:8080"
FIX_STRIPE_PORT = (
    "choose another HOST:PORT with --listen or KEYTURN_STRIPE_LISTEN (port 0: any free port)"
)

# name: (command, settings, the line), given the taken port. Each stops before the
# connector listens or calls the server.
CONNECTOR_CASES: dict[str, Callable[[int], tuple[list[str], dict[str, str], str]]] = {
    "a KEYTURN_STRIPE_LISTEN without a port": lambda port: (
        ["connect", "stripe"],
        {**STRIPE_SECRETS, "KEYTURN_STRIPE_LISTEN": "127.0.0.1"},
        f"keyturn: KEYTURN_STRIPE_LISTEN: '127.0.0.1' is not HOST:PORT {STRIPE_PORT}",
    ),
    "a --listen of connect stripe past 65535": lambda port: (
        ["connect", "stripe", "--listen", "127.0.0.1:70000"],
        STRIPE_SECRETS,
        f"keyturn: --listen: '127.0.0.1:70000' is not HOST:PORT {STRIPE_PORT}",
    ),
    "a webhook port in use": lambda port: (
        ["connect", "stripe"],
        {**STRIPE_SECRETS, "KEYTURN_STRIPE_LISTEN": f"127.0.0.1:{port}"},
        f"keyturn: cannot listen on 127.0.0.1:{port}: Address already in use; {FIX_STRIPE_PORT}",
    ),
    "a KEYTURN_STRIPE_PATH that is no path": lambda port: (
        ["connect", "stripe", "--listen", "127.0.0.1:0"],
        {**STRIPE_SECRETS, "KEYTURN_STRIPE_PATH": "stripe/webhook"},
        "keyturn: KEYTURN_STRIPE_PATH: 'stripe/webhook' is not a URL path, for example "
        "/stripe/webhook",
    ),
    "an import without its token": lambda port: (
        ["orders", "import", "orders.csv"],
        {},
        f"keyturn: set {FULFILL_TOKEN}",
    ),
    "a connector's target from a KEYTURN_LISTEN that is no address": lambda port: (
        ["orders", "import", "orders.csv"],  # no --target: KEYTURN_LISTEN names the server
        {"KEYTURN_FULFILL_TOKEN": "kt_x", "KEYTURN_LISTEN": "localhost"},
        "keyturn: KEYTURN_LISTEN: 'localhost' is not HOST:PORT (PORT 0-65535), for example "
        "127.0.0.1:50051",
    ),
}


@pytest.mark.parametrize("case", list(CONNECTOR_CASES))
def test_a_bad_connector_setting_gets_one_line_and_exit_2(
    tmp_path: Path, taken_port: int, case: str
) -> None:
    command, settings, line = CONNECTOR_CASES[case](taken_port)
    (tmp_path / "orders.csv").write_text("order_id,customer_id,sku_id\nQ-1,C-1,X\n")
    result = run_to_the_end(command, tmp_path, settings)
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [line]
    assert result.returncode == 2
    assert result.stdout == ""


def test_no_postgresql_server_at_the_address_gets_one_line(tmp_path: Path) -> None:
    # A port that listens but does not speak PostgreSQL would hang; a closed one refuses.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings = {
        "KEYTURN_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/keyturn",
        "KEYTURN_SECRET_KEY": TEST_SECRET,
        "KEYTURN_WORKERS": "1",
    }
    result = run_to_the_end(["serve", "--listen", "127.0.0.1:0"], tmp_path, settings)
    [line] = result.stderr.splitlines()
    assert line.startswith(f"keyturn: cannot connect to PostgreSQL at 127.0.0.1:{port} ("), line
    assert line.endswith("): is it running there? Fix the host or port in KEYTURN_DATABASE_URL"), (
        line
    )
    assert result.returncode == 2


async def test_postgresql_urls_without_a_driver_mean_asyncpg(
    tmp_path: Path, postgres_url: str
) -> None:
    plain = make_url(postgres_url).set(drivername="postgresql")
    settings = {
        "KEYTURN_DATABASE_URL": plain.render_as_string(hide_password=False),
        "KEYTURN_SECRET_KEY": TEST_SECRET,
    }
    async with serving(tmp_path, settings) as server:
        assert server.address


async def test_a_misspelled_variable_is_reported_with_the_closest_setting(
    tmp_path: Path,
) -> None:
    settings = sqlite_settings(
        tmp_path / "keyturn.db",
        KEYTURN_LAPSE_GRACE_SECOND="10",
        KEYTURN_ZZZZ="1",
        KEYTURN_TOKEN="kt_x",  # the client example's former name
    )
    async with serving(tmp_path, settings, workers=2) as server:
        warnings = [line for line in server.stderr_lines if "is not a Keyturn setting" in line]
    assert warnings == [
        "keyturn: warning: KEYTURN_LAPSE_GRACE_SECOND is not a Keyturn setting and is "
        "ignored; did you mean KEYTURN_LAPSE_GRACE_SECONDS?",
        "keyturn: warning: KEYTURN_TOKEN is not a Keyturn setting and is ignored; did you "
        "mean KEYTURN_FULFILL_TOKEN?",
        "keyturn: warning: KEYTURN_ZZZZ is not a Keyturn setting and is ignored; see README "
        "'Configuration'",
    ]
