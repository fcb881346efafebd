"""The examples in clients/python/examples run as the client README documents them, with
the shipped catalog (examples/catalog.yaml) and the shipped orders (orders.jsonl),
against a real server: a README command or example file that stops working fails here."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
from client_harness import WAIT

from keyturn.fulfillment.v1 import catalog_pb2_grpc
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.api.server import KeyturnServer
from keyturn.server.catalog_file import CatalogFile

from conftest import Tokens
from support.catalog import put_shipped_catalog

pytest_plugins = ["client_fixtures"]

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "python"
README = CLIENT / "README.md"
DOCUMENTED_TARGET = "127.0.0.1:50051"


def documented_command(script: str) -> list[str]:
    """The arguments the client README's Examples section gives `examples/SCRIPT`."""
    found = re.findall(rf"`examples/{re.escape(script)} ([^`]*)`", README.read_text())
    assert len(found) == 1, f"the client README documents examples/{script} {len(found)} times"
    return found[0].split()


def filled_in(args: list[str], target: str, **values: str) -> list[str]:
    """The documented arguments with this test's server and the placeholders' values."""
    return [target if a == DOCUMENTED_TARGET else values.get(a, a) for a in args]


async def start(*args: str, env: Mapping[str, str] | None = None) -> asyncio.subprocess.Process:
    """examples/ARGS[0] with the other arguments, this environment plus `env`."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(CLIENT / "examples" / args[0]),
        *args[1:],
        env={**os.environ, **(env or {})},
        cwd=CLIENT,  # the README's commands name files from the client's folder
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def read_line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    return (await asyncio.wait_for(process.stdout.readline(), WAIT)).decode().strip()


@pytest.fixture
async def shipped_catalog(
    catalog_stub: catalog_pb2_grpc.CatalogServiceStub, tokens: Tokens
) -> CatalogFile:
    return await put_shipped_catalog(catalog_stub, tokens("catalog"))


async def fulfil_shipped_orders(
    target: str, token: str, *extra: str
) -> tuple[int | None, list[dict[str, object]]]:
    """examples/fulfill_order.py run as documented, its token in KEYTURN_FULFILL_TOKEN (as
    for Keyturn's own connectors); its exit code and result lines."""
    args = filled_in(documented_command("fulfill_order.py"), target)
    assert "--token" not in args  # the README relies on the variable
    connector = await start("fulfill_order.py", *args, *extra, env={"KEYTURN_FULFILL_TOKEN": token})
    out, err = await asyncio.wait_for(connector.communicate(), WAIT)
    assert err == b""
    return connector.returncode, [json.loads(line) for line in out.decode().splitlines()]


async def test_fulfill_order_example_fulfils_the_shipped_orders_and_replays_them(
    server: KeyturnServer,
    shipped_catalog: CatalogFile,
    bearer: dict[str, str],
) -> None:
    code, results = await fulfil_shipped_orders(server.address, bearer["fulfill"])
    assert code == 0, results
    shipped = [
        json.loads(line) for line in (CLIENT / "examples" / "orders.jsonl").read_text().splitlines()
    ]
    assert [r["order_id"] for r in results] == [o["orderId"] for o in shipped]
    assert [r["replayed"] for r in results] == [False] * len(shipped)
    for result, order in zip(results, shipped, strict=True):
        [created] = result["entitlements"]  # type: ignore[misc]
        assert created["license_key"]
        assert created["seats"] == order["lines"][0]["quantity"]

    code, again = await fulfil_shipped_orders(server.address, bearer["fulfill"])
    assert code == 0, again
    assert [r["replayed"] for r in again] == [True] * len(shipped)
    assert [r["entitlements"] for r in again] == [r["entitlements"] for r in results]


async def test_activate_example_holds_a_seat_of_a_shipped_order_until_interrupted(
    server: KeyturnServer,
    shipped_catalog: CatalogFile,
    bearer: dict[str, str],
    licensing_stub: licensing_pb2_grpc.LicensingServiceStub,
) -> None:
    _, results = await fulfil_shipped_orders(server.address, bearer["fulfill"])
    [standard] = results[0]["entitlements"]  # type: ignore[misc]
    args = filled_in(
        documented_command("activate.py"), server.address, XXXX=standard["license_key"]
    )
    app = await start("activate.py", *args, "--label", "example")
    licensed = await read_line(app)
    assert licensed.startswith("licensed: acme-cad standard edition (active)"), licensed
    assert "export-pdf, projects=10" in licensed
    assert "seat 1/3" in licensed
    assert await read_line(app) == "running; Ctrl-C to stop"
    app.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(app.communicate(), WAIT)
    assert (app.returncode, out.decode().strip(), err) == (0, "seat released", b"")
    # The seat is free again: another device takes one of three, not two.
    other = await licensing_stub.ActivateSeat(
        lic.ActivateSeatRequest(
            license_key=standard["license_key"], product_id="acme-cad", fingerprint="device-0002"
        )
    )
    assert other.entitlement.seats_in_use == 1


async def test_activate_example_explains_a_bad_key(server: KeyturnServer) -> None:
    args = filled_in(documented_command("activate.py"), server.address, XXXX="AAAA-BBBB")
    app = await start("activate.py", *args)
    out, err = await asyncio.wait_for(app.communicate(), WAIT)
    assert (app.returncode, out) == (2, b"")
    assert b"not valid" in err


async def test_fulfill_order_example_names_a_wrapped_order_and_an_unknown_sku(
    server: KeyturnServer,
    shipped_catalog: CatalogFile,
    bearer: dict[str, str],
) -> None:
    order = {
        "orderId": "1003",
        "customer": {"customerId": "c-9"},
        "lines": [{"skuId": "NOPE", "quantity": 1}],
    }
    wrapped = json.dumps(order, indent=1)  # one order over several lines
    connector = await start(
        "fulfill_order.py", "--target", server.address, "--token", bearer["fulfill"],
        "--source", "shop",
    )  # fmt: skip
    stdin = (json.dumps(order) + "\n" + wrapped + "\n").encode()
    out, err = await asyncio.wait_for(connector.communicate(stdin), WAIT)
    assert (connector.returncode, err) == (1, b"")
    unknown, *malformed = (json.loads(line) for line in out.decode().splitlines())
    assert (unknown["order_id"], unknown["error"]) == ("1003", "SKU_NOT_FOUND")
    assert [m["line"] for m in malformed] == list(range(2, len(wrapped.splitlines()) + 2))
    assert {m["error"] for m in malformed} == {"MALFORMED"}
