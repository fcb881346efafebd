"""The same API over HTTP/JSON (Connect protocol) on a real server's HTTP port.

Every RPC of the three service descriptors is called with JSON and succeeds: the
table of requests below must name each method, so a new RPC fails here until it is
called over HTTP too. The bad-input suite (tests/api/bad_input) runs every refusal
case over both transports; here: the layout of the port, streaming and its end at
shutdown, the request limit and the refusals connect-python makes itself.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from google.protobuf import json_format

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.server.api.http_server import bind
from keyturn.server.api.openapi import openapi_document
from keyturn.server.api.server import SERVICES, KeyturnServer
from keyturn.server.api.transport_limits import TransportLimits
from keyturn.server.app.context import AppContext

from conftest import Tokens
from support.http_json import HttpCallError, bearer, post_json, stream_json
from support.rpc import PRODUCT_ID, create_sku, order, product

WAIT_S = 30.0
LIMITS = TransportLimits.defaults()


@pytest.fixture
async def http_server(app: AppContext) -> AsyncIterator[KeyturnServer]:
    running = KeyturnServer(app, "127.0.0.1:0", http_listen="127.0.0.1:0", worker_id="w-test")
    await running.start()
    yield running
    await running.stop(grace=1.0)


@pytest.fixture
async def http(http_server: KeyturnServer) -> AsyncIterator[httpx.AsyncClient]:
    base = f"http://{http_server.http_address}"
    async with httpx.AsyncClient(base_url=base, timeout=WAIT_S) as client:
        yield client


def secret(tokens: Tokens, scope: str) -> str:
    return tokens(scope)[0][1].removeprefix("Bearer ")


async def call(http: httpx.AsyncClient, service: str, method: str, body: Any, **kw: Any) -> Any:
    return await post_json(http, f"/{service}/{method}", body, **kw)


LICENSING, FULFILLMENT, CATALOG = (
    "keyturn.licensing.v1.LicensingService",
    "keyturn.fulfillment.v1.FulfillmentService",
    "keyturn.fulfillment.v1.CatalogService",
)


async def test_every_rpc_of_the_three_services_answers_over_http_json(
    http: httpx.AsyncClient, tokens: Tokens
) -> None:
    auth = {s: bearer(secret(tokens, s)) for s in ("catalog", "fulfill", "read", "webhooks")}
    put = json_format.MessageToDict(cat.PutSkuRequest(sku=create_sku("STD", seats=2)))
    await call(
        http,
        CATALOG,
        "PutProduct",
        cat.PutProductRequest(product=product()),
        headers=auth["catalog"],
    )
    await call(http, CATALOG, "PutSku", put, headers=auth["catalog"])
    spare = cat.PutSkuRequest(sku=create_sku("SPARE"))
    await call(http, CATALOG, "PutSku", spare, headers=auth["catalog"])
    fulfilled = await call(
        http, FULFILLMENT, "FulfillOrder", order("o-1", "STD"), headers=auth["fulfill"]
    )
    entitlement = fulfilled["entitlements"][0]
    key, entitlement_id = entitlement["licenseKey"], entitlement["entitlementId"]
    team = order("o-3", "STD")
    team.lines[0].named_user_emails.extend(["ann@initech.example", "ben@initech.example"])
    named = (await call(http, FULFILLMENT, "FulfillOrder", team, headers=auth["fulfill"]))[
        "entitlements"
    ][0]
    users = {u["email"]: u["userId"] for u in named["namedUsers"]}
    activation = {"licenseKey": key, "productId": PRODUCT_ID, "fingerprint": "device-0001"}
    state: dict[str, Any] = {}

    async def activate() -> Any:
        answer = await call(http, LICENSING, "ActivateSeat", activation)
        state["lease"] = answer["lease"]["token"]
        state["activation"] = answer["activationId"]
        return answer

    async def renew() -> Any:
        answer = await call(http, LICENSING, "RenewLease", {"leaseToken": state["lease"]})
        state["lease"] = answer["lease"]["token"]
        return answer

    async def watch() -> Any:
        path = f"/{FULFILLMENT}/WatchEntitlementEvents"
        async for event in stream_json(http, path, {"afterSequence": "0"}, auth["read"]):
            return event
        raise AssertionError("the stream ended without an event")

    async def subscribe() -> Any:
        answer = await call(
            http,
            FULFILLMENT,
            "CreateWebhookSubscription",
            {"subscription": {"url": "http://127.0.0.1:9/hooks"}, "afterSequence": "0"},
            headers=auth["webhooks"],
        )
        state["subscription"] = answer["subscription"]["subscriptionId"]
        return answer

    def on_subscription(method: str, **body: Any) -> Callable[[], Any]:
        return lambda: call(
            http,
            FULFILLMENT,
            method,
            {"subscriptionId": state["subscription"], **body},
            headers=auth["webhooks"],
        )

    async def redeem() -> Any:
        # An unknown code: the endpoint is there and judged the code (no invitation here).
        with pytest.raises(HttpCallError) as refused:
            await call(http, LICENSING, "RedeemInvitation", {"invitationCode": "KT-NOPE"})
        assert refused.value.failure.reason == "INVALID_INVITATION"
        return {}

    this_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    # method name -> the call; every method of every service must be here.
    calls: dict[str, Callable[[], Any]] = {
        "PutProduct": lambda: call(
            http,
            CATALOG,
            "PutProduct",
            cat.PutProductRequest(product=product("second")),
            headers=auth["catalog"],
        ),
        "ListProducts": lambda: call(http, CATALOG, "ListProducts", {}, headers=auth["catalog"]),
        "PutSku": lambda: call(http, CATALOG, "PutSku", put, headers=auth["catalog"]),
        "GetSku": lambda: call(http, CATALOG, "GetSku", {"skuId": "STD"}, headers=auth["catalog"]),
        "ListSkus": lambda: call(http, CATALOG, "ListSkus", {}, headers=auth["catalog"]),
        "DeleteSku": lambda: call(
            http, CATALOG, "DeleteSku", {"skuId": "SPARE"}, headers=auth["catalog"]
        ),
        "FulfillOrder": lambda: call(
            http, FULFILLMENT, "FulfillOrder", order("o-2", "STD"), headers=auth["fulfill"]
        ),
        "GetOrder": lambda: call(
            http,
            FULFILLMENT,
            "GetOrder",
            {"source": "test", "orderId": "o-1"},
            headers=auth["read"],
        ),
        "GetEntitlement": lambda: call(
            http,
            FULFILLMENT,
            "GetEntitlement",
            {"entitlementId": entitlement_id},
            headers=auth["read"],
        ),
        "ListEntitlements": lambda: call(
            http, FULFILLMENT, "ListEntitlements", {}, headers=auth["read"]
        ),
        "ListEntitlementEvents": lambda: call(
            http,
            FULFILLMENT,
            "ListEntitlementEvents",
            {"entitlementId": entitlement_id},
            headers=auth["read"],
        ),
        "ResendCredentials": lambda: call(
            http,
            FULFILLMENT,
            "ResendCredentials",
            {"entitlementId": entitlement_id},
            headers=auth["fulfill"],
        ),
        "WatchEntitlementEvents": watch,
        "ActivateSeat": activate,
        "RenewLease": renew,
        "ListActivations": lambda: call(
            http,
            FULFILLMENT,
            "ListActivations",
            {"customerId": "cust-1", "states": ["ACTIVATION_STATE_LIVE"], "nodeLocked": False},
            headers=auth["read"],
        ),
        "DeactivateSeat": lambda: call(
            http,
            FULFILLMENT,
            "DeactivateSeat",
            {
                "entitlementId": entitlement_id,
                "activationId": state["activation"],
                "reason": "laptop stolen",
            },
            headers=auth["fulfill"],
        ),
        "CheckLicense": lambda: call(
            http, LICENSING, "CheckLicense", {"licenseKey": key, "productId": PRODUCT_ID}
        ),
        "GetSigningKeys": lambda: call(http, LICENSING, "GetSigningKeys", {}),
        "ReleaseSeat": lambda: call(http, LICENSING, "ReleaseSeat", {"leaseToken": state["lease"]}),
        "RedeemInvitation": redeem,
        "GetUsageReport": lambda: call(
            http,
            FULFILLMENT,
            "GetUsageReport",
            {
                "entitlementId": entitlement_id,
                "startTime": (this_hour - timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
                "endTime": (this_hour + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
                "granularity": "USAGE_GRANULARITY_HOUR",
            },
            headers=auth["read"],
        ),
        "SuspendEntitlement": lambda: call(
            http,
            FULFILLMENT,
            "SuspendEntitlement",
            {"entitlementId": entitlement_id, "reason": "payment failed"},
            headers=auth["fulfill"],
        ),
        "ReinstateEntitlement": lambda: call(
            http,
            FULFILLMENT,
            "ReinstateEntitlement",
            {"entitlementId": entitlement_id},
            headers=auth["fulfill"],
        ),
        "ListAuditEvents": lambda: call(
            http,
            FULFILLMENT,
            "ListAuditEvents",
            {"action": "order.fulfil", "resource": "orders/test/", "pageSize": 1},
            headers=auth["read"],
        ),
        "ChangeNamedUserEmail": lambda: call(
            http,
            FULFILLMENT,
            "ChangeNamedUserEmail",
            {
                "entitlementId": named["entitlementId"],
                "userId": users["ann@initech.example"],
                "email": "anne@initech.example",
            },
            headers=auth["fulfill"],
        ),
        "RemoveNamedUser": lambda: call(
            http,
            FULFILLMENT,
            "RemoveNamedUser",
            {"entitlementId": named["entitlementId"], "userId": users["ben@initech.example"]},
            headers=auth["fulfill"],
        ),
        "LookupCustomer": lambda: call(
            http,
            FULFILLMENT,
            "LookupCustomer",
            {"email": "anne@initech.example"},
            headers=auth["read"],
        ),
        "CreateWebhookSubscription": subscribe,
        "GetWebhookSubscription": on_subscription("GetWebhookSubscription"),
        "ListWebhookSubscriptions": lambda: call(
            http, FULFILLMENT, "ListWebhookSubscriptions", {}, headers=auth["webhooks"]
        ),
        "UpdateWebhookSubscription": lambda: call(
            http,
            FULFILLMENT,
            "UpdateWebhookSubscription",
            {
                "subscription": {
                    "subscriptionId": state["subscription"],
                    "url": "http://127.0.0.1:9/moved",
                    "state": "WEBHOOK_STATE_PAUSED",
                }
            },
            headers=auth["webhooks"],
        ),
        "ListWebhookDeliveries": on_subscription("ListWebhookDeliveries"),
        "RedeliverWebhooks": on_subscription("RedeliverWebhooks", fromSequence="2"),
        "DeleteWebhookSubscription": on_subscription("DeleteWebhookSubscription"),
    }
    declared = [method.name for service in SERVICES.values() for method in service.methods]
    assert sorted(calls) == sorted(declared)
    answers = {}
    for name in calls:  # in the table's order: activate before renew before release
        answers[name] = await calls[name]()
    assert answers["GetSku"]["sku"]["skuId"] == "STD"
    assert answers["ActivateSeat"]["entitlement"]["seatsInUse"] == 1
    assert answers["RenewLease"]["lease"]["token"] != answers["ActivateSeat"]["lease"]["token"]
    assert answers["CheckLicense"]["entitlement"]["entitlementId"] == entitlement_id
    assert answers["GetSigningKeys"]["keys"][0]["alg"] == "EdDSA"
    assert answers["WatchEntitlementEvents"]["event"]["entitlementId"] == entitlement_id
    assert answers["ReleaseSeat"] == {}
    (listed,) = answers["ListActivations"]["activations"]
    assert (listed["activationId"], listed["state"]) == (
        answers["ActivateSeat"]["activationId"],
        "ACTIVATION_STATE_LIVE",
    )
    assert answers["DeactivateSeat"]["activation"]["state"] == "ACTIVATION_STATE_DEACTIVATED"
    # The activation of a moment ago, in the last hour or this one (the clock may have
    # turned an hour since), at the limit of the two seats.
    usage = answers["GetUsageReport"]["buckets"]
    assert max(b.get("peakSeatsInUse", 0) for b in usage) == 1
    assert len(usage) == 2
    assert usage[-1]["seatLimit"] == 2
    suspended = answers["SuspendEntitlement"]["entitlement"]["status"]
    assert suspended == "ENTITLEMENT_STATUS_SUSPENDED"
    reinstated = answers["ReinstateEntitlement"]["entitlement"]["status"]
    assert reinstated == "ENTITLEMENT_STATUS_ACTIVE"
    (audited,) = answers["ListAuditEvents"]["auditEvents"]  # the newest order: o-2
    assert (audited["action"], audited["resource"]) == ("order.fulfil", "orders/test/o-2")
    assert audited["details"] == {"lines": [0], "skus": ["STD"], "operations": ["create"]}
    assert answers["ListAuditEvents"]["nextPageToken"]
    assert len(answers["ListEntitlements"]["entitlements"]) == 3
    assert answers["ChangeNamedUserEmail"]["namedUser"]["email"] == "anne@initech.example"
    remaining = answers["RemoveNamedUser"]["entitlement"]["namedUsers"]
    assert [u["email"] for u in remaining] == ["anne@initech.example"]
    (found,) = answers["LookupCustomer"]["entitlements"]
    assert found["entitlementId"] == named["entitlementId"]
    assert answers["CreateWebhookSubscription"]["secret"].startswith("whsec_")
    subscribed = answers["GetWebhookSubscription"]["subscription"]
    assert subscribed["state"] == "WEBHOOK_STATE_ACTIVE"
    assert "cursor" not in subscribed  # from the first event: 0, which JSON leaves out
    assert len(answers["ListWebhookSubscriptions"]["subscriptions"]) == 1
    updated = answers["UpdateWebhookSubscription"]["subscription"]
    assert (updated["state"], updated["url"]) == (
        "WEBHOOK_STATE_PAUSED",
        "http://127.0.0.1:9/moved",
    )
    assert answers["ListWebhookDeliveries"] == {}  # paused at once: nothing was sent
    assert answers["RedeliverWebhooks"]["subscription"]["cursor"] == "1"
    assert answers["DeleteWebhookSubscription"] == {}


async def test_the_same_token_rules_as_grpc(http: httpx.AsyncClient, tokens: Tokens) -> None:
    cases = [
        ({}, 401, "MISSING_CREDENTIALS"),
        ({"authorization": "Basic a2V5OnR1cm4="}, 401, "MISSING_CREDENTIALS"),
        (bearer("kt_garbage"), 401, "INVALID_TOKEN"),
        (bearer(secret(tokens, "read")), 403, "INSUFFICIENT_SCOPE"),
    ]
    for headers, status, reason in cases:
        with pytest.raises(HttpCallError) as refused:
            await call(http, FULFILLMENT, "FulfillOrder", order("o-1", "STD"), headers=headers)
        assert (refused.value.failure.status, refused.value.failure.reason) == (status, reason)
    answer = await call(
        http, CATALOG, "ListProducts", {}, headers=bearer(secret(tokens, "catalog"))
    )
    assert answer == {}  # no products yet: proto3 JSON leaves out empty fields


@pytest.mark.parametrize(
    ("body", "content_type", "status", "field", "problem"),
    [
        (b"{not json", "application/json", 400, "request", "Failed to load JSON"),
        (b'{"licenseKey": 5}', "application/json", 400, "request", "licenseKey"),
        (b'{"nope": 1}', "application/json", 400, "request", 'no field named "nope"'),
        (b"", "application/json", 400, "request", "Failed to load JSON"),
        (b"{}", "text/plain", 415, "content-type", "must be application/json"),
        (b"licenseKey=x", "application/x-www-form-urlencoded", 415, "content-type", "must be"),
    ],
)
async def test_a_body_that_is_no_request_gets_invalid_request_never_internal(
    http: httpx.AsyncClient, body: bytes, content_type: str, status: int, field: str, problem: str
) -> None:
    with pytest.raises(HttpCallError) as refused:
        await call(http, LICENSING, "ActivateSeat", body, content_type=content_type)
    failure = refused.value.failure
    assert (failure.status, failure.code.name, failure.reason) == (
        status,
        "INVALID_ARGUMENT",
        "INVALID_REQUEST",
    )
    assert failure.fields == [field]
    assert problem in failure.message


async def test_a_get_of_an_rpc_is_405_with_a_json_body(http: httpx.AsyncClient) -> None:
    response = await http.get(f"/{LICENSING}/GetSigningKeys")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["details"][0]["debug"]["reason"] == "INVALID_REQUEST"


async def test_a_body_past_the_request_limit_is_resource_exhausted(
    http: httpx.AsyncClient,
) -> None:
    body = b'{"licenseKey": "' + b"k" * LIMITS.max_request_bytes + b'"}'
    with pytest.raises(HttpCallError) as refused:
        await call(http, LICENSING, "ActivateSeat", body)
    assert (refused.value.failure.status, refused.value.failure.code.name) == (
        429,
        "RESOURCE_EXHAUSTED",
    )
    assert "KEYTURN_MAX_REQUEST_BYTES" in refused.value.failure.message


async def test_the_port_layout_health_console_reserved_routes_and_the_worker_header(
    http: httpx.AsyncClient,
) -> None:
    health = await http.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "SERVING"})
    assert health.headers["keyturn-worker"] == "w-test"
    document = await http.get("/openapi.json")
    assert document.status_code == 200
    assert document.json() == openapi_document()  # the generated one, served as is
    assert f"/{LICENSING}/ActivateSeat" in document.json()["paths"]
    for path in ("/stripe/webhook", "/metrics", "/nowhere", "/consoles"):
        response = await http.get(path)
        assert response.status_code == 404, path
        assert response.json()["code"] == "not_found"
    assert "reserved" in (await http.get("/stripe/webhook")).json()["message"]
    console = await http.get("/console/")  # its sign-in page (tests/api/test_console_browser.py)
    assert (console.status_code, console.headers["content-type"]) == (
        200,
        "text/html; charset=utf-8",
    )
    assert console.headers["keyturn-worker"] == "w-test"
    assert (await http.get("/console")).headers["location"] == "/console/"
    missing = await http.post(f"/{LICENSING}/NoSuchMethod", content=b"{}")
    assert missing.status_code == 404


async def test_the_change_stream_ends_with_server_stopping_at_shutdown(
    app: AppContext, tokens: Tokens
) -> None:
    server = KeyturnServer(app, "127.0.0.1:0", http_listen="127.0.0.1:0")
    await server.start()
    stopped = False
    try:
        async with httpx.AsyncClient(
            base_url=f"http://{server.http_address}", timeout=WAIT_S
        ) as http:
            path = f"/{FULFILLMENT}/WatchEntitlementEvents"
            stream = stream_json(http, path, {}, bearer(secret(tokens, "read")))
            first = asyncio.ensure_future(anext(stream))  # type: ignore[arg-type]
            await call(
                http,
                CATALOG,
                "PutProduct",
                cat.PutProductRequest(product=product()),
                headers=bearer(secret(tokens, "catalog")),
            )
            await call(
                http,
                CATALOG,
                "PutSku",
                cat.PutSkuRequest(sku=create_sku("STD")),
                headers=bearer(secret(tokens, "catalog")),
            )
            await call(
                http,
                FULFILLMENT,
                "FulfillOrder",
                order("o-1", "STD"),
                headers=bearer(secret(tokens, "fulfill")),
            )
            event = await asyncio.wait_for(first, WAIT_S)
            assert event["event"]["type"] == "ENTITLEMENT_EVENT_TYPE_CREATED"
            stopping = asyncio.create_task(server.stop(grace=5.0))
            stopped = True
            with pytest.raises(HttpCallError) as ended:
                await asyncio.wait_for(anext(stream), WAIT_S)  # type: ignore[arg-type]
            await stopping
    finally:
        if not stopped:
            await server.stop(grace=1.0)
    failure = ended.value.failure
    assert (failure.code.name, failure.reason) == ("UNAVAILABLE", "SERVER_STOPPING")
    assert failure.metadata["last_sequence"] == str(event["event"]["sequence"])


async def test_the_port_sends_each_answer_at_once_without_nagle() -> None:
    """asyncio sets TCP_NODELAY only on connections of a socket made as TCP; without it
    an answer's body waited for the client's delayed ACK of its headers (~40 ms a call)."""
    sock = bind("127.0.0.1:0", reuse_port=False)
    accepted: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()
    server = await asyncio.start_server(lambda _, w: accepted.set_result(w), sock=sock)
    async with server:
        _, client = await asyncio.open_connection(*sock.getsockname()[:2])
        served = await asyncio.wait_for(accepted, WAIT_S)
        nodelay = served.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        client.close()
        served.close()
    assert nodelay
