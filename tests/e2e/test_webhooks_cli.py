"""`keyturn webhooks`: the README's block as it stands, run by bash on every database
beside a real server and a receiver on loopback, then what it did: the seat event
sent again from sequence 1 and signed with the secret the block printed, the attempts
in the log, every change in the audit trail as the command's user."""

from __future__ import annotations

import asyncio
import getpass
import subprocess
import sys
from pathlib import Path

import grpc

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.fulfillment.v1 import fulfillment_pb2_grpc
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc

from conftest import server_settings
from support.catalog import SHIPPED_CATALOG
from support.doc_blocks import block, substituted
from support.subprocess_server import child_env, run_cli, run_to_the_end, serving
from support.webhook_receiver import Receiver, verified


def run_block(script: str, cwd: Path, settings: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = child_env(settings)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_the_readme_block_subscribes_replays_pauses_resumes_and_lists(
    tmp_path: Path, database_url: str
) -> None:
    settings = server_settings(database_url, KEYTURN_WEBHOOKS_POLL_SECONDS="0.1")
    run_cli(["catalog", "apply", str(SHIPPED_CATALOG)], tmp_path, settings)
    fulfill = run_cli(["tokens", "create", "--scope", "fulfill"], tmp_path, settings)
    receiver = Receiver()
    receiver.start()
    try:
        async with (
            serving(tmp_path, settings) as server,
            grpc.aio.insecure_channel(server.address) as channel,
        ):
            ordered = await fulfillment_pb2_grpc.FulfillmentServiceStub(channel).FulfillOrder(
                ful.FulfillOrderRequest(
                    source="shop",
                    order_id="o-1",
                    customer=ful.Customer(customer_id="cust-1", name="Initech"),
                    lines=[ful.OrderLine(sku_id="CAD-STD-1Y", quantity=1)],
                ),
                metadata=(("authorization", f"Bearer {fulfill.stdout.strip()}"),),
                timeout=30,
            )
            await licensing_pb2_grpc.LicensingServiceStub(channel).ActivateSeat(
                lic.ActivateSeatRequest(
                    license_key=ordered.entitlements[0].license_key,
                    product_id="acme-cad",
                    fingerprint="laptop-1",
                ),
                timeout=30,
            )
            script = substituted(
                block("README.md", "Outbound webhooks").text,
                {
                    "https://crm.example/keyturn/events": receiver.url,
                    "grep crm.example": "grep 127.0.0.1",
                },
            )
            ran = await asyncio.to_thread(
                run_block, script + 'printf "%s" "$SECRET" > secret.txt\n', tmp_path, settings
            )
            assert ran.returncode == 0, ran.stderr
            secret = (tmp_path / "secret.txt").read_text()
            assert secret.startswith("whsec_")
            # Created at the log's end, replayed from 1: the seat event (not the order's).
            await receiver.wait_for(lambda got: len(got) >= 1)
            (post,) = receiver.delivered()
            payload = verified(secret, post)
            assert payload["type"] == "entitlement.seat_activated"
            assert payload["data"]["type"] == "ENTITLEMENT_EVENT_TYPE_SEAT_ACTIVATED"
            listed = run_cli(["webhooks", "list"], tmp_path, settings).stdout.split()
            subscription_id = listed[0]
            assert post.webhook_id == f"{subscription_id}.{post.sequence}"
            assert "active" in listed
            log = run_cli(["webhooks", "deliveries", subscription_id], tmp_path, settings)
            assert f"{post.webhook_id}  200  delivered  ok" in log.stdout
    finally:
        receiver.stop()
    trail = run_cli(["audit", "list", "--resource", "webhooks/"], tmp_path, settings).stdout
    actions = [line.split()[1:3] for line in trail.splitlines()[1:]]
    cli = f"cli:{getpass.getuser()}"
    assert actions == [
        [cli, "webhook.update"],
        [cli, "webhook.update"],
        [cli, "webhook.redeliver"],
        [cli, "webhook.create"],
    ]
    unknown = "whk_01arz3ndektsv4rrffq69g5fav"
    gone = run_to_the_end(["webhooks", "delete", unknown], tmp_path, settings)
    assert gone.returncode == 1
    assert gone.stderr.splitlines()[-1] == f"keyturn: no webhook subscription {unknown!r}"
