"""The examples in clients/python/examples run as documented, against a real server."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

from client_harness import WAIT, LicenseOf

from keyturn.fulfillment.v1 import catalog_pb2_grpc
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.api.server import KeyturnServer

from conftest import Tokens
from support.catalog import put_catalog
from support.rpc import PRODUCT_ID, create_sku

pytest_plugins = ["client_fixtures"]

EXAMPLES = Path(__file__).resolve().parents[2] / "clients" / "python" / "examples"


async def start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / args[0]),
        *args[1:],
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def read_line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    return (await asyncio.wait_for(process.stdout.readline(), WAIT)).decode().strip()


async def test_activate_example_holds_the_seat_until_interrupted(
    server: KeyturnServer,
    license_of: LicenseOf,
    licensing_stub: licensing_pb2_grpc.LicensingServiceStub,
) -> None:
    entitlement = await license_of(seats=1)
    app = await start(
        "activate.py", "--target", server.address, "--product", PRODUCT_ID,
        "--key", entitlement.license_key, "--label", "example",
    )  # fmt: skip
    licensed = await read_line(app)
    assert licensed.startswith(f"licensed: {PRODUCT_ID} standard edition (active)")
    assert "export-pdf, projects=10" in licensed
    assert "seat 1/1" in licensed
    assert await read_line(app) == "running; Ctrl-C to stop"
    app.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(app.communicate(), WAIT)
    assert (app.returncode, out.decode().strip(), err) == (0, "seat released", b"")
    # The seat is free again for another device.
    other = await licensing_stub.ActivateSeat(
        lic.ActivateSeatRequest(
            license_key=entitlement.license_key, product_id=PRODUCT_ID, fingerprint="device-0002"
        )
    )
    assert other.entitlement.seats_in_use == 1


async def test_activate_example_explains_a_bad_key(server: KeyturnServer) -> None:
    app = await start(
        "activate.py", "--target", server.address, "--product", PRODUCT_ID, "--key", "AAAA-BBBB"
    )
    out, err = await asyncio.wait_for(app.communicate(), WAIT)
    assert (app.returncode, out) == (2, b"")
    assert b"not valid" in err


async def test_fulfill_order_example_fulfils_replays_and_reports_errors(
    server: KeyturnServer,
    catalog_stub: catalog_pb2_grpc.CatalogServiceStub,
    tokens: Tokens,
    bearer: dict[str, str],
) -> None:
    await put_catalog(catalog_stub, tokens("catalog"), create_sku("CAD-1Y", seats=3))
    order = {
        "orderId": "1001",
        "customer": {"customerId": "c-7", "name": "Initech", "email": "it@initech.example"},
        "lines": [{"skuId": "CAD-1Y", "quantity": 1, "externalReference": "shop:sub_1001"}],
    }
    unknown_sku = {**order, "orderId": "1002", "lines": [{"skuId": "NOPE", "quantity": 1}]}
    lines = [json.dumps(o) for o in (order, order, unknown_sku)]
    connector = await start(
        "fulfill_order.py", "--target", server.address, "--token", bearer["fulfill"],
        "--source", "shop",
    )  # fmt: skip
    out, err = await asyncio.wait_for(
        connector.communicate(("\n".join(lines) + "\n").encode()), WAIT
    )
    assert err == b""
    assert connector.returncode == 1  # one order failed
    first, again, failed = (json.loads(line) for line in out.decode().splitlines())
    assert (first["order_id"], first["replayed"], again["replayed"]) == ("1001", False, True)
    [created] = first["entitlements"]
    assert created["seats"] == 3
    assert created["license_key"]
    assert again["entitlements"] == first["entitlements"]
    assert (failed["order_id"], failed["error"]) == ("1002", "SKU_NOT_FOUND")
