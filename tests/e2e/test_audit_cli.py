"""`keyturn audit list`: the README's commands, on every database, after changes made by
the `keyturn` command (recorded as `cli:USER`) and by an API token through the server."""

from __future__ import annotations

import getpass
import shlex
from pathlib import Path

import grpc

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.fulfillment.v1 import fulfillment_pb2_grpc
from keyturn.server.catalog_file import read_catalog_file

from conftest import server_settings
from support.catalog import SHIPPED_CATALOG
from support.doc_blocks import block, commands_of
from support.subprocess_server import run_cli, run_to_the_end, serving

HEADER = ["TIME", "ACTOR", "ACTION", "RESOURCE", "ENTITLEMENT"]


def table(stdout: str) -> list[list[str]]:
    """The rows of the printed table (its columns have no spaces in them)."""
    lines = stdout.splitlines()
    assert lines[0].split() == HEADER
    return [line.split() for line in lines[1:]]


async def test_the_readme_commands_list_the_trail(tmp_path: Path, database_url: str) -> None:
    settings = server_settings(database_url)
    cli = f"cli:{getpass.getuser()}"
    created = run_cli(["tokens", "create", "--scope", "fulfill"], tmp_path, settings)
    secret, token_id = created.stdout.strip(), created.stderr.splitlines()[-1].split()[1]
    run_cli(["catalog", "apply", str(SHIPPED_CATALOG)], tmp_path, settings)
    async with (
        serving(tmp_path, settings) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        response = await fulfillment_pb2_grpc.FulfillmentServiceStub(channel).FulfillOrder(
            ful.FulfillOrderRequest(
                source="shop",
                order_id="o-1",
                customer=ful.Customer(customer_id="cust-1", name="Initech"),
                lines=[ful.OrderLine(sku_id="CAD-STD-1Y", quantity=1)],
            ),
            metadata=(("authorization", f"Bearer {secret}"),),
            timeout=30,
        )
    entitlement = response.entitlements[0].entitlement_id
    newest, orders, skus = (
        shlex.split(c)[1:] for c in commands_of(block("README.md", "The audit trail").text)
    )

    listed = table(run_cli(newest, tmp_path, settings).stdout)
    assert len(listed) == 20
    assert listed[0][1:] == [f"token:{token_id}", "order.fulfil", "orders/shop/o-1", entitlement]
    assert {(row[1], row[2]) for row in listed[1:]} <= {(cli, "sku.put"), (cli, "product.put")}
    assert [row[1:] for row in table(run_cli(orders, tmp_path, settings).stdout)] == [
        [f"token:{token_id}", "order.fulfil", "orders/shop/o-1", entitlement]
    ]
    put = table(run_cli(skus, tmp_path, settings).stdout)
    assert len(put) == len(read_catalog_file(SHIPPED_CATALOG).skus)
    assert {(row[1], row[2], row[4]) for row in put} == {(cli, "sku.put", "-")}
    everything = table(run_cli(["audit", "list", "--limit", "1000"], tmp_path, settings).stdout)
    assert everything[-1][1:] == [cli, "token.create", f"tokens/{token_id}", "-"]

    refused = run_to_the_end(["audit", "list", "--actor", "a" * 129], tmp_path, settings)
    assert refused.returncode == 1
    assert "actor" in refused.stderr
