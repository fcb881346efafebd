"""The Chargify / Maxio webhook endpoint over real HTTP on loopback, fulfilling through a
real server with the shipped catalog and product map: a subscription's whole lifecycle
through to an activated seat, replays, refused signatures, refused and then mapped
products, an unreachable Keyturn, and `keyturn connect chargify` as a child process.

The FulfillmentClient and urllib are blocking: they run in worker threads (the
endpoint's own request threads, asyncio.to_thread), as the server under test runs on
the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Callable, Collection
from datetime import timedelta
from pathlib import Path

import pytest
from chargify_harness import (
    API_KEY,
    PRO,
    PRODUCT_MAP,
    SEATS,
    SITE_KEY,
    STANDARD,
    ChargifyApi,
    allocation_change,
    deliver,
    form_body,
    product_change,
    renewal_success,
    sign,
    signup_success,
    state_change,
    subscription_component,
    subscription_id,
    webhook,
)
from connector_harness import Answer, child, database_state, post, run_keyturn_async

from keyturn.client import FulfillmentClient, NotFoundError, RetryPolicy
from keyturn.client.connectors.chargify_api import ChargifySeats
from keyturn.client.connectors.chargify_mapping import SignupSeats
from keyturn.client.connectors.chargify_webhook import ChargifyWebhookServer, signature
from keyturn.client.connectors.lifecycle import (
    ADD_SEATS,
    CANCEL,
    REINSTATE,
    REMOVE_SEATS,
    RENEW,
    SUSPEND,
    SWITCH,
    lifecycle_sku,
)
from keyturn.client.connectors.product_map import ProductMap, load_product_map
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.context import AppContext

from support.rpc import PRODUCT_ID
from support.smtp import free_port

pytest_plugins = ["connector_fixtures"]

run = asyncio.to_thread
E = ful.EntitlementEventType
Fulfil = Callable[[ful.FulfillOrderRequest], ful.FulfillOrderResponse]


class Recorder:
    """FulfillOrder through the real client, keeping each response: the license key of a
    created entitlement is in it (and never in the answer to Chargify)."""

    def __init__(self, fulfil: Fulfil) -> None:
        self._fulfil = fulfil
        self.responses: list[ful.FulfillOrderResponse] = []

    def __call__(self, order: ful.FulfillOrderRequest) -> ful.FulfillOrderResponse:
        response = self._fulfil(order)
        self.responses.append(response)
        return response


@contextlib.asynccontextmanager
async def endpoint(
    fulfil: Fulfil,
    products: ProductMap,
    seat_components: Collection[str] = (),
    site_key: str = SITE_KEY,
    signup_seats: SignupSeats | None = None,
) -> AsyncIterator[str]:
    """A ChargifyWebhookServer on a free loopback port; its webhook URL."""
    server = ChargifyWebhookServer(
        ("127.0.0.1", 0),
        site_key,
        fulfil,
        products,
        seat_components=seat_components,
        signup_seats=signup_seats,
    )
    server.start()
    try:
        host, port = server.address
        yield f"http://{host}:{port}/chargify/webhook"
    finally:
        await run(server.stop)


@pytest.fixture
def recorder(fulfil_client: FulfillmentClient) -> Recorder:
    return Recorder(fulfil_client.fulfill_order)


@pytest.fixture
async def chargify(recorder: Recorder) -> AsyncIterator[str]:
    async with endpoint(recorder, load_product_map(PRODUCT_MAP)) as url:
        yield url


async def by_reference(read: FulfillmentClient, sub: str) -> list[ful.Entitlement]:
    return await run(lambda: list(read.list_entitlements(external_reference=f"chargify:{sub}")))


def fulfilled(answer: Answer, hook: dict[str, object], replayed: bool = False) -> list[str]:
    """The entitlement ids of a 200 answer that fulfilled (or replayed) `hook`."""
    assert answer.status == 200, answer
    assert answer.body["webhook"] == answer.body["order_id"] == hook["id"], answer
    assert answer.body["replayed"] is replayed, answer
    entitlements: list[str] = answer.body["entitlements"]
    return entitlements


def activation(key: str, fingerprint: str) -> lic.ActivateSeatRequest:
    return lic.ActivateSeatRequest(license_key=key, product_id=PRODUCT_ID, fingerprint=fingerprint)


async def test_a_subscription_lifecycle_end_to_end_to_an_activated_seat(
    chargify: str,
    recorder: Recorder,
    read_client: FulfillmentClient,
    licensing_stub: licensing_pb2_grpc.LicensingServiceStub,
    stripe_catalog: object,
) -> None:
    """Signup, renewal, seats up and down, product change, past due and paid again,
    cancelled: each webhook orders its lifecycle SKU of the shipped catalog."""
    sub = subscription_id()
    read = read_client

    # signup_success: one Standard plan, named chargify:SUB, for Chargify's customer.
    signup = signup_success(sub, STANDARD)
    [entitlement_id] = fulfilled(await deliver(chargify, signup), signup)
    [entitlement] = await by_reference(read, sub)
    assert entitlement.entitlement_id == entitlement_id
    assert (entitlement.product_id, entitlement.edition_id, entitlement.seats) == (
        PRODUCT_ID,
        "standard",
        1,
    )
    assert entitlement.status == ful.ENTITLEMENT_STATUS_ACTIVE
    assert list(entitlement.external_references) == [f"chargify:{sub}"]
    assert entitlement.customer == ful.Customer(
        customer_id="15826583", name="Initech", email="billing@initech.example"
    )
    [created] = recorder.responses[-1].entitlements
    assert created.license_key
    seat = await licensing_stub.ActivateSeat(activation(created.license_key, "device-0001"))
    assert seat.lease.token
    assert (seat.entitlement.seats, seat.entitlement.seats_in_use) == (1, 1)

    # renewal_success: one more year.
    first_end = entitlement.end_time.ToDatetime()
    renewal = renewal_success(sub, STANDARD)
    fulfilled(await deliver(chargify, renewal), renewal)
    entitlement = await run(read.get_entitlement, entitlement_id)
    assert entitlement.end_time.ToDatetime() - first_end in (
        timedelta(days=365),
        timedelta(days=366),
    )

    # component_allocation_change of the seats component: up by 4, down by 2.
    for before, after in ((1, 5), (5, 3)):
        change = allocation_change(sub, STANDARD, before, after)
        assert fulfilled(await deliver(chargify, change), change) == [entitlement_id]
        assert (await run(read.get_entitlement, entitlement_id)).seats == after

    # subscription_product_change to Pro: the edition follows, the seats stay.
    switch = product_change(sub, STANDARD, PRO)
    fulfilled(await deliver(chargify, switch), switch)
    entitlement = await run(read.get_entitlement, entitlement_id)
    assert (entitlement.edition_id, entitlement.seats) == ("pro", 3)

    # Payment failed (past due): suspended, no new seat; paid again: reinstated.
    past_due = state_change(sub, PRO, "active", "past_due")
    fulfilled(await deliver(chargify, past_due), past_due)
    entitlement = await run(read.get_entitlement, entitlement_id)
    assert entitlement.status == ful.ENTITLEMENT_STATUS_SUSPENDED
    unpaid = state_change(sub, PRO, "past_due", "unpaid")  # still held: nothing to order
    answer = await deliver(chargify, unpaid)
    assert (answer.status, answer.body["webhook"]) == (200, unpaid["id"]), answer
    assert "unpaid" in answer.body["ignored"]
    paid = state_change(sub, PRO, "unpaid", "active")
    fulfilled(await deliver(chargify, paid), paid)
    assert (await run(read.get_entitlement, entitlement_id)).status == (
        ful.ENTITLEMENT_STATUS_ACTIVE
    )
    second = await licensing_stub.ActivateSeat(activation(created.license_key, "device-0002"))
    assert (second.entitlement.seats, second.entitlement.seats_in_use) == (3, 2)

    # Canceled.
    canceled = state_change(sub, PRO, "active", "canceled")
    fulfilled(await deliver(chargify, canceled), canceled)
    entitlement = await run(read.get_entitlement, entitlement_id)
    assert entitlement.status == ful.ENTITLEMENT_STATUS_CANCELLED

    history = await run(lambda: list(read.list_entitlement_events(entitlement_id)))
    ordered = [(e.type, e.order_id) for e in history if e.order_source == "chargify"]
    hooks = [signup, renewal, switch, past_due, paid, canceled]
    assert [t for t, _ in ordered] == [
        E.ENTITLEMENT_EVENT_TYPE_CREATED,
        E.ENTITLEMENT_EVENT_TYPE_RENEWED,
        E.ENTITLEMENT_EVENT_TYPE_SEATS_CHANGED,
        E.ENTITLEMENT_EVENT_TYPE_SEATS_CHANGED,
        E.ENTITLEMENT_EVENT_TYPE_EDITION_CHANGED,
        E.ENTITLEMENT_EVENT_TYPE_SUSPENDED,
        E.ENTITLEMENT_EVENT_TYPE_REINSTATED,
        E.ENTITLEMENT_EVENT_TYPE_CANCELLED,
    ]
    assert [order_id for _, order_id in ordered if order_id in {h["id"] for h in hooks}] == [
        h["id"] for h in hooks
    ]
    skus = [(await run(read.get_order, "chargify", order_id)).lines for _, order_id in ordered]
    assert [[(line.sku_id, line.quantity) for line in lines] for lines in skus] == [
        [("CAD-STD-1Y", 1)],
        [(lifecycle_sku("CAD-STD-1Y", RENEW), 1)],
        [(lifecycle_sku("CAD-STD-1Y", ADD_SEATS), 4)],
        [(lifecycle_sku("CAD-STD-1Y", REMOVE_SEATS), 2)],
        [(lifecycle_sku("CAD-PRO-1Y", SWITCH), 1)],
        [(lifecycle_sku("CAD-PRO-1Y", SUSPEND), 1)],
        [(lifecycle_sku("CAD-PRO-1Y", REINSTATE), 1)],
        [(lifecycle_sku("CAD-PRO-1Y", CANCEL), 1)],
    ]


async def test_a_replayed_webhook_changes_nothing(
    chargify: str, read_client: FulfillmentClient, app: AppContext, stripe_catalog: object
) -> None:
    """Chargify's retries and the merchant's replays keep the webhook id: FulfillOrder
    replays the order."""
    sub = subscription_id()
    hooks = [signup_success(sub, STANDARD), allocation_change(sub, STANDARD, 1, 4)]
    bodies = [form_body(hook) for hook in hooks]
    firsts = [await deliver(chargify, body) for body in bodies]
    for hook, first in zip(hooks, firsts, strict=True):
        fulfilled(first, hook)
    state = await database_state(app.store)

    for hook, body, first in zip(hooks, bodies, firsts, strict=True):
        again = await deliver(chargify, body)
        fulfilled(again, hook, replayed=True)
        assert again.body == {**first.body, "replayed": True}
    assert await database_state(app.store) == state
    [entitlement] = await by_reference(read_client, sub)
    assert entitlement.seats == 4


@pytest.mark.parametrize("tamper", ["wrong-key", "body-changed", "no-header", "garbage", "md5"])
async def test_a_bad_signature_is_401_and_fulfils_nothing(
    tamper: str,
    chargify: str,
    read_client: FulfillmentClient,
    app: AppContext,
    stripe_catalog: object,
) -> None:
    sub = subscription_id()
    hook = signup_success(sub, STANDARD)
    body = form_body(hook)
    given = {
        "wrong-key": sign(body, "someone-elses-site-key"),
        "body-changed": sign(body.replace(STANDARD["handle"].encode(), PRO["handle"].encode())),
        "no-header": "",
        "garbage": "not a signature",
        "md5": "5f4dcc3b5aa765d61d8327deb882cf99",  # the deprecated `signature` scheme
    }[tamper]
    before = await database_state(app.store)

    answer = await deliver(chargify, body, signature=given)

    assert (answer.status, answer.body) == (401, {"error": "signature check failed"})
    assert await database_state(app.store) == before
    assert await by_reference(read_client, sub) == []
    with pytest.raises(NotFoundError):
        await run(read_client.get_order, "chargify", str(hook["id"]))


async def test_the_documented_signature_and_test_webhook(
    recorder: Recorder, app: AppContext
) -> None:
    """docs.chargify.com: shared key `123`, body `payload[chargify]=testing&event=test`.
    The test webhook (also signed in the endpoint URL's query) needs no order."""
    body = b"payload[chargify]=testing&event=test"
    documented = "19826d51b9f866b26eda1f154de192593360f8d0bcb63df8a28540a5dcf733f1"
    assert signature(body, "123") == documented
    before = await database_state(app.store)
    async with endpoint(recorder, ProductMap(), site_key="123") as url:
        answer = await deliver(url, body, site_key="123")
        assert (answer.status, answer.body) == (
            200,
            {"webhook": "", "ignored": "event 'test' is not mapped to orders"},
        )
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        in_query = f"{url}?signature_hmac_sha_256={documented}"
        assert (await run(post, in_query, body, headers)).status == 200
        assert (await run(post, f"{url}?signature_hmac_sha_256=00", body, headers)).status == 401
    assert await database_state(app.store) == before
    assert recorder.responses == []


async def test_an_unmapped_product_is_refused_until_the_map_names_it(
    recorder: Recorder,
    read_client: FulfillmentClient,
    app: AppContext,
    stripe_catalog: object,
    tmp_path: Path,
) -> None:
    """422 (Chargify records a failed webhook and sends it again); once the product is
    in the map (and the connector restarted), the next delivery fulfils it."""
    partial = tmp_path / "product-map.yaml"
    partial.write_text("chargify:\n  acme-cad-standard: CAD-STD-1Y\n")
    sub = subscription_id()
    body = form_body(signup_success(sub, PRO))
    hook_id = re.search(rb"^id=(\d+)", body)
    assert hook_id is not None
    before = await database_state(app.store)

    async with endpoint(recorder, load_product_map(partial)) as url:
        for _ in range(2):  # Chargify's retries: refused again, nothing half-done
            refused = await deliver(url, body)
            assert refused.status == 422, refused
            assert refused.body["webhook"] == hook_id[1].decode()
            assert "'acme-cad-pro' (Acme CAD Pro)" in refused.body["error"]
            assert "KEYTURN_PRODUCT_MAP" in refused.body["error"]
            assert await database_state(app.store) == before
    assert recorder.responses == []

    async with endpoint(recorder, load_product_map(PRODUCT_MAP)) as url:
        answer = await deliver(url, body)
    assert answer.status == 200, answer
    [entitlement] = await by_reference(read_client, sub)
    assert (entitlement.edition_id, entitlement.seats) == ("pro", 1)


async def test_seat_components_and_changes_keyturn_refuses(
    recorder: Recorder, read_client: FulfillmentClient, app: AppContext, stripe_catalog: object
) -> None:
    """Only seat components change seats; a change to a subscription Keyturn does not know,
    or a fractional seat count, is 422."""
    sub = subscription_id()
    products = load_product_map(PRODUCT_MAP)
    signup = signup_success(sub, STANDARD)
    async with endpoint(recorder, products) as url:
        fulfilled(await deliver(url, signup), signup)
    before = await database_state(app.store)
    support = {"id": "985093", "name": "Support", "unit_name": "on/off", "kind": "on_off_component"}
    async with endpoint(recorder, products) as url:
        ignored = await deliver(url, allocation_change(sub, STANDARD, 0, 1, component=support))
        assert (ignored.status, ignored.body["ignored"]) == (
            200,
            "a component of kind 'on_off_component' does not count seats",
        )
        unknown = await deliver(url, allocation_change(subscription_id(), STANDARD, 1, 2))
        assert (unknown.status, unknown.body["reason"]) == (422, "ENTITLEMENT_NOT_FOUND")
        fractional = await deliver(url, allocation_change(sub, STANDARD, "1.0", "2.5"))
        assert fractional.status == 422
        assert "not a whole number" in fractional.body["error"]
    assert await database_state(app.store) == before

    # Named seat components: only those count (by id or handle), whatever their kind.
    async with endpoint(recorder, products, seat_components={"seats-v2"}) as url:
        other = await deliver(url, allocation_change(sub, STANDARD, 1, 9))
        assert other.status == 200, other
        assert "not a seat component" in other.body["ignored"]
        named = allocation_change(sub, STANDARD, 1, 6, component={**SEATS, "handle": "seats-v2"})
        fulfilled(await deliver(url, named), named)
    [entitlement] = await by_reference(read_client, sub)
    assert entitlement.seats == 6


async def test_a_signup_gets_the_seats_of_its_seat_components_from_chargifys_api(
    recorder: Recorder,
    read_client: FulfillmentClient,
    app: AppContext,
    licensing_stub: licensing_pb2_grpc.LicensingServiceStub,
    stripe_catalog: object,
) -> None:
    """signup_success carries no allocations: the connector reads them back (the seat
    component's, not an on/off one's). Chargify's API failing is 503, nothing written,
    and Chargify's retry then fulfils the signup."""
    sub = subscription_id()
    support = {"id": "985093", "name": "Support", "unit_name": "on/off", "kind": "on_off_component"}
    signup = signup_success(sub, PRO)
    with ChargifyApi() as api:
        api.components[sub] = [
            subscription_component(sub, SEATS, 7),
            subscription_component(sub, support, 1),
        ]
        seats = ChargifySeats(API_KEY, api.base)
        before = await database_state(app.store)
        async with endpoint(recorder, load_product_map(PRODUCT_MAP), signup_seats=seats) as url:
            api.failing = True
            down = await deliver(url, signup)
            assert (down.status, down.body["webhook"]) == (503, signup["id"]), down
            assert "HTTP 500" in down.body["error"]
            assert await database_state(app.store) == before
            api.failing = False
            [entitlement_id] = fulfilled(await deliver(url, signup), signup)
            unknown = await deliver(url, signup_success(subscription_id(), PRO))
            assert unknown.status == 422, unknown
            assert "knows no subscription" in unknown.body["error"]
        wrong_key = ChargifySeats("not-the-key", api.base)
        async with endpoint(recorder, load_product_map(PRODUCT_MAP), signup_seats=wrong_key) as url:
            refused = await deliver(url, signup_success(subscription_id(), PRO))
            assert (refused.status, "HTTP 401" in refused.body["error"]) == (503, True), refused
    assert api.requests[:2] == [f"/subscriptions/{sub}/components.json"] * 2
    entitlement = await run(read_client.get_entitlement, entitlement_id)
    assert (entitlement.edition_id, entitlement.seats) == ("pro", 7)
    [created] = recorder.responses[-1].entitlements
    for device in range(7):
        await licensing_stub.ActivateSeat(activation(created.license_key, f"device-{device:04}"))
    assert (await run(read_client.get_entitlement, entitlement_id)).seats_in_use == 7


async def test_an_unreachable_keyturn_is_503() -> None:
    retry = RetryPolicy(attempts=2, initial=0.01, maximum=0.02)
    with FulfillmentClient(f"127.0.0.1:{free_port()}", "kt_unused", retry=retry) as client:
        async with endpoint(client.fulfill_order, load_product_map(PRODUCT_MAP)) as url:
            hook = signup_success(subscription_id(), STANDARD)
            answer = await deliver(url, hook)
    assert answer.status == 503, answer
    assert answer.body["order_id"] == hook["id"]
    assert answer.body["error"]


LINE = re.compile(r"^keyturn chargify webhook on (?P<url>http://\S+:(?P<port>\d+)/\S*)$")


# The child only talks gRPC: one backend suffices (the in-process tests cover both).
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_keyturn_connect_chargify_as_a_child_process(
    server: KeyturnServer,
    connector_secrets: dict[str, str],
    read_client: FulfillmentClient,
    stripe_catalog: object,
    tmp_path: Path,
) -> None:
    settings = {
        "KEYTURN_CHARGIFY_SITE_KEY": SITE_KEY,
        "KEYTURN_FULFILL_TOKEN": connector_secrets["fulfill"],
        "KEYTURN_PRODUCT_MAP": str(PRODUCT_MAP),
        "KEYTURN_CHARGIFY_SEAT_COMPONENTS": f"{SEATS['id']}, seats",
        "KEYTURN_LISTEN": server.address,
    }
    args = ["connect", "chargify", "--listen", "127.0.0.1:0", "--path", "/hooks/chargify"]
    with child(args, tmp_path, settings) as connector:
        line = await run(connector.await_line, LINE)
        url = line["url"]
        assert url == f"http://127.0.0.1:{line['port']}/hooks/chargify"
        sub = subscription_id()
        signup = signup_success(sub, STANDARD)
        [entitlement_id] = fulfilled(await deliver(url, signup), signup)
        seats = allocation_change(sub, STANDARD, 1, 3)
        fulfilled(await deliver(url, seats), seats)
        forged = await deliver(url, signup_success(sub, PRO), site_key="forged")
        assert forged.status == 401, forged
        assert await run(connector.terminate) == 0
    [entitlement] = await by_reference(read_client, sub)
    assert (entitlement.entitlement_id, entitlement.seats, entitlement.edition_id) == (
        entitlement_id,
        3,
        "standard",
    )


SITE_KEY_SETTING = (
    "KEYTURN_CHARGIFY_SITE_KEY (the Site shared key of the Chargify site, which signs its webhooks)"
)
FULFILL_TOKEN = (
    "KEYTURN_FULFILL_TOKEN (a token with the fulfill scope: keyturn tokens create --scope fulfill)"
)
NO_MAP = (
    "keyturn: set KEYTURN_PRODUCT_MAP (the YAML file mapping each billing system's product "
    "ids to base SKUs, like examples/product-map.yaml)"
)


@pytest.mark.parametrize(
    ("settings", "line"),
    [
        ({"KEYTURN_FULFILL_TOKEN": "kt_x"}, f"keyturn: set {SITE_KEY_SETTING}"),
        (
            {"KEYTURN_CHARGIFY_SITE_KEY": "", "KEYTURN_FULFILL_TOKEN": ""},
            f"keyturn: set {SITE_KEY_SETTING} and {FULFILL_TOKEN}",
        ),
        ({"KEYTURN_CHARGIFY_SITE_KEY": SITE_KEY, "KEYTURN_FULFILL_TOKEN": "kt_x"}, NO_MAP),
        (
            {
                "KEYTURN_CHARGIFY_SITE_KEY": SITE_KEY,
                "KEYTURN_FULFILL_TOKEN": "kt_x",
                "KEYTURN_PRODUCT_MAP": "/nonexistent/product-map.yaml",
            },
            "keyturn: cannot read the product map /nonexistent/product-map.yaml: "
            "No such file or directory",
        ),
    ],
)
async def test_keyturn_connect_chargify_names_what_is_missing(
    tmp_path: Path, settings: dict[str, str], line: str
) -> None:
    result = await run_keyturn_async(["connect", "chargify"], tmp_path, settings)
    assert (result.returncode, result.stderr.splitlines(), result.stdout) == (2, [line], "")


def test_webhooks_of_other_events_need_no_order() -> None:
    """A unit check of the form shape: square brackets as Chargify sends them."""
    hook = webhook("customer_update", {"customer": {"id": "15", "email": "a@b.example"}})
    body = form_body(hook).decode()
    assert body.startswith(f"id={hook['id']}&event=customer_update&payload[site][id]=31615&")
    assert "payload[customer][email]=a%40b.example" in body


async def test_keyturn_connect_chargify_names_the_setting_of_a_taken_port_or_bad_path(
    tmp_path: Path,
) -> None:
    settings = {
        "KEYTURN_CHARGIFY_SITE_KEY": SITE_KEY,
        "KEYTURN_FULFILL_TOKEN": "kt_x",
        "KEYTURN_PRODUCT_MAP": str(PRODUCT_MAP),
    }
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        in_use = await run_keyturn_async(
            ["connect", "chargify"],
            tmp_path,
            {**settings, "KEYTURN_CHARGIFY_LISTEN": f"127.0.0.1:{port}"},
        )
    assert (in_use.returncode, in_use.stderr.splitlines()) == (
        2,
        [
            f"keyturn: cannot listen on 127.0.0.1:{port}: Address already in use; choose "
            "another HOST:PORT with --listen or KEYTURN_CHARGIFY_LISTEN (port 0: any free port)"
        ],
    )
    bad_path = await run_keyturn_async(
        ["connect", "chargify", "--path", "chargify/webhook"], tmp_path, settings
    )
    assert (bad_path.returncode, bad_path.stderr.splitlines()) == (
        2,
        ["keyturn: --path: 'chargify/webhook' is not a URL path, for example /chargify/webhook"],
    )
