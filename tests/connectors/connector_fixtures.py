"""Fixtures of the connector tests: the shipped catalog on the server under test,
FulfillmentClients with real bearer secrets, and a StripeWebhookServer on loopback.

A plugin that the test modules name in `pytest_plugins`: a second conftest.py
would take over the `conftest` module name that other test folders import from.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from connector_harness import SECRET

from keyturn.client import FulfillmentClient
from keyturn.client.connectors.stripe_webhook import StripeWebhookServer
from keyturn.fulfillment.v1 import catalog_pb2_grpc
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.context import AppContext
from keyturn.server.app.tokens import create_token
from keyturn.server.catalog_file import CatalogFile

from conftest import Tokens
from support.catalog import put_shipped_catalog


@pytest.fixture
async def stripe_catalog(
    catalog_stub: catalog_pb2_grpc.CatalogServiceStub, tokens: Tokens
) -> CatalogFile:
    """examples/catalog.yaml as shipped: the Stripe lookup keys and their lifecycle SKUs."""
    return await put_shipped_catalog(catalog_stub, tokens("catalog"))


@pytest.fixture
async def connector_secrets(app: AppContext) -> dict[str, str]:
    """Raw bearer secrets by scope, as a connector is configured with them."""
    secrets = {}
    for scope in ("catalog", "fulfill", "read"):
        _, secret = await create_token(app, {scope}, f"connector test {scope}")
        secrets[scope] = secret
    return secrets


@pytest.fixture
def fulfil_client(
    server: KeyturnServer, connector_secrets: dict[str, str]
) -> Iterator[FulfillmentClient]:
    """Sync: call it in a worker thread (the server under test runs on the event loop)."""
    with FulfillmentClient(server.address, connector_secrets["fulfill"]) as client:
        yield client


@pytest.fixture
def read_client(
    server: KeyturnServer, connector_secrets: dict[str, str]
) -> Iterator[FulfillmentClient]:
    with FulfillmentClient(server.address, connector_secrets["read"]) as client:
        yield client


@pytest.fixture
async def webhook(fulfil_client: FulfillmentClient) -> AsyncIterator[str]:
    """StripeWebhookServer on a free loopback port, fulfilling through the real server."""
    running = StripeWebhookServer(("127.0.0.1", 0), SECRET, fulfil_client.fulfill_order)
    running.start()
    host, port = running.address
    yield f"http://{host}:{port}/stripe/webhook"
    await asyncio.to_thread(running.stop)
