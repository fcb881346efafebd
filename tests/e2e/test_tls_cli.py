"""The commands that call a server, over TLS: `keyturn health` (as the container's health
check runs it, with nothing but the server's own settings) and an order connector over
mutual TLS to the admin port, against a real `keyturn serve` with certificates made here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.certificates import SERVER_NAME, Authority
from support.subprocess_server import (
    ADMIN_RE,
    create_token,
    run_to_the_end,
    serving,
    sqlite_settings,
)


def _tls_settings(folder: Path, server_ca: Authority) -> dict[str, str]:
    cert, key = folder / "server.pem", folder / "server.key"
    server_ca.server().write(cert, key)
    return {
        **sqlite_settings(folder / "keyturn.db"),
        "KEYTURN_TLS_CERT_FILE": str(cert),
        "KEYTURN_TLS_KEY_FILE": str(key),
    }


@pytest.mark.parametrize("workers", [1, 2])
async def test_keyturn_health_speaks_tls_with_the_servers_own_settings(
    tmp_path: Path, workers: int
) -> None:
    server_ca = Authority("server CA")
    settings = _tls_settings(tmp_path, server_ca)
    async with serving(tmp_path, settings, workers=workers) as server:
        address = ["--address", server.address]
        # As the Dockerfile's HEALTHCHECK runs it: the server's environment, nothing more.
        healthy = run_to_the_end(["health", *address], tmp_path, settings)
        assert (healthy.returncode, healthy.stdout.strip()) == (0, "SERVING"), healthy.stderr

        # From elsewhere: the CA and the name on the certificate.
        ca_file = server_ca.write(tmp_path / "ca.pem")
        told = run_to_the_end(
            ["health", *address, "--ca-file", str(ca_file), "--server-name", SERVER_NAME],
            tmp_path,
            {},
        )
        assert (told.returncode, told.stdout.strip()) == (0, "SERVING"), told.stderr

        plaintext = run_to_the_end(["health", *address, "--tls", "off"], tmp_path, settings)
        assert plaintext.returncode == 1
        assert plaintext.stderr.startswith("unhealthy: UNAVAILABLE"), plaintext.stderr


async def test_an_order_import_reaches_fulfillment_over_mutual_tls(tmp_path: Path) -> None:
    server_ca, client_ca = Authority("server CA"), Authority("client CA")
    settings = {
        **_tls_settings(tmp_path, server_ca),
        "KEYTURN_TLS_CLIENT_CA_FILE": str(client_ca.write(tmp_path / "clients.pem")),
        "KEYTURN_ADMIN_LISTEN": "127.0.0.1:0",
    }
    token = await create_token(tmp_path, settings, ["fulfill"])
    client_cert, client_key = tmp_path / "connector.pem", tmp_path / "connector.key"
    client_ca.client("connector").write(client_cert, client_key)
    (tmp_path / "orders.csv").write_text("order_id,customer_id,sku_id\nQ-1,C-1,NO-SUCH-SKU\n")
    async with serving(tmp_path, settings, workers=1) as server:
        [admin] = [m["address"] for line in server.stdout_lines if (m := ADMIN_RE.match(line))]
        connector = {
            **settings,
            "KEYTURN_FULFILL_TOKEN": token,
            "KEYTURN_TARGET_CERT_FILE": str(client_cert),
            "KEYTURN_TARGET_KEY_FILE": str(client_key),
        }
        command = ["orders", "import", "orders.csv", "--no-progress", "--rejects", "rejects.csv"]
        result = run_to_the_end([*command, "--target", admin], tmp_path, connector)
        # Fulfillment answered: the order was refused for its SKU, not for the connection.
        assert result.returncode == 1, result.stderr
        assert "SKU_NOT_FOUND" in (tmp_path / "rejects.csv").read_text()

        public = run_to_the_end([*command, "--target", server.address], tmp_path, connector)
        assert public.returncode == 1, public.stderr
        assert "CLIENT_CERTIFICATE_REQUIRED" in (tmp_path / "rejects.csv").read_text()
