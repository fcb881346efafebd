"""Invoices of newer Stripe API versions name prices by id only: the connector asks
Stripe's API for the lookup key. Stripe's servers are the one thing doubled here, by
a small HTTP server that answers GET /v1/prices/ID like Stripe does."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from connector_harness import STANDARD, deliver, event, invoice, invoice_line, stripe_id

from keyturn.client import FulfillmentClient
from keyturn.client.connectors.stripe_webhook import StripePriceLookup, StripeWebhookServer

from support.stand_in import JsonHandler, StandInServer

pytest_plugins = ["connector_fixtures"]

SECRET_KEY = "rk_test_prices_read_only"
PRICES = {"price_1QStandard": STANDARD, "price_1QNoKey": None}


class FakeStripePrices:
    """GET /v1/prices/{id}: the price JSON, or Stripe's 404 error for an unknown id."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.authorizations: set[str] = set()
        outer = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                outer.authorizations.add(self.headers.get("Authorization", ""))
                price_id = self.path.removeprefix("/v1/prices/").split("?")[0]
                if price_id in PRICES:
                    status, body = (
                        200,
                        {
                            "id": price_id,
                            "object": "price",
                            "lookup_key": PRICES[price_id],
                            "active": True,
                        },
                    )
                else:
                    status, body = (
                        404,
                        {
                            "error": {
                                "type": "invalid_request_error",
                                "code": "resource_missing",
                                "message": f"No such price: '{price_id}'",
                                "param": "id",
                            }
                        },
                    )
                self.send_json(status, body)

        self._server = StandInServer(Handler)
        self._server.start()

    @property
    def base(self) -> str:
        return self._server.url

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture
def stripe_api() -> Iterator[FakeStripePrices]:
    fake = FakeStripePrices()
    yield fake
    fake.stop()


def new_shape_invoice(price_id: str) -> dict[str, Any]:
    """An invoice.paid of API 2025-03-31 and later: the line names its price by id."""
    sub = stripe_id("sub")
    body = invoice("subscription_create", sub, [invoice_line(STANDARD, 3, sub)], new_shape=True)
    line = body["lines"]["data"][0]
    del line["price"], line["type"], line["subscription"]
    line["parent"] = {"type": "subscription_item_details", "subscription_item_details": {}}
    line["pricing"] = {"type": "price_details", "price_details": {"price": price_id}}
    return event("invoice.paid", body)


async def test_prices_named_by_id_are_looked_up_once_and_fulfilled(
    fulfil_client: FulfillmentClient,
    read_client: FulfillmentClient,
    stripe_catalog: object,
    stripe_api: FakeStripePrices,
) -> None:
    lookup = StripePriceLookup(SECRET_KEY, stripe_api.base)
    server = StripeWebhookServer(
        ("127.0.0.1", 0), "whsec_test_secret", fulfil_client.fulfill_order, prices=lookup
    )
    server.start()
    host, port = server.address
    url = f"http://{host}:{port}/stripe/webhook"
    try:
        first = await deliver(
            url, new_shape_invoice("price_1QStandard"), secret="whsec_test_secret"
        )
        second = await deliver(
            url, new_shape_invoice("price_1QStandard"), secret="whsec_test_secret"
        )
        no_key = await deliver(url, new_shape_invoice("price_1QNoKey"), secret="whsec_test_secret")
        unknown = await deliver(url, new_shape_invoice("price_1QGone"), secret="whsec_test_secret")
        stripe_api.stop()  # Stripe's API down: Stripe is asked to deliver again later
        down = await deliver(url, new_shape_invoice("price_1QOther"), secret="whsec_test_secret")
    finally:
        await asyncio.to_thread(server.stop)
    assert (first.status, second.status) == (200, 200), (first, second)
    for answer in (first, second):
        (entitlement_id,) = answer.body["entitlements"]
        entitlement = await asyncio.to_thread(read_client.get_entitlement, entitlement_id)
        assert (entitlement.seats, entitlement.edition_id) == (3, "standard")
    # Asked once for the price; the answer is remembered.
    assert stripe_api.requests.count("/v1/prices/price_1QStandard") == 1
    assert stripe_api.authorizations == {f"Bearer {SECRET_KEY}"}
    # A price without lookup key, and one Stripe does not know: refused, visible, retried.
    assert no_key.status == 422, no_key
    assert "price_1QNoKey has no lookup_key" in no_key.body["error"]
    assert unknown.status == 422, unknown
    assert down.status == 503, down
