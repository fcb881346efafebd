"""The TLS blocks of README.md and clients/python/README.md, run as a vendor pastes them.

The server terminal is README *Running with a certificate*'s first block (with the
*Mutual TLS* block's settings first, for the admin port), in bash, with the paths
under /etc/keyturn/tls/ pointing at certificates made here for `localhost` and the
listen addresses this run's. The clients then dial `localhost` where the documents
say licensing.example.com, from a folder holding the files the blocks name (ca.pem,
company-ca.pem, connector.pem, shop.pem...). A Python block that only builds a
client is followed by a call the test makes with that client, so the handshake it
configured is proven, not just constructed.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from keyturn.client import FulfillmentClient, tls_credentials
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

from support.certificates import Authority
from support.doc_blocks import block, commands_of, executed, substituted
from support.repository import ROOT
from support.smtp import free_port
from support.subprocess_server import (
    ADMIN_RE,
    CLI_TIMEOUT_S,
    START_TIMEOUT_S,
    ServerProcess,
    child_env,
    create_token,
    run_cli,
    sqlite_settings,
)
from support.terminals import hang_up, in_a_terminal

README = "README.md"
CLIENT_README = "clients/python/README.md"
RUNNING = "Running with a certificate"
MUTUAL = "Mutual TLS for the admin services"
DOCUMENTED_FOLDER = "/etc/keyturn/tls/"
DOCUMENTED_LISTEN = "KEYTURN_LISTEN=0.0.0.0:50051"
DOCUMENTED_HTTP_LISTEN = "KEYTURN_HTTP_LISTEN=0.0.0.0:8443"
DOCUMENTED_HTTP_TARGET = "licensing.example.com:8443"
HTTP_RE = re.compile(r"^keyturn http on 127\.0\.0\.1:(?P<port>\d+)$")
DOCUMENTED_ADMIN_LISTEN = "10.0.0.5:50052"
DOCUMENTED_TARGET = "licensing.example.com:50051"
DOCUMENTED_ADMIN_TARGET = "licensing.example.com:50052"
HOST = "localhost"  # the name on the server's certificate, and the one the clients dial
SKU = "CAD-STD-1Y"  # of examples/catalog.yaml


@dataclass(frozen=True)
class Site:
    """A server started from the README's blocks, and the reader's folder beside it."""

    folder: Path  # the reader's working directory: the CA and client certificates
    server: ServerProcess
    settings: str  # the server terminal's `export` lines, as run
    token: str  # catalog, fulfill and read
    target: str  # localhost:PORT of the public port
    admin_target: str  # localhost:PORT of the admin port, "" without mutual TLS
    http_target: str  # localhost:PORT of the HTTP/JSON port (HTTPS)

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.pem"


def reader_env(**settings: str) -> dict[str, str]:
    """The environment of a reader's shell: this venv's `keyturn` and `grpcurl` on PATH,
    no KEYTURN_* but `settings`."""
    env = child_env(settings)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def run_shell(text: str, site: Site, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", text],
        cwd=site.folder,
        env=reader_env(**settings),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )


def start_site(folder: Path, *, mutual: bool) -> Iterator[Site]:
    """The vendor's certificates where the blocks name them, a database with the example
    catalog and a token, and the server terminal of the blocks, stopped at Ctrl-C."""
    tls, reader = folder / "tls", folder / "reader"
    tls.mkdir()
    reader.mkdir()
    vendor, back_office = Authority("vendor CA"), Authority("back-office CA")
    vendor.server(HOST).write(tls / "fullchain.pem", tls / "privkey.pem")
    for name in ("ca.pem", "company-ca.pem"):  # the two documents name the CA differently
        vendor.write(reader / name)
    back_office.write(tls / "back-office-ca.pem")
    for name in ("connector", "shop"):
        back_office.client(name).write(reader / f"{name}.pem", reader / f"{name}.key")
    database = sqlite_settings(folder / "keyturn.db")
    catalog = str(ROOT / "examples" / "catalog.yaml")
    run_cli(["catalog", "apply", "--create", catalog], folder, database)
    token = asyncio.run(create_token(folder, database))

    admin_port = free_port() if mutual else 0
    replacements = {
        DOCUMENTED_FOLDER: f"{tls}/",
        DOCUMENTED_LISTEN: "KEYTURN_LISTEN=127.0.0.1:0",
        DOCUMENTED_HTTP_LISTEN: "KEYTURN_HTTP_LISTEN=127.0.0.1:0",
    }
    text = block(README, RUNNING, 0).text
    if mutual:
        text = block(README, MUTUAL, 0).text + text
        replacements[DOCUMENTED_ADMIN_LISTEN] = f"127.0.0.1:{admin_port}"
    terminal = substituted(text, replacements)
    server = ServerProcess(
        in_a_terminal(terminal, folder, reader_env(**database, KEYTURN_WORKERS="1"))
    )
    try:
        server.await_listening(START_TIMEOUT_S)
        if mutual:
            admin = [m["address"] for line in server.stdout_lines if (m := ADMIN_RE.match(line))]
            assert admin == [f"127.0.0.1:{admin_port}"], server.stdout_lines
        [http_port] = [m["port"] for line in server.stdout_lines if (m := HTTP_RE.match(line))]
        exports = [line for line in commands_of(terminal) if line.startswith("export ")]
        yield Site(
            folder=reader,
            server=server,
            settings="\n".join(exports),
            token=token,
            target=f"{HOST}:{server.port}",
            admin_target=f"{HOST}:{admin_port}" if mutual else "",
            http_target=f"{HOST}:{http_port}",
        )
    finally:
        hang_up(server.process)
        server.stop()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from start_site(tmp_path_factory.mktemp("readme-tls"), mutual=False)


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from start_site(tmp_path_factory.mktemp("readme-mtls"), mutual=True)


def order(order_id: str) -> ful.FulfillOrderRequest:
    return ful.FulfillOrderRequest(
        source="readme-tls",
        order_id=order_id,
        customer=ful.Customer(customer_id="c-tls"),
        lines=[ful.OrderLine(sku_id=SKU, quantity=1)],
    )


@pytest.fixture(scope="module")
def license_key(tls: Site) -> str:
    """A key of the TLS-only server, fulfilled over its public port (no client
    certificate asked there)."""
    credentials = tls_credentials(tls.ca_file)
    with FulfillmentClient(tls.target, tls.token, credentials=credentials) as orders:
        return orders.fulfill_order(order("key-1")).entitlements[0].license_key


def in_the_folder(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """The snippets name their PEM files relative to the reader's folder."""
    monkeypatch.chdir(site.folder)


def test_the_server_block_serves_tls_and_the_client_commands_reach_it(tls: Site) -> None:
    targets = {DOCUMENTED_TARGET: tls.target, DOCUMENTED_HTTP_TARGET: tls.http_target}
    calls = run_shell(substituted(block(README, RUNNING, 1).text, targets), tls)
    assert calls.returncode == 0, f"{calls.stdout}\n{calls.stderr}"
    lines = calls.stdout.splitlines()
    assert lines[0] == "SERVING"  # keyturn health
    assert "keyturn.licensing.v1.LicensingService" in lines[1:-1]  # grpcurl list
    assert lines[-1] == '{"status": "SERVING"}'  # curl over HTTPS, the same certificate
    plaintext = run_shell(f"curl --silent --show-error http://{tls.http_target}/healthz", tls)
    assert plaintext.returncode == 52, plaintext.stderr  # "Empty reply": HTTPS only
    # Without the CA the same commands fail: the server's certificate is no public CA's.
    untrusted = run_shell(f"keyturn health --address {tls.target} --tls on", tls)
    assert untrusted.returncode == 1, untrusted.stderr
    # (grpc's own log may come first: the handshake failure, as grpc-core reports it)
    assert untrusted.stderr.splitlines()[-1].startswith("unhealthy: UNAVAILABLE"), untrusted.stderr


def test_the_python_client_of_the_readme_checks_a_key_over_tls(
    tls: Site, license_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_the_folder(tls, monkeypatch)
    names = executed(block(README, RUNNING, 2), {}, {DOCUMENTED_TARGET: tls.target})
    with names["client"] as client:
        info = client.check(license_key)
    assert (info.product_id, info.seats) == ("acme-cad", 1)


def test_the_public_ca_snippet_trusts_grpcs_default_roots(tls: Site, license_key: str) -> None:
    """The default roots are the file GRPC_DEFAULT_SSL_ROOTS_FILE_PATH names, read once per
    process: the snippet runs in a Python of its own, trusting the vendor's CA that way."""
    snippet = substituted(block(CLIENT_README, "TLS", 0).text, {DOCUMENTED_TARGET: tls.target})
    check = "import sys\nprint(client.check(sys.argv[1]).seats)\n"
    ran = subprocess.run(
        [sys.executable, "-c", f"{snippet}\n{check}", license_key],
        cwd=tls.folder,
        env=reader_env() | {"GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(tls.ca_file)},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )
    assert (ran.returncode, ran.stdout) == (0, "1\n"), ran.stderr


def test_the_own_ca_snippet_checks_a_key_over_tls(
    tls: Site, license_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_the_folder(tls, monkeypatch)
    names = executed(block(CLIENT_README, "TLS", 1), {}, {DOCUMENTED_TARGET: tls.target})
    with names["client"] as client:
        assert client.check(license_key).seats == 1


def test_the_mutual_tls_snippet_fulfils_an_order_on_the_admin_port(
    mtls: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_the_folder(mtls, monkeypatch)
    names: dict[str, Any] = {"token": mtls.token}
    executed(block(CLIENT_README, "TLS", 2), names, {DOCUMENTED_ADMIN_TARGET: mtls.admin_target})
    with names["orders"] as orders:
        [created] = orders.fulfill_order(order("mtls-1")).entitlements
    assert (created.seats, created.customer.customer_id) == (1, "c-tls")


def test_the_connector_block_imports_orders_over_mutual_tls(mtls: Site) -> None:
    """On the server's host (its settings exported), with the connector's certificate."""
    (mtls.folder / "orders.csv").write_text(f"order_id,customer_id,sku_id\nCSV-1,c-csv,{SKU}\n")
    connector = block(README, MUTUAL, 1).text
    imported = run_shell(f"{mtls.settings}\n{connector}", mtls, KEYTURN_FULFILL_TOKEN=mtls.token)
    assert imported.returncode == 0, f"{imported.stdout}\n{imported.stderr}"
    assert [line.split()[0] for line in imported.stdout.splitlines() if "CSV-1" in line] == [
        "CSV-1"
    ]
