"""The signed order endpoint (`keyturn connect orders`) over real HTTP on loopback,
fulfilling through a real server: orders signed per Standard Webhooks by the
`standardwebhooks` library as a sender signs them, through to an activated seat;
replays; every refused signature and body writing nothing; refusals and an
unreachable Keyturn answered so the sender retries; the README's curl example; and
the command as a child process."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from connector_harness import Answer, child, database_state, post, run_keyturn_async
from standardwebhooks import Webhook

from keyturn.client import FulfillmentClient, RetryPolicy
from keyturn.client.aio import AsyncLicensingClient
from keyturn.client.connectors.lifecycle import ADD_SEATS, lifecycle_sku
from keyturn.client.connectors.signed_orders import SignedOrderServer, parse_source_secrets
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.context import AppContext

from support.doc_blocks import block, substituted
from support.rpc import PRODUCT_ID
from support.smtp import free_port

pytest_plugins = ["connector_fixtures"]

run = asyncio.to_thread
SHOP = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the README's
SHOP_NEXT = "whsec_c2hvcC1uZXh0LXNlY3JldC0wMTIzNDU2Nzg5YWJj"  # while rotating
BACKOFFICE = "whsec_YmFja29mZmljZS1zZWNyZXQtMDEyMzQ1Njc4OQ=="
SECRETS = {"shop": (SHOP, SHOP_NEXT), "backoffice": (BACKOFFICE,)}
STANDARD = "CAD-STD-1Y"
ENDPOINT_LINE = re.compile(
    r"^keyturn signed order endpoint \((?P<sources>[^)]*)\) on (?P<url>\S+)$"
)
README_CURL = block("README.md", "Signed orders from any system", 0)


def order(order_id: str, *lines: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    customer = {"customerId": "c-42", "name": "Initech", "email": "it@initech.example"}
    return {"orderId": order_id, "customer": customer, "lines": list(lines), **fields}


def signed_headers(
    body: bytes, secret: str, webhook_id: str, timestamp: datetime | None = None
) -> dict[str, str]:
    """The three headers a Standard Webhooks sender adds, signed by the library."""
    at = timestamp or datetime.now(UTC)
    signature = Webhook(secret).sign(webhook_id, at, body.decode())
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }


async def send(
    url: str,
    payload: Mapping[str, Any] | bytes,
    *,
    secret: str = SHOP,
    webhook_id: str = "msg_1",
    headers: Mapping[str, str] | None = None,
) -> Answer:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signed = signed_headers(body, secret, webhook_id) if headers is None else dict(headers)
    return await run(post, url, body, signed)


@pytest.fixture
async def endpoint(fulfil_client: FulfillmentClient) -> AsyncIterator[str]:
    """The endpoint on a free loopback port; its base URL (the source follows)."""
    running = SignedOrderServer(("127.0.0.1", 0), SECRETS, fulfil_client.fulfill_order)
    running.start()
    host, port = running.address
    yield f"http://{host}:{port}/orders/"
    await run(running.stop)


async def test_a_signed_order_creates_an_entitlement_a_device_activates_and_a_later_one_changes(
    endpoint: str,
    server: KeyturnServer,
    read_client: FulfillmentClient,
    stripe_catalog: object,
) -> None:
    line = {"skuId": STANDARD, "quantity": 3, "externalReference": "shop:sub-1"}
    created = await send(endpoint + "shop", order("WEB-1", line), webhook_id="msg_WEB-1")
    assert created.status == 200, created
    assert (created.body["webhookId"], created.body.get("replayed", False)) == ("msg_WEB-1", False)
    [entitlement] = created.body["entitlements"]
    assert (entitlement["seats"], entitlement["externalReferences"]) == (3, ["shop:sub-1"])
    stored = await run(read_client.get_order, "shop", "WEB-1")
    assert [(o.sku_id, o.quantity) for o in stored.lines] == [(STANDARD, 3)]

    licensing = AsyncLicensingClient(server.address, PRODUCT_ID)
    try:
        lease = await licensing.activate(
            entitlement["licenseKey"], fingerprint="shop-laptop-1", heartbeat=False
        )
        assert lease.entitlement_id == entitlement["entitlementId"]
        await lease.release()
    finally:
        await licensing.close()

    more = {
        "skuId": lifecycle_sku(STANDARD, ADD_SEATS),
        "quantity": 2,
        "externalReference": "shop:sub-1",
    }
    # Signed with the source's second secret, as during a rotation.
    changed = await send(endpoint + "shop", order("WEB-2", more), secret=SHOP_NEXT)
    assert changed.status == 200, changed
    now = await run(read_client.get_entitlement, entitlement["entitlementId"])
    assert now.seats == 5


async def test_a_repeated_delivery_replays_and_changes_nothing(
    endpoint: str, app: AppContext, stripe_catalog: object
) -> None:
    body = json.dumps(order("WEB-7", {"skuId": STANDARD, "quantity": 1})).encode()
    first = await send(endpoint + "backoffice", body, secret=BACKOFFICE, webhook_id="msg_7")
    assert first.status == 200, first
    before = await database_state(app.store)
    again = await send(endpoint + "backoffice", body, secret=BACKOFFICE, webhook_id="msg_7")
    assert again.status == 200, again
    assert again.body["replayed"] is True
    assert again.body["entitlements"] == first.body["entitlements"]  # the key again, too
    assert await database_state(app.store) == before


def stale() -> datetime:
    return datetime.fromtimestamp(time.time() - 600, UTC)


def forged_headers(body: bytes) -> dict[str, dict[str, str]]:
    good = signed_headers(body, SHOP, "msg_f")
    return {
        "another secret": signed_headers(body, BACKOFFICE, "msg_f"),
        "stale": signed_headers(body, SHOP, "msg_f", stale()),
        "no signature": {k: v for k, v in good.items() if k != "webhook-signature"},
        "no id": {k: v for k, v in good.items() if k != "webhook-id"},
        "another id": {**good, "webhook-id": "msg_other"},
        "malformed": {**good, "webhook-signature": "garbage"},
        "not base64": {**good, "webhook-signature": "v1,%%%"},
        "another version": {
            **good,
            "webhook-signature": good["webhook-signature"].replace("v1", "v2"),
        },
        "none": {},
    }


async def test_a_bad_signature_or_an_unknown_source_is_401_and_writes_nothing(
    endpoint: str, app: AppContext, stripe_catalog: object
) -> None:
    body = json.dumps(order("WEB-F", {"skuId": STANDARD, "quantity": 1})).encode()
    before = await database_state(app.store)
    for why, headers in forged_headers(body).items():
        answer = await send(endpoint + "shop", body, headers=headers)
        assert (answer.status, answer.body["reason"]) == (401, "SIGNATURE_INVALID"), why
    tampered = body.replace(b'"quantity": 1', b'"quantity": 9')
    answer = await send(endpoint + "shop", tampered, headers=signed_headers(body, SHOP, "m"))
    assert answer.status == 401
    unknown = await send(endpoint + "partner", body)  # signed, but no such source
    assert unknown.status == 401
    assert await database_state(app.store) == before


async def test_signed_bodies_that_are_not_orders_of_this_source_write_nothing(
    endpoint: str, app: AppContext, stripe_catalog: object
) -> None:
    before = await database_state(app.store)
    cases = {
        b"not json": 400,
        b'{"orderId": "WEB-M", "colour": "red"}': 400,  # no such field
        b'{"orderId": 5, "lines": "x"}': 400,
        json.dumps(order("WEB-S", {"skuId": STANDARD}, source="backoffice")).encode(): 403,
    }
    for body, status in cases.items():
        answer = await send(endpoint + "shop", body)
        assert answer.status == status, (body, answer)
        assert answer.body["reason"] == ("SOURCE_MISMATCH" if status == 403 else "MALFORMED")
    assert await database_state(app.store) == before


async def test_an_order_keyturn_refuses_is_422_then_fulfilled_once_fixed(
    endpoint: str, app: AppContext, read_client: FulfillmentClient, stripe_catalog: object
) -> None:
    unknown = order("WEB-U", {"skuId": "CAD-UNKNOWN", "quantity": 1})
    before = await database_state(app.store)
    refused = await send(endpoint + "shop", unknown, webhook_id="msg_u")
    assert (refused.status, refused.body["order_id"]) == (422, "WEB-U"), refused
    assert refused.body["reason"] == "SKU_NOT_FOUND"
    no_order = await send(endpoint + "shop", order("", {"skuId": STANDARD}))
    assert (no_order.status, no_order.body["reason"]) == (422, "INVALID_REQUEST"), no_order
    assert await database_state(app.store) == before
    # The sender fixes the order and sends it again (the same id): fulfilled.
    fixed = order("WEB-U", {"skuId": STANDARD, "quantity": 1})
    assert (await send(endpoint + "shop", fixed, webhook_id="msg_u")).status == 200
    assert (await run(read_client.get_order, "shop", "WEB-U")).lines[0].sku_id == STANDARD


async def test_an_unreachable_keyturn_is_503() -> None:
    retry = RetryPolicy(attempts=2, initial=0.01, maximum=0.02)
    with FulfillmentClient(f"127.0.0.1:{free_port()}", "kt_unused", retry=retry) as client:
        running = SignedOrderServer(("127.0.0.1", 0), SECRETS, client.fulfill_order)
        running.start()
        try:
            host, port = running.address
            url = f"http://{host}:{port}/orders/shop"
            answer = await send(url, order("WEB-D", {"skuId": STANDARD}))
        finally:
            await run(running.stop)
    assert (answer.status, answer.body["order_id"]) == (503, "WEB-D"), answer


def test_source_secrets_are_read_as_documented_and_refused_naming_the_entry() -> None:
    text = f"shop={SHOP}, shop={SHOP_NEXT} backoffice={BACKOFFICE}"
    assert parse_source_secrets(text) == SECRETS
    for bad, entry in (("shop", 1), (f"shop={SHOP},=x", 2), ("shop=whsec_", 1)):
        with pytest.raises(ValueError, match=f"entry {entry}") as caught:
            parse_source_secrets(bad)
        assert SHOP not in str(caught.value)


# The child only talks gRPC: one backend suffices (the in-process tests cover both).
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_readme_curl_example_against_keyturn_connect_orders(
    server: KeyturnServer,
    connector_secrets: dict[str, str],
    read_client: FulfillmentClient,
    stripe_catalog: object,
    tmp_path: Path,
) -> None:
    settings = {
        "KEYTURN_ORDER_WEBHOOK_SECRETS": f"shop={SHOP},backoffice={BACKOFFICE}",
        "KEYTURN_FULFILL_TOKEN": connector_secrets["fulfill"],
        "KEYTURN_LISTEN": server.address,
    }
    with child(["connect", "orders", "--listen", "127.0.0.1:0"], tmp_path, settings) as endpoint:
        line = await run(endpoint.await_line, ENDPOINT_LINE)
        assert line["sources"] == "backoffice, shop"
        url = line["url"].removesuffix("SOURCE")
        script = substituted(README_CURL.text, {"http://127.0.0.1:8084/orders/": url})
        done = await run(
            subprocess.run,
            ["bash", "-euo", "pipefail", "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer["entitlements"][0]["seats"] == 3
        assert await run(endpoint.terminate) == 0
    [found] = await run(
        lambda: list(read_client.list_entitlements(external_reference="shop:sub-1001"))
    )
    assert (found.entitlement_id, found.seats) == (answer["entitlements"][0]["entitlementId"], 3)
    stored = await run(read_client.get_order, "shop", "WEB-1001")
    assert stored.customer.email == "it@initech.example"


ORDER_SECRETS = (
    "KEYTURN_ORDER_WEBHOOK_SECRETS (each order source and its signing secret, SOURCE=whsec_...)"
)


@pytest.mark.parametrize(
    ("secrets", "complaint"),
    [
        (None, f"keyturn: set {ORDER_SECRETS} and KEYTURN_FULFILL_TOKEN"),
        ("shop", "entry 1 is not SOURCE=whsec_..."),
        (f"Shop={SHOP}", "'Shop' is not an order source"),
    ],
)
async def test_keyturn_connect_orders_refuses_its_settings_in_one_line(
    tmp_path: Path, secrets: str | None, complaint: str
) -> None:
    settings = {} if secrets is None else {"KEYTURN_ORDER_WEBHOOK_SECRETS": secrets}
    result = await run_keyturn_async(["connect", "orders"], tmp_path, settings)
    assert result.returncode == 2, result
    [line] = result.stderr.splitlines()
    assert complaint in line, line
    assert SHOP not in line
