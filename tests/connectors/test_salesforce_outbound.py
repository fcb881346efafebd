"""The Salesforce outbound message endpoint over real HTTP on loopback, fulfilling through
a real server, reading records back from a stand-in of Salesforce's REST API: the whole
lifecycle of a contract through to an activated seat, replays, another organization,
an unmapped product, Keyturn or Salesforce unreachable, and `keyturn connect salesforce`
as a child process.

The connector's HTTP server, its FulfillmentClient and urllib are blocking: they run in
worker threads (asyncio.to_thread), as the server under test runs on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from connector_harness import child, database_state, run_keyturn_async
from salesforce_harness import (
    ACCOUNT_ID,
    ORG_ID,
    OTHER_ORG_ID,
    Notified,
    SalesforceStandIn,
    SoapAnswer,
    new_id,
    new_order,
    opportunity_record,
    order_fields,
    outbound_message,
    post_message,
    records_queried,
)

from keyturn.client import FulfillmentClient, LicensingClient, NotFoundError, RetryPolicy
from keyturn.client.connectors.lifecycle import (
    ADD_SEATS,
    CANCEL,
    REMOVE_SEATS,
    RENEW,
    SWITCH,
    lifecycle_sku,
)
from keyturn.client.connectors.product_map import ProductMap, load_product_map, parse_product_map
from keyturn.client.connectors.salesforce_api import ClientCredentials, SalesforceApi
from keyturn.client.connectors.salesforce_outbound import (
    SalesforceEndpoint,
    SalesforceOutboundServer,
)
from keyturn.client.connectors.webhook_server import Fulfil
from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.context import AppContext

from conftest import Tokens
from support.rpc import PRODUCT_ID, create_sku
from support.smtp import free_port

pytest_plugins = ["connector_fixtures"]

run = asyncio.to_thread
E = ful.EntitlementEventType
ROOT = Path(__file__).resolve().parents[2]
PRODUCT_MAP = ROOT / "examples" / "product-map.yaml"
# Product2.ProductCode -> base SKU, as examples/product-map.yaml maps them.
STANDARD, PRO = "CAD-STD", "CAD-PRO"
SKU = {STANDARD: "CAD-STD-1Y", PRO: "CAD-PRO-1Y"}
EDITION = {STANDARD: "standard", PRO: "pro"}


class Tap:
    """The endpoint's FulfillOrder, with each response kept (the license keys are in them)."""

    def __init__(self, fulfil: Fulfil) -> None:
        self._fulfil = fulfil
        self.responses: list[ful.FulfillOrderResponse] = []

    def __call__(self, order: ful.FulfillOrderRequest) -> ful.FulfillOrderResponse:
        response = self._fulfil(order)
        self.responses.append(response)
        return response


@contextlib.contextmanager
def endpoint(
    fulfil: Fulfil,
    api: SalesforceApi,
    products: ProductMap | None = None,
    organization_id: str = ORG_ID,
) -> Iterator[str]:
    """A SalesforceOutboundServer on a free loopback port; its URL."""
    served = SalesforceEndpoint(
        organization_id, api, products or load_product_map(PRODUCT_MAP), fulfil
    )
    server = SalesforceOutboundServer(("127.0.0.1", 0), served)
    server.start()
    try:
        host, port = server.address
        yield f"http://{host}:{port}/salesforce/outbound"
    finally:
        server.stop()


@pytest.fixture
def salesforce() -> Iterator[SalesforceStandIn]:
    with SalesforceStandIn() as stand_in:
        yield stand_in


@pytest.fixture
def tap(fulfil_client: FulfillmentClient) -> Tap:
    return Tap(fulfil_client.fulfill_order)


@pytest.fixture
def outbound(tap: Tap, salesforce: SalesforceStandIn, stripe_catalog: object) -> Iterator[str]:
    """The endpoint on the shipped catalog, querying as each message's session."""
    with endpoint(tap, SalesforceApi(salesforce.url, "62.0")) as url:
        yield url


async def deliver(
    url: str,
    salesforce: SalesforceStandIn,
    *records: dict[str, object],
    session: str | None = "",
    organization_id: str = ORG_ID,
) -> SoapAnswer:
    """One outbound message about `records` (put into the stand-in first), with a fresh
    session unless `session` is given (None: Send Session ID unticked)."""
    salesforce.add(*records)
    message = outbound_message(
        [Notified(str(r["Id"]), fields=order_fields(r)) for r in records],
        instance_url=salesforce.url,
        session_id=salesforce.new_session() if session == "" else session,
        organization_id=organization_id,
    )
    return await run(post_message, url, message)


def acked(answer: SoapAnswer) -> None:
    assert (answer.status, answer.ack) == (200, True), answer
    assert answer.content_type == "text/xml; charset=utf-8"


async def by_contract(read: FulfillmentClient, contract: str) -> list[ful.Entitlement]:
    reference = f"salesforce:{contract}"
    return await run(lambda: list(read.list_entitlements(external_reference=reference)))


async def the_entitlement(read: FulfillmentClient, contract: str) -> ful.Entitlement:
    found = await by_contract(read, contract)
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize(("first", "then"), [(STANDARD, PRO), (PRO, STANDARD)])
async def test_a_contract_lifecycle_end_to_end_to_an_activated_seat(
    outbound: str,
    salesforce: SalesforceStandIn,
    tap: Tap,
    read_client: FulfillmentClient,
    server: KeyturnServer,
    first: str,
    then: str,
) -> None:
    """New, Renewal, Amendments (seats up, down, product replaced), Cancellation: each
    Order's lines read back through the REST API and ordered as the shipped catalog's
    lifecycle SKUs, on the entitlement of the Contract."""
    read = read_client
    contract = new_id("800")

    def order(order_type: str, lines: list[tuple[str, float]]) -> dict[str, object]:
        return new_order(order_type, lines, contract)

    # New: 5 seats, the entitlement named salesforce:CONTRACT, a seat taken with its key.
    created = order("New", [(first, 5)])
    acked(await deliver(outbound, salesforce, created))
    entitlement = await the_entitlement(read, contract)
    assert (entitlement.product_id, entitlement.edition_id, entitlement.seats) == (
        PRODUCT_ID,
        EDITION[first],
        5,
    )
    assert entitlement.status == ful.ENTITLEMENT_STATUS_ACTIVE
    assert entitlement.customer == ful.Customer(
        customer_id=ACCOUNT_ID, name="Initech", email="billing@initech.example"
    )
    stored = await run(read.get_order, "salesforce", created["Id"])
    assert stored.ship_to_email == "it@initech.example"
    [response] = tap.responses
    [with_key] = response.entitlements
    assert with_key.entitlement_id == entitlement.entitlement_id
    assert with_key.license_key
    with LicensingClient(server.address, PRODUCT_ID) as licensing:
        lease = await run(licensing.activate, with_key.license_key, heartbeat=False)
    assert lease.entitlement_id == entitlement.entitlement_id

    # Renewal: one more term.
    first_end = entitlement.end_time.ToDatetime()
    renewal = order("Renewal", [(first, 5)])
    acked(await deliver(outbound, salesforce, renewal))
    entitlement = await run(read.get_entitlement, entitlement.entitlement_id)
    assert entitlement.end_time.ToDatetime() - first_end in (
        timedelta(days=365),
        timedelta(days=366),
    )

    # Amendments carry the change of quantity: +3, then -2.
    more, fewer = order("Amendment", [(first, 3)]), order("Amendment", [(first, -2)])
    for amendment, seats in ((more, 8), (fewer, 6)):
        acked(await deliver(outbound, salesforce, amendment))
        entitlement = await run(read.get_entitlement, entitlement.entitlement_id)
        assert entitlement.seats == seats

    # The product replaced (CPQ: the old line -6, the new one +7): the edition, one seat more.
    replaced = order("Existing Customer - Upgrade", [(first, -6), (then, 7)])
    acked(await deliver(outbound, salesforce, replaced))
    entitlement = await run(read.get_entitlement, entitlement.entitlement_id)
    assert (entitlement.edition_id, entitlement.seats) == (EDITION[then], 7)

    # Cancellation.
    cancelled = order("Cancellation", [(then, -7)])
    acked(await deliver(outbound, salesforce, cancelled))
    entitlement = await run(read.get_entitlement, entitlement.entitlement_id)
    assert entitlement.status == ful.ENTITLEMENT_STATUS_CANCELLED

    orders = [created, renewal, more, fewer, replaced, cancelled]
    events = await run(lambda: list(read.list_entitlement_events(entitlement.entitlement_id)))
    assert [e.type for e in events].count(E.ENTITLEMENT_EVENT_TYPE_SEAT_ACTIVATED) == 1
    history = [e for e in events if e.order_source]
    assert [(e.type, e.order_source, e.order_id) for e in history] == [
        (E.ENTITLEMENT_EVENT_TYPE_CREATED, "salesforce", created["Id"]),
        (E.ENTITLEMENT_EVENT_TYPE_RENEWED, "salesforce", renewal["Id"]),
        (E.ENTITLEMENT_EVENT_TYPE_SEATS_CHANGED, "salesforce", more["Id"]),
        (E.ENTITLEMENT_EVENT_TYPE_SEATS_CHANGED, "salesforce", fewer["Id"]),
        (E.ENTITLEMENT_EVENT_TYPE_EDITION_CHANGED, "salesforce", replaced["Id"]),
        (E.ENTITLEMENT_EVENT_TYPE_SEATS_CHANGED, "salesforce", replaced["Id"]),
        (E.ENTITLEMENT_EVENT_TYPE_CANCELLED, "salesforce", cancelled["Id"]),
    ]
    lines = [(await run(read.get_order, "salesforce", str(o["Id"]))).lines for o in orders]
    base, other = SKU[first], SKU[then]
    assert [[(line.sku_id, line.quantity) for line in ls] for ls in lines] == [
        [(base, 5)],
        [(lifecycle_sku(base, RENEW), 1)],
        [(lifecycle_sku(base, ADD_SEATS), 3)],
        [(lifecycle_sku(base, REMOVE_SEATS), 2)],
        [(lifecycle_sku(other, SWITCH), 1), (lifecycle_sku(other, ADD_SEATS), 1)],
        [(lifecycle_sku(other, CANCEL), 1)],
    ]
    # Every record was read back as the session its message carried.
    assert list(records_queried(salesforce)) == [o["Id"] for o in orders]
    assert len({bearer for bearer, _ in salesforce.queries}) == len(orders)


async def test_a_won_opportunity_creates_and_an_open_one_does_nothing(
    outbound: str, salesforce: SalesforceStandIn, read_client: FulfillmentClient, app: AppContext
) -> None:
    """An org that sells from Opportunities (Closed Won, with products): the same
    mapping over OpportunityLineItems, the primary contact's email."""
    contract = new_id("800")
    won, open_one = (
        opportunity_record(
            opportunity_id=new_id("006"),
            opportunity_type="New Customer",
            lines=[(STANDARD, 2), (STANDARD, 1)],  # one product on two lines: summed
            contract_id=contract,
            won=is_won,
        )
        for is_won in (True, False)
    )
    for record in (open_one, won):
        salesforce.add(record)
    before = await database_state(app.store)
    acked(await run(post_message, outbound, opportunity_message(salesforce, open_one)))
    assert await database_state(app.store) == before

    acked(await run(post_message, outbound, opportunity_message(salesforce, won)))
    entitlement = await the_entitlement(read_client, contract)
    assert (entitlement.seats, entitlement.customer.email) == (3, "buyer@globex.example")
    assert entitlement.customer.name == "Globex"
    order = await run(read_client.get_order, "salesforce", won["Id"])
    assert [(line.sku_id, line.quantity) for line in order.lines] == [(SKU[STANDARD], 3)]


def opportunity_message(salesforce: SalesforceStandIn, record: dict[str, object]) -> bytes:
    fields = {"StageName": str(record["StageName"]), "Type": str(record["Type"])}
    return outbound_message(
        [Notified(str(record["Id"]), "Opportunity", fields)],
        instance_url=salesforce.url,
        session_id=salesforce.new_session(),
    )


async def test_a_replayed_message_changes_nothing(
    outbound: str, salesforce: SalesforceStandIn, read_client: FulfillmentClient, app: AppContext
) -> None:
    """Salesforce delivers a message again (the Ack lost, or a workflow firing twice): the
    Order Id is the order id, so each record replays."""
    contract = new_id("800")
    created = new_order("New", [(STANDARD, 2)], contract)
    more = new_order("Amendment", [(STANDARD, 1)], contract)
    acked(await deliver(outbound, salesforce, created))
    batch = outbound_message(
        [Notified(str(created["Id"])), Notified(str(more["Id"]))],
        instance_url=salesforce.url,
        session_id=salesforce.new_session(),
    )
    salesforce.add(more)
    acked(await run(post_message, outbound, batch))  # the created one replays in it
    state = await database_state(app.store)

    for _ in range(2):
        acked(await run(post_message, outbound, batch))
    assert await database_state(app.store) == state
    assert (await the_entitlement(read_client, contract)).seats == 3


@pytest.mark.parametrize("configured", ["15-character", "18-character"])
async def test_another_organization_is_refused_and_nothing_is_written(
    tap: Tap,
    salesforce: SalesforceStandIn,
    read_client: FulfillmentClient,
    app: AppContext,
    stripe_catalog: object,
    configured: str,
) -> None:
    org = ORG_ID[:15] if configured == "15-character" else ORG_ID
    contract = new_id("800")
    record = new_order("New", [(STANDARD, 2)], contract)
    with endpoint(tap, SalesforceApi(salesforce.url, "62.0"), organization_id=org) as url:
        before = await database_state(app.store)
        refused = await deliver(url, salesforce, record, organization_id=OTHER_ORG_ID)
        assert (refused.status, refused.ack, refused.faultcode) == (500, False, "soapenv:Client")
        assert OTHER_ORG_ID in refused.faultstring
        assert "nothing was done" in refused.faultstring
        assert salesforce.queries == []  # not even read back
        assert await database_state(app.store) == before

        # The same message from the org served, in either id form, goes through.
        acked(await deliver(url, salesforce, record))
    assert (await the_entitlement(read_client, contract)).seats == 2


async def test_an_unmapped_product_is_refused_until_the_map_has_it(
    tap: Tap,
    salesforce: SalesforceStandIn,
    read_client: FulfillmentClient,
    app: AppContext,
    stripe_catalog: object,
    catalog_stub: catalog_pb2_grpc.CatalogServiceStub,
    tokens: Tokens,
) -> None:
    """One message, two orders: the mapped one is fulfilled, the other refused by a fault
    that names it (Salesforce's delivery status shows it and retries); each retry replays
    the first; once the map (and catalog) have the product, the retry is acknowledged."""
    good_contract, enterprise_contract = new_id("800"), new_id("800")
    good = new_order("New", [(PRO, 3)], good_contract)
    unmapped = new_order("New", [("CAD-ENT", 4)], enterprise_contract)
    salesforce.add(good, unmapped)
    message = outbound_message(
        [Notified(str(good["Id"])), Notified(str(unmapped["Id"]))],
        instance_url=salesforce.url,
        session_id=salesforce.new_session(),
    )
    api = SalesforceApi(salesforce.url, "62.0")
    with endpoint(tap, api) as url:
        for attempt in range(2):
            refused = await run(post_message, url, message)
            assert (refused.status, refused.ack, refused.faultcode) == (
                500,
                False,
                "soapenv:Server",
            )
            assert [(f.object_id, f.reason, f.temporary) for f in refused.failures] == [
                (unmapped["Id"], "PRODUCT_NOT_MAPPED", False)
            ]
            assert f"{unmapped['Id']}: PRODUCT_NOT_MAPPED" in refused.faultstring
            assert "'CAD-ENT'" in refused.faultstring
            if attempt == 0:
                state = await database_state(app.store)
        assert await database_state(app.store) == state
        assert (await the_entitlement(read_client, good_contract)).seats == 3
        assert await by_contract(read_client, enterprise_contract) == []

    await catalog_stub.PutSku(
        cat.PutSkuRequest(sku=create_sku("CAD-ENT-1Y", seats=1)), metadata=tokens("catalog")
    )
    mapped = "  CAD-PRO: CAD-PRO-1Y\n"
    fixed = parse_product_map(
        PRODUCT_MAP.read_text().replace(mapped, mapped + "  CAD-ENT: CAD-ENT-1Y\n", 1)
    )
    assert fixed.sku("salesforce", "CAD-ENT") == "CAD-ENT-1Y"
    with endpoint(tap, api, fixed) as url:  # the connector restarted with the new map
        acked(await run(post_message, url, message))
    assert (await the_entitlement(read_client, enterprise_contract)).seats == 4


async def test_an_order_keyturn_refuses_or_cannot_target_is_not_acknowledged(
    outbound: str, salesforce: SalesforceStandIn, app: AppContext
) -> None:
    before = await database_state(app.store)
    renewal_of_nothing = new_order("Renewal", [(STANDARD, 1)])
    refused = await deliver(outbound, salesforce, renewal_of_nothing)
    assert [(f.reason, f.temporary) for f in refused.failures] == [("ENTITLEMENT_NOT_FOUND", False)]

    for order_type, lines, contract, why in [
        ("Evergreen", [(STANDARD, 1)], new_id("800"), "Type 'Evergreen' is none of"),
        ("Amendment", [(STANDARD, 1)], None, "names no ContractId"),
        ("New", [(STANDARD, 1), (PRO, 1)], new_id("800"), "one subscription product"),
        ("New", [(STANDARD, 1.5)], new_id("800"), "is not whole"),
        ("New", [], new_id("800"), "has no OrderItems"),
    ]:
        record = new_order(order_type, lines, contract)
        unusable = await deliver(outbound, salesforce, record)
        assert [(f.object_id, f.reason) for f in unusable.failures] == [
            (record["Id"], "UNUSABLE_ORDER")
        ], unusable
        assert why in unusable.failures[0].message
    assert await database_state(app.store) == before


async def test_records_not_activated_or_of_another_type(
    outbound: str, salesforce: SalesforceStandIn, app: AppContext
) -> None:
    before = await database_state(app.store)
    draft = new_order("New", [(STANDARD, 1)], status="Draft")
    acked(await deliver(outbound, salesforce, draft))  # nothing to do: acknowledged
    account = outbound_message(
        [Notified(new_id("001"), object_type="Account")],
        instance_url=salesforce.url,
        session_id=salesforce.new_session(),
    )
    refused = await run(post_message, outbound, account)
    assert [f.reason for f in refused.failures] == ["UNSUPPORTED_OBJECT"]
    assert await database_state(app.store) == before


@pytest.mark.parametrize(
    "body",
    [
        b"not xml at all",
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><x>&b;</x>',
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>',
        b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
        b"<soapenv:Body/></soapenv:Envelope>",
    ],
    ids=["text", "entities", "external-entity", "empty-body"],
)
async def test_what_is_no_outbound_message_is_a_client_fault(
    outbound: str, salesforce: SalesforceStandIn, app: AppContext, body: bytes
) -> None:
    before = await database_state(app.store)
    refused = await run(post_message, outbound, body)
    assert (refused.status, refused.faultcode) == (500, "soapenv:Client"), refused
    assert refused.faultstring.startswith("not an outbound message")
    assert salesforce.queries == []
    assert await database_state(app.store) == before


async def test_a_session_salesforce_refuses_or_none_is_retried(
    outbound: str, salesforce: SalesforceStandIn, app: AppContext
) -> None:
    record = new_order("New", [(STANDARD, 1)])
    before = await database_state(app.store)
    expired = await deliver(outbound, salesforce, record, session="00Dexpired!session")
    assert [(f.reason, f.temporary) for f in expired.failures] == [("SALESFORCE_API", True)]
    assert "INVALID_SESSION_ID" in expired.faultstring
    unsent = await deliver(outbound, salesforce, record, session=None)
    assert "Send Session ID" in unsent.failures[0].message
    salesforce.down = True
    down = await deliver(outbound, salesforce, record)
    assert [(f.reason, f.temporary) for f in down.failures] == [("SALESFORCE_API", True)]
    assert await database_state(app.store) == before
    salesforce.down = False
    acked(await deliver(outbound, salesforce, record))


async def test_a_connected_app_queries_without_the_session(
    tap: Tap,
    salesforce: SalesforceStandIn,
    read_client: FulfillmentClient,
    stripe_catalog: object,
) -> None:
    salesforce.apps["3MVG9Kt.consumer"] = "consumer-secret"
    api = SalesforceApi(
        salesforce.url, "62.0", ClientCredentials("3MVG9Kt.consumer", "consumer-secret")
    )
    contract = new_id("800")
    record = new_order("New", [(STANDARD, 4)], contract)
    with endpoint(tap, api) as url:
        acked(await deliver(url, salesforce, record, session=None))
        salesforce.sessions.clear()  # the app's token expired: a new one is fetched
        renewal = new_order("Renewal", [(STANDARD, 4)], contract)
        acked(await deliver(url, salesforce, renewal, session=None))
    assert [bearer.split(".")[-2] for bearer, _ in salesforce.queries] == ["app", "app", "app"]
    assert (await the_entitlement(read_client, contract)).seats == 4


async def test_an_unreachable_keyturn_is_retried(
    tap: Tap,
    salesforce: SalesforceStandIn,
    read_client: FulfillmentClient,
    stripe_catalog: object,
) -> None:
    """Keyturn down: a temporary fault, so Salesforce retries; its retry of the same
    message, once Keyturn is back, is fulfilled and acknowledged."""
    retry = RetryPolicy(attempts=2, initial=0.01, maximum=0.02)
    record = new_order("New", [(STANDARD, 1)])
    salesforce.add(record)
    message = outbound_message(
        [Notified(str(record["Id"]))],
        instance_url=salesforce.url,
        session_id=salesforce.new_session(),
    )
    api = SalesforceApi(salesforce.url, "62.0")
    with (
        FulfillmentClient(f"127.0.0.1:{free_port()}", "kt_unused", retry=retry) as client,
        endpoint(client.fulfill_order, api) as url,
    ):
        answer = await run(post_message, url, message)
    assert (answer.status, answer.ack, answer.faultcode) == (500, False, "soapenv:Server")
    assert [(f.object_id, f.temporary) for f in answer.failures] == [(record["Id"], True)]
    assert f"Keyturn did not fulfil 1 of 1 records, retry: {record['Id']}" in answer.faultstring

    with endpoint(tap, api) as url:  # Keyturn reachable again: Salesforce's next retry
        acked(await run(post_message, url, message))
    assert (await the_entitlement(read_client, str(record["ContractId"]))).seats == 1


ENDPOINT_LINE = re.compile(
    r"^keyturn salesforce outbound messages on (?P<url>http://\S+:(?P<port>\d+)/\S*)$"
)


# The child only talks gRPC: one backend suffices (the in-process tests cover both).
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_keyturn_connect_salesforce_as_a_child_process(
    server: KeyturnServer,
    connector_secrets: dict[str, str],
    salesforce: SalesforceStandIn,
    read_client: FulfillmentClient,
    stripe_catalog: object,
    tmp_path: Path,
) -> None:
    settings = {
        "KEYTURN_SALESFORCE_ORGANIZATION_ID": ORG_ID[:15],
        "KEYTURN_SALESFORCE_INSTANCE_URL": salesforce.url,
        "KEYTURN_PRODUCT_MAP": str(PRODUCT_MAP),
        "KEYTURN_FULFILL_TOKEN": connector_secrets["fulfill"],
        "KEYTURN_LISTEN": server.address,
    }
    args = ["connect", "salesforce", "--listen", "127.0.0.1:0", "--path", "/sf/om"]
    contract = new_id("800")
    record = new_order("New", [(PRO, 3)], contract)
    with child(args, tmp_path, settings) as connector:
        line = await run(connector.await_line, ENDPOINT_LINE)
        assert line["url"] == f"http://127.0.0.1:{line['port']}/sf/om"
        acked(await deliver(line["url"], salesforce, record))
        other = await deliver(line["url"], salesforce, record, organization_id=OTHER_ORG_ID)
        assert other.faultcode == "soapenv:Client"
        assert await run(connector.terminate) == 0
    entitlement = await the_entitlement(read_client, contract)
    assert (entitlement.edition_id, entitlement.seats) == ("pro", 3)
    with pytest.raises(NotFoundError):
        await run(read_client.get_order, "salesforce", new_id("801"))


COMPLETE = {
    "KEYTURN_SALESFORCE_ORGANIZATION_ID": ORG_ID,
    "KEYTURN_SALESFORCE_INSTANCE_URL": "https://acme.my.salesforce.com",
    "KEYTURN_PRODUCT_MAP": str(PRODUCT_MAP),
    "KEYTURN_FULFILL_TOKEN": "kt_x",
}


def without(*names: str, **more: str) -> dict[str, str]:
    return {**{k: v for k, v in COMPLETE.items() if k not in names}, **more}


@pytest.mark.parametrize(
    ("settings", "line"),
    [
        (
            without("KEYTURN_SALESFORCE_INSTANCE_URL"),
            "keyturn: set KEYTURN_SALESFORCE_INSTANCE_URL (the org's My Domain URL, "
            "https://NAME.my.salesforce.com)",
        ),
        (
            without(KEYTURN_SALESFORCE_ORGANIZATION_ID="00D5g000004ElqNAAA"),
            "keyturn: KEYTURN_SALESFORCE_ORGANIZATION_ID: '00D5g000004ElqNAAA' is not an "
            "organization id (00D and 12 more letters or digits, or the 18-character form)",
        ),
        (
            without(KEYTURN_SALESFORCE_INSTANCE_URL="acme.my.salesforce.com"),
            "keyturn: KEYTURN_SALESFORCE_INSTANCE_URL: 'acme.my.salesforce.com' is not a URL "
            "like https://acme.my.salesforce.com",
        ),
        (
            without(KEYTURN_SALESFORCE_CLIENT_ID="3MVG9Kt.consumer"),
            "keyturn: set KEYTURN_SALESFORCE_CLIENT_SECRET (the consumer secret of the "
            "connected app that KEYTURN_SALESFORCE_CLIENT_ID names)",
        ),
        (
            without(KEYTURN_PRODUCT_MAP="/nonexistent/map.yaml"),
            "keyturn: KEYTURN_PRODUCT_MAP: cannot read the product map /nonexistent/map.yaml: "
            "No such file or directory",
        ),
    ],
    ids=["no-instance", "bad-org-checksum", "instance-no-url", "app-without-secret", "no-map"],
)
async def test_keyturn_connect_salesforce_names_what_is_missing_or_wrong(
    tmp_path: Path, settings: dict[str, str], line: str
) -> None:
    args = ["connect", "salesforce", "--listen", "127.0.0.1:0"]
    result = await run_keyturn_async(args, tmp_path, settings)
    assert (result.returncode, result.stderr.splitlines(), result.stdout) == (2, [line], "")


async def test_keyturn_connect_salesforce_names_its_port_setting(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await run_keyturn_async(
            ["connect", "salesforce"],
            tmp_path,
            {**COMPLETE, "KEYTURN_SALESFORCE_LISTEN": f"127.0.0.1:{port}"},
        )
    assert result.returncode == 2, result
    assert result.stderr.splitlines() == [
        f"keyturn: cannot listen on 127.0.0.1:{port}: Address already in use; choose another "
        "HOST:PORT with --listen or KEYTURN_SALESFORCE_LISTEN (port 0: any free port)"
    ]


async def test_keyturn_connect_salesforce_help_shows_its_defaults(tmp_path: Path) -> None:
    result = await run_keyturn_async(["connect", "salesforce", "--help"], tmp_path, {})
    shown = " ".join(result.stdout.split())
    assert result.returncode == 0, result
    assert "(default: KEYTURN_SALESFORCE_LISTEN, else 127.0.0.1:8081)" in shown
    assert "(default: KEYTURN_SALESFORCE_PATH, else /salesforce/outbound)" in shown
    assert "(default: KEYTURN_ADMIN_LISTEN when set, else KEYTURN_LISTEN" in shown
