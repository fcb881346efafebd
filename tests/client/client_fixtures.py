"""Fixtures of the client tests: both licensing clients behind one async face, a proxy
that can cut the network, raw bearer tokens, fresh licenses.

A plugin that the test modules name in `pytest_plugins`: a second conftest.py
would take over the `conftest` module name that other test folders import from.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from client_harness import LicenseOf, Licensing, OpenLicensing, TcpProxy, open_licensing

from keyturn.client import RetryPolicy
from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.context import AppContext
from keyturn.server.app.tokens import create_token

from conftest import Tokens
from support.catalog import new_license
from support.rpc import PRODUCT_ID

# Quick retries keep the tests that cut the network short.
FAST_RETRY = RetryPolicy(attempts=5, initial=0.02, maximum=0.1)


@pytest.fixture
async def bearer(app: AppContext) -> dict[str, str]:
    """Raw bearer token secrets by scope, for the connector clients."""
    secrets = {}
    for scope in ("catalog", "fulfill", "read"):
        _, secret = await create_token(app, {scope}, f"client test {scope}")
        secrets[scope] = secret
    return secrets


@pytest.fixture
def license_of(
    catalog_stub: catalog_pb2_grpc.CatalogServiceStub,
    fulfillment_stub: fulfillment_pb2_grpc.FulfillmentServiceStub,
    tokens: Tokens,
) -> LicenseOf:
    async def make(seats: int, model: int = cat.LICENSE_MODEL_FLOATING) -> ful.Entitlement:
        return await new_license(
            catalog_stub, fulfillment_stub, tokens("catalog"), tokens("fulfill"), seats, model
        )

    return make


@pytest.fixture
async def proxy(server: KeyturnServer) -> AsyncIterator[TcpProxy]:
    running = TcpProxy(server.address)
    await running.start()
    yield running
    await running.close()


@pytest.fixture(params=["sync", "async"])
async def open_client(
    request: pytest.FixtureRequest, server: KeyturnServer
) -> AsyncIterator[OpenLicensing]:
    """Opens licensing clients of the parametrized kind; closes them after the test."""
    opened: list[Licensing] = []

    async def make(target: str | None = None, **options: Any) -> Licensing:
        options.setdefault("product_id", PRODUCT_ID)
        options.setdefault("retry", FAST_RETRY)
        client = await open_licensing(request.param, target or server.address, **options)
        opened.append(client)
        return client

    yield make
    for client in opened:
        await client.close()


@pytest.fixture
async def licensing(open_client: OpenLicensing) -> Licensing:
    return await open_client()
