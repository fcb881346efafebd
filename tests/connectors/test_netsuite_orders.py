"""The NetSuite connector end to end: the shipped SuiteScripts (examples/netsuite/) run
under real Node in a stand-in NetSuite account, posting for real over loopback HTTP to
`NetSuiteOrderServer`, which fulfils through a real server: a subscription's whole life
from its first Sales Order to an activated seat and its cancellation, replays, bad
signatures, an unmapped item shown on the order and retried by the scheduled script,
an unreachable Keyturn, and `keyturn connect netsuite` as a child process."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import pytest
from connector_harness import child, database_state, run_keyturn_async
from netsuite_harness import (
    NETSUITE_SECRET,
    PRO_ITEM,
    PRODUCT_MAP,
    STANDARD_ITEM,
    Line,
    NetSuiteAccount,
    post_signed,
    sales_order,
    signed_headers,
)

from keyturn.client import FulfillmentClient, LicensingClient, RetryPolicy
from keyturn.client.connectors.lifecycle import (
    ADD_SEATS,
    CANCEL,
    REMOVE_SEATS,
    RENEW,
    SWITCH,
    lifecycle_sku,
)
from keyturn.client.connectors.netsuite_orders import order_for_sales_order
from keyturn.client.connectors.netsuite_webhook import NetSuiteOrderServer
from keyturn.client.connectors.product_map import load_product_map, parse_product_map
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.context import AppContext

from support.rpc import PRODUCT_ID
from support.smtp import free_port

pytest_plugins = ["connector_fixtures"]

run = asyncio.to_thread
E = ful.EntitlementEventType
STANDARD, PRO = "CAD-STD-1Y", "CAD-PRO-1Y"


def endpoint(fulfil_client: FulfillmentClient, map_text: str | None = None) -> NetSuiteOrderServer:
    products = load_product_map(PRODUCT_MAP) if map_text is None else parse_product_map(map_text)
    server = NetSuiteOrderServer(
        ("127.0.0.1", 0), NETSUITE_SECRET, products, fulfil_client.fulfill_order
    )
    server.start()
    return server


def url_of(server: NetSuiteOrderServer) -> str:
    host, port = server.address
    return f"http://{host}:{port}/netsuite/orders"


@pytest.fixture
async def connector(fulfil_client: FulfillmentClient) -> AsyncIterator[str]:
    """NetSuiteOrderServer on loopback with examples/product-map.yaml."""
    server = endpoint(fulfil_client)
    yield url_of(server)
    await run(server.stop)


@pytest.fixture
def account(tmp_path: Path, connector: str) -> NetSuiteAccount:
    return NetSuiteAccount(tmp_path / "netsuite-account.json", connector)


async def by_reference(read: FulfillmentClient, subscription: str) -> list[ful.Entitlement]:
    ref = f"netsuite:{subscription}"
    return await run(lambda: list(read.list_entitlements(external_reference=ref)))


async def approve(
    account: NetSuiteAccount, record_id: str, order: dict[str, object]
) -> dict[str, object]:
    """Enter a Sales Order and approve it (the user event of the approval); its fields after."""
    account.put("salesorder", record_id, order)
    await account.save(record_id, "approve")
    return account.fields(record_id)


def fulfilled(fields: dict[str, object], order_id: str, replayed: bool = False) -> str:
    """The message written on an order that Keyturn fulfilled (or replayed) as `order_id`."""
    assert fields["custbody_keyturn_status"] == "fulfilled", fields
    message = str(fields["custbody_keyturn_message"])
    done = "already fulfilled" if replayed else "fulfilled"
    assert message.startswith(f"{done}: order {order_id}; entitlements "), message
    return message


async def test_a_subscription_lifecycle_from_sales_orders_to_an_activated_seat(
    account: NetSuiteAccount,
    server: KeyturnServer,
    fulfil_client: FulfillmentClient,
    read_client: FulfillmentClient,
    stripe_catalog: object,
) -> None:
    """New, renewal, upsell, downsell, upgrade, cancellation: one Sales Order each, as the
    Contract Renewals SuiteApp types them (custbody_order_type) or by custbody_keyturn_action."""
    # Contract-New: 5 seats of Standard, named after the order's internal id.
    new = sales_order(
        [Line(STANDARD_ITEM, 5)], tranid="SO1001", keyturn_revision="", order_type="1"
    )
    fields = await approve(account, "5001", new)
    message = fulfilled(fields, "5001:0")
    [entitlement] = await by_reference(read_client, "5001")
    assert message.endswith(entitlement.entitlement_id)
    assert (entitlement.product_id, entitlement.edition_id, entitlement.seats) == (
        PRODUCT_ID,
        "standard",
        5,
    )
    assert entitlement.customer == ful.Customer(
        customer_id="88", name="Initech", email="billing@initech.example"
    )
    [request] = account.requests
    body = json.loads(request["body"])
    assert body == {
        "recordType": "salesorder",
        "id": "5001",
        "tranId": "SO1001",
        "status": "B",
        "revision": "",
        "action": "",
        "orderType": "1",
        "subscription": "",
        "customer": {"id": "88", "name": "Initech", "email": "billing@initech.example"},
        "lines": [
            {
                "line": "1",
                "item": STANDARD_ITEM,
                "itemType": "NonInvtPart",
                "quantity": 5,
                "action": "",
                "subscription": "",
            }
        ],
    }
    assert request["headers"]["X-Keyturn-Signature"].startswith("v1=")
    assert request["code"] == 200

    # The seat: the license key of the created entitlement (the order replayed to read
    # it, as Keyturn emails it) activates on the licensing API.
    order = order_for_sales_order(body, load_product_map(PRODUCT_MAP))
    replay = await run(fulfil_client.fulfill_order, order)
    assert replay.replayed
    key = replay.entitlements[0].license_key
    with LicensingClient(server.address, PRODUCT_ID) as licensing:
        lease = await run(lambda: licensing.activate(key, heartbeat=False))
    assert lease.entitlement_id == entitlement.entitlement_id
    assert (await run(read_client.get_entitlement, entitlement.entitlement_id)).seats_in_use == 1

    # Contract-Renewal of the same subscription: one more year.
    first_end = entitlement.end_time.ToDatetime()
    renewal = sales_order(
        [Line(STANDARD_ITEM, 5)], tranid="SO1002", order_type="2", keyturn_subscription="5001"
    )
    fulfilled(await approve(account, "5002", renewal), "5002:0")
    entitlement = await run(read_client.get_entitlement, entitlement.entitlement_id)
    assert entitlement.end_time.ToDatetime() - first_end in (
        timedelta(days=365),
        timedelta(days=366),
    )

    # Contract-Upsell of 3, then Contract-Downsell of 2, named per line.
    upsell = sales_order(
        [Line(STANDARD_ITEM, 3, subscription="5001")], tranid="SO1003", order_type="3"
    )
    fulfilled(await approve(account, "5003", upsell), "5003:0")
    assert (await run(read_client.get_entitlement, entitlement.entitlement_id)).seats == 8
    downsell = sales_order(
        [Line(STANDARD_ITEM, 2, subscription="5001")], tranid="SO1004", order_type="13"
    )
    fulfilled(await approve(account, "5004", downsell), "5004:0")
    assert (await run(read_client.get_entitlement, entitlement.entitlement_id)).seats == 6

    # Upgrade to Pro: the line names the new edition's item.
    upgrade = sales_order(
        [Line(PRO_ITEM, 6)], tranid="SO1005", keyturn_action="switch", keyturn_subscription="5001"
    )
    fulfilled(await approve(account, "5005", upgrade), "5005:0")
    entitlement = await run(read_client.get_entitlement, entitlement.entitlement_id)
    assert (entitlement.edition_id, entitlement.seats) == ("pro", 6)

    # Cancellation.
    cancel = sales_order(
        [Line(PRO_ITEM, 1)], tranid="SO1006", keyturn_action="cancel", keyturn_subscription="5001"
    )
    fulfilled(await approve(account, "5006", cancel), "5006:0")
    entitlement = await run(read_client.get_entitlement, entitlement.entitlement_id)
    assert entitlement.status == ful.ENTITLEMENT_STATUS_CANCELLED

    history = await run(
        lambda: list(read_client.list_entitlement_events(entitlement.entitlement_id))
    )
    events = [(e.type, e.order_id) for e in history if e.order_source == "netsuite"]
    assert events == [
        (E.ENTITLEMENT_EVENT_TYPE_CREATED, "5001:0"),
        (E.ENTITLEMENT_EVENT_TYPE_RENEWED, "5002:0"),
        (E.ENTITLEMENT_EVENT_TYPE_SEATS_CHANGED, "5003:0"),
        (E.ENTITLEMENT_EVENT_TYPE_SEATS_CHANGED, "5004:0"),
        (E.ENTITLEMENT_EVENT_TYPE_EDITION_CHANGED, "5005:0"),
        (E.ENTITLEMENT_EVENT_TYPE_CANCELLED, "5006:0"),
    ]
    ordered = [
        (await run(read_client.get_order, "netsuite", order_id)).lines for _, order_id in events
    ]
    assert [[(line.sku_id, line.quantity) for line in lines] for lines in ordered] == [
        [(STANDARD, 5)],
        [(lifecycle_sku(STANDARD, RENEW), 1)],
        [(lifecycle_sku(STANDARD, ADD_SEATS), 3)],
        [(lifecycle_sku(STANDARD, REMOVE_SEATS), 2)],
        [(lifecycle_sku(PRO, SWITCH), 1)],
        [(lifecycle_sku(PRO, CANCEL), 1)],
    ]
    assert all(entry["level"] == "AUDIT" for entry in account.logs), account.logs


async def test_a_reposted_order_replays_and_a_changed_one_needs_a_new_revision(
    account: NetSuiteAccount,
    connector: str,
    read_client: FulfillmentClient,
    app: AppContext,
    stripe_catalog: object,
) -> None:
    fulfilled(
        await approve(account, "6001", sales_order([Line(STANDARD_ITEM, 4)], tranid="SO2001")),
        "6001:0",
    )
    upsell = sales_order(
        [Line(STANDARD_ITEM, 2)], tranid="SO2002", order_type="3", keyturn_subscription="6001"
    )
    fulfilled(await approve(account, "6002", upsell), "6002:0")
    [entitlement] = await by_reference(read_client, "6001")
    assert entitlement.seats == 6
    state = await database_state(app.store)

    # Saved again (an edit of the memo), billed later, or posted again by hand: replays.
    await account.save("6002", "edit")
    fulfilled(account.fields("6002"), "6002:0", replayed=True)
    again = await post_signed(connector, account.requests[-1]["body"].encode())
    assert (again.status, again.body["replayed"], again.body["order_id"]) == (200, True, "6002:0")
    assert await database_state(app.store) == state

    # The lines changed under the same revision: refused, shown, nothing applied twice.
    state_lines = account.read()
    state_lines["records"]["salesorder"]["6002"]["sublists"]["item"][0]["quantity"] = 3
    account.write(state_lines)
    await account.save("6002", "edit")
    fields = account.fields("6002")
    assert fields["custbody_keyturn_status"] == "failed"
    assert "HTTP 422" in fields["custbody_keyturn_message"]
    assert "ORDER_CONFLICT" in fields["custbody_keyturn_message"]
    assert await database_state(app.store) == state

    # Raising the revision sends it as a new order, applied as it stands.
    account.set_fields("6002", custbody_keyturn_revision="1")
    await account.save("6002", "edit")
    fulfilled(account.fields("6002"), "6002:1")
    assert (await run(read_client.get_entitlement, entitlement.entitlement_id)).seats == 9


async def test_only_approved_orders_post_and_billing_mode_posts_on_the_invoice(
    account: NetSuiteAccount, read_client: FulfillmentClient, stripe_catalog: object
) -> None:
    pending = sales_order([Line(STANDARD_ITEM, 1)], tranid="SO3001", status="A")
    account.put("salesorder", "7001", pending)
    await account.save("7001", "create")  # Pending Approval: nothing yet
    account.set_fields("7001", orderstatus="B")
    await account.save("7001", "xedit")  # an inline edit (and our own write-back): nothing
    assert account.requests == []
    await account.save("7001", "approve")
    fulfilled(account.fields("7001"), "7001:0")

    account.set_parameter("custscript_keyturn_post_on", "billing")
    account.put("salesorder", "7002", sales_order([Line(STANDARD_ITEM, 2)], tranid="SO3002"))
    await account.save("7002", "approve")
    assert len(account.requests) == 1  # approved, not billed: nothing
    account.put("invoice", "8002", {"fields": {"createdfrom": "7002", "tranid": "INV3002"}})
    await account.save("8002", "create", record_type="invoice")
    fulfilled(account.fields("7002"), "7002:0")
    [entitlement] = await by_reference(read_client, "7002")
    assert entitlement.seats == 2


@pytest.mark.parametrize(
    "tamper", ["wrong-secret", "body-changed", "no-signature", "stale", "other-scheme"]
)
async def test_a_bad_signature_is_401_and_writes_nothing(
    tamper: str,
    connector: str,
    read_client: FulfillmentClient,
    app: AppContext,
    stripe_catalog: object,
) -> None:
    body = json.dumps({"recordType": "salesorder", "id": "9001", "revision": "", "customer": {"id": "88"},
                       "lines": [{"item": STANDARD_ITEM, "quantity": 2}]}).encode()  # fmt: skip
    good = signed_headers(body)
    headers = {
        "wrong-secret": signed_headers(body, secret="someone-elses-secret"),
        "body-changed": signed_headers(body.replace(b'"quantity": 2', b'"quantity": 20')),
        "no-signature": {},
        "stale": signed_headers(body, at=int(time.time()) - 301),
        "other-scheme": {
            **good,
            "X-Keyturn-Signature": good["X-Keyturn-Signature"].replace("v1=", "v0="),
        },
    }[tamper]
    before = await database_state(app.store)
    answer = await post_signed(connector, body, headers)
    assert answer.status == 401, answer
    assert answer.body["error"].startswith("signature check failed")
    assert await database_state(app.store) == before
    assert await by_reference(read_client, "9001") == []
    # The same body, signed right, is fulfilled.
    ok = await post_signed(connector, body)
    assert (ok.status, ok.body["order_id"]) == (200, "9001:0"), ok


async def test_a_script_with_the_wrong_api_secret_is_refused_and_shows_it(
    tmp_path: Path, connector: str, app: AppContext, stripe_catalog: object
) -> None:
    account = NetSuiteAccount(
        tmp_path / "other.json", connector, secret="not-the-connectors-secret"
    )
    before = await database_state(app.store)
    account.put("salesorder", "9101", sales_order([Line(STANDARD_ITEM, 1)], tranid="SO4101"))
    await account.save("9101", "approve")
    fields = account.fields("9101")
    assert fields["custbody_keyturn_status"] == "failed"
    assert fields["custbody_keyturn_message"].startswith("HTTP 401")
    assert [entry["level"] for entry in account.logs] == ["ERROR"]
    assert await database_state(app.store) == before


async def test_an_unmapped_item_fails_on_the_order_until_the_map_has_it(
    account: NetSuiteAccount,
    fulfil_client: FulfillmentClient,
    read_client: FulfillmentClient,
    app: AppContext,
    stripe_catalog: object,
) -> None:
    lines = [
        Line(STANDARD_ITEM, 1, subscription="9201-std"),
        Line("2099", 3, subscription="9201-pro"),
    ]
    order = sales_order(lines, tranid="SO5001")
    before = await database_state(app.store)
    fields = await approve(account, "9201", order)
    assert fields["custbody_keyturn_status"] == "failed"
    message = fields["custbody_keyturn_message"]
    assert message.startswith(
        "HTTP 422 (refused, retried once fixed): ITEM_NOT_MAPPED: items 2099 "
    )
    [logged] = account.logs
    assert (logged["level"], logged["title"], logged["details"]) == (
        "ERROR",
        "Keyturn: sales order 9201",
        message,
    )

    await account.retry()  # the scheduled script: still refused, still shown
    assert account.fields("9201")["custbody_keyturn_status"] == "failed"
    assert [r["code"] for r in account.requests] == [422, 422]
    assert await database_state(app.store) == before

    # The vendor maps the item and restarts the connector; the next retry fulfils it.
    fixed = PRODUCT_MAP.read_text().replace(
        '  "1042": CAD-PRO-1Y\n', '  "1042": CAD-PRO-1Y\n  "2099": CAD-PRO-1Y\n'
    )
    assert "2099" in fixed
    restarted = endpoint(fulfil_client, fixed)
    try:
        account.set_parameter("custscript_keyturn_url", url_of(restarted))
        await account.retry()
    finally:
        await run(restarted.stop)
    fulfilled(account.fields("9201"), "9201:0")
    [standard] = await by_reference(read_client, "9201-std")
    [pro] = await by_reference(read_client, "9201-pro")
    assert ((standard.edition_id, standard.seats), (pro.edition_id, pro.seats)) == (
        ("standard", 1),
        ("pro", 3),
    )
    order_lines = (await run(read_client.get_order, "netsuite", "9201:0")).lines
    assert [(line.sku_id, line.quantity) for line in order_lines] == [(STANDARD, 1), (PRO, 3)]
    await account.retry()  # nothing failed any more: no post
    assert len(account.requests) == 3


async def test_keyturn_unavailable_is_503_and_the_retry_script_posts_it_later(
    tmp_path: Path, connector: str, read_client: FulfillmentClient, stripe_catalog: object
) -> None:
    retry = RetryPolicy(attempts=2, initial=0.01, maximum=0.02)
    with FulfillmentClient(f"127.0.0.1:{free_port()}", "kt_unused", retry=retry) as unreachable:
        down = endpoint(unreachable)
        try:
            account = NetSuiteAccount(tmp_path / "account.json", url_of(down))
            account.put(
                "salesorder", "9301", sales_order([Line(STANDARD_ITEM, 2)], tranid="SO6001")
            )
            await account.save("9301", "approve")
        finally:
            await run(down.stop)
    fields = account.fields("9301")
    assert fields["custbody_keyturn_status"] == "failed"
    assert fields["custbody_keyturn_message"].startswith("HTTP 503 (Keyturn unavailable, retried)")

    await account.retry()  # the connector itself is gone now: NetSuite cannot connect
    fields = account.fields("9301")
    assert fields["custbody_keyturn_message"].startswith(
        "Keyturn unreachable, retried: SSS_CONNECTION_CLOSED"
    )

    account.set_parameter("custscript_keyturn_url", connector)
    await account.retry()
    fulfilled(account.fields("9301"), "9301:0")
    [entitlement] = await by_reference(read_client, "9301")
    assert entitlement.seats == 2


async def test_the_retry_script_stops_before_the_usage_limit_and_the_next_run_goes_on(
    tmp_path: Path, connector: str, read_client: FulfillmentClient, stripe_catalog: object
) -> None:
    account = NetSuiteAccount(tmp_path / "account.json", f"http://127.0.0.1:{free_port()}/x")
    for record_id in ("9501", "9502"):
        account.put(
            "salesorder", record_id, sales_order([Line(STANDARD_ITEM, 1)], tranid=record_id)
        )
        await account.save(record_id, "approve")
        assert account.fields(record_id)["custbody_keyturn_status"] == "failed"
    account.set_parameter("custscript_keyturn_url", connector)

    # The search (10 units) and one order (load, post, write-back: 30) fit; a second does not.
    state = account.read()
    state["usageLimit"] = 79
    account.write(state)
    await account.retry()
    statuses = [account.fields(i)["custbody_keyturn_status"] for i in ("9501", "9502")]
    assert statuses == ["fulfilled", "failed"]
    assert account.logs[-2:] == [
        {
            "level": "AUDIT",
            "title": "Keyturn retry",
            "details": "usage limit near: the next run goes on",
        },
        {"level": "AUDIT", "title": "Keyturn retry", "details": "1 of 1 failed orders fulfilled"},
    ]

    state = account.read()
    del state["usageLimit"]  # the next scheduled run: a whole budget
    account.write(state)
    await account.retry()
    fulfilled(account.fields("9502"), "9502:0")
    assert account.logs[-1]["details"] == "1 of 1 failed orders fulfilled"
    assert [len(await by_reference(read_client, i)) for i in ("9501", "9502")] == [1, 1]


NETSUITE_LINE = re.compile(r"^keyturn netsuite orders on (?P<url>http://\S+:(?P<port>\d+)/\S*)$")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_keyturn_connect_netsuite_as_a_child_process(
    server: KeyturnServer,
    connector_secrets: dict[str, str],
    read_client: FulfillmentClient,
    stripe_catalog: object,
    tmp_path: Path,
) -> None:
    settings = {
        "KEYTURN_NETSUITE_SECRET": NETSUITE_SECRET,
        "KEYTURN_PRODUCT_MAP": str(PRODUCT_MAP),
        "KEYTURN_FULFILL_TOKEN": connector_secrets["fulfill"],
        "KEYTURN_LISTEN": server.address,
    }
    args = ["connect", "netsuite", "--listen", "127.0.0.1:0"]
    with child(args, tmp_path, settings) as process:
        line = await run(process.await_line, NETSUITE_LINE)
        assert line["url"] == f"http://127.0.0.1:{line['port']}/netsuite/orders"
        account = NetSuiteAccount(tmp_path / "account.json", line["url"])
        fields = await approve(account, "9401", sales_order([Line(PRO_ITEM, 3)], tranid="SO7001"))
        fulfilled(fields, "9401:0")
        body = account.requests[-1]["body"].encode()
        forged = await post_signed(line["url"], body, signed_headers(body, secret="forged"))
        assert forged.status == 401, forged
        assert await run(process.terminate) == 0
    [entitlement] = await by_reference(read_client, "9401")
    assert (entitlement.edition_id, entitlement.seats) == ("pro", 3)


READY = {
    "KEYTURN_FULFILL_TOKEN": "kt_x",
    "KEYTURN_NETSUITE_SECRET": "s",
    "KEYTURN_PRODUCT_MAP": str(PRODUCT_MAP),
}
SECRET_LINE = (
    "keyturn: set KEYTURN_NETSUITE_SECRET (the value of the NetSuite API secret the Keyturn "
    "scripts sign with)"
)
MAP_LINE = (
    "keyturn: set KEYTURN_PRODUCT_MAP (the YAML file mapping each billing system's product "
    "ids to base SKUs, like examples/product-map.yaml)"
)
# name: (settings over READY, the one line), given a taken port and a file that is no map.
BAD_SETTINGS: dict[str, Callable[[int, Path], tuple[dict[str, str], str]]] = {
    "no secret": lambda port, bad: ({"KEYTURN_NETSUITE_SECRET": ""}, SECRET_LINE),
    "no product map": lambda port, bad: ({"KEYTURN_PRODUCT_MAP": ""}, MAP_LINE),
    "a product map that is no map": lambda port, bad: (
        {"KEYTURN_PRODUCT_MAP": str(bad)},
        f"keyturn: {bad}: unknown section ['netsuit']; choose from "
        "('salesforce', 'netsuite', 'chargify')",
    ),
    "a path that is no path": lambda port, bad: (
        {"KEYTURN_NETSUITE_PATH": "netsuite"},
        "keyturn: KEYTURN_NETSUITE_PATH: 'netsuite' is not a URL path, for example "
        "/netsuite/orders",
    ),
    "a tolerance of 0": lambda port, bad: (
        {"KEYTURN_NETSUITE_TOLERANCE_SECONDS": "0"},
        "keyturn: KEYTURN_NETSUITE_TOLERANCE_SECONDS: Input should be greater than or equal to 1",
    ),
    "a port in use": lambda port, bad: (
        {"KEYTURN_NETSUITE_LISTEN": f"127.0.0.1:{port}"},
        f"keyturn: cannot listen on 127.0.0.1:{port}: Address already in use; choose another "
        "HOST:PORT with --listen or KEYTURN_NETSUITE_LISTEN (port 0: any free port)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
async def test_keyturn_connect_netsuite_stops_on_a_bad_setting_with_one_line(
    tmp_path: Path, case: str
) -> None:
    bad = tmp_path / "map.yaml"
    bad.write_text("netsuit:\n  '1041': CAD-STD-1Y\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        changed, line = BAD_SETTINGS[case](taken.getsockname()[1], bad)
        result = await run_keyturn_async(["connect", "netsuite"], tmp_path, {**READY, **changed})
    assert (result.returncode, result.stderr.splitlines(), result.stdout) == (2, [line], "")
