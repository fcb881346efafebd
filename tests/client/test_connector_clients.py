"""CatalogClient and FulfillmentClient against a real server, with real bearer tokens.

Both are sync clients, so every call runs in a worker thread: the server under
test runs on this event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import grpc
import pytest
from client_harness import FAST_RECONNECT, CallLog, SyncCounter, TcpProxy

from keyturn.client import (
    AuthenticationError,
    CatalogClient,
    EtagMismatchError,
    FulfillmentClient,
    InvalidRequestError,
    NotFoundError,
    OrderConflictError,
    PermissionDeniedError,
    RetryPolicy,
)
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.server.api.server import KeyturnServer

from support.rpc import PRODUCT_ID, create_sku, order, product

pytest_plugins = ["client_fixtures"]

run = asyncio.to_thread


@pytest.fixture
async def catalog(server: KeyturnServer, bearer: dict[str, str]) -> CatalogClient:
    client = CatalogClient(server.address, bearer["catalog"])
    await run(client.put_product, product())
    return client


async def test_catalog_client_puts_lists_and_deletes_skus(catalog: CatalogClient) -> None:
    assert [p.product_id for p in await run(lambda: list(catalog.list_products()))] == [PRODUCT_ID]
    stored = [await run(catalog.put_sku, create_sku(f"SKU-{i}")) for i in range(3)]
    assert all(s.etag for s in stored)
    assert (await run(catalog.get_sku, "SKU-1")).operations == stored[1].operations
    listed = await run(lambda: [s.sku_id for s in catalog.list_skus(page_size=2)])
    assert listed == ["SKU-0", "SKU-1", "SKU-2"]  # two pages
    assert await run(lambda: list(catalog.list_skus("other-product"))) == []
    replaced = await run(catalog.put_sku, stored[0])
    with pytest.raises(EtagMismatchError) as stale:
        await run(catalog.delete_sku, "SKU-0", stored[0].etag)
    assert (stale.value.code, stale.value.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    await run(catalog.delete_sku, "SKU-0", replaced.etag)
    with pytest.raises(NotFoundError) as gone:
        await run(catalog.get_sku, "SKU-0")
    assert gone.value.reason == "SKU_NOT_FOUND"
    assert gone.value.metadata == {"sku_id": "SKU-0"}


async def test_fulfillment_client_orders_entitlements_and_events(
    catalog: CatalogClient, server: KeyturnServer, bearer: dict[str, str]
) -> None:
    await run(catalog.put_sku, create_sku("SUB-2", seats=2))
    fulfill = FulfillmentClient(server.address, bearer["fulfill"])
    read = FulfillmentClient(server.address, bearer["read"])
    first = await run(fulfill.fulfill_order, order("o-1", "SUB-2"))
    assert not first.replayed
    assert first.entitlements[0].license_key
    replay = await run(fulfill.fulfill_order, order("o-1", "SUB-2"))
    assert replay.replayed
    assert replay.entitlements[0].entitlement_id == first.entitlements[0].entitlement_id
    with pytest.raises(OrderConflictError) as conflict:
        await run(fulfill.fulfill_order, order("o-1", "SUB-2", quantity=2))
    assert conflict.value.code is grpc.StatusCode.ALREADY_EXISTS
    assert conflict.value.metadata == {"source": "test", "order_id": "o-1"}
    for n in (2, 3):
        await run(fulfill.fulfill_order, order(f"o-{n}", "SUB-2"))

    stored = await run(read.get_order, "test", "o-1")
    assert [r.operations for r in stored.results] == [["create"]]
    entitlement_id = first.entitlements[0].entitlement_id
    fetched = await run(read.get_entitlement, entitlement_id)
    assert (fetched.seats, fetched.license_key) == (2, "")

    every = await run(lambda: [e.entitlement_id for e in read.list_entitlements(page_size=1)])
    assert len(every) == 3
    assert every[0] == entitlement_id
    active = await run(
        lambda: list(
            read.list_entitlements(
                product_id=PRODUCT_ID, status=ful.ENTITLEMENT_STATUS_ACTIVE, page_size=2
            )
        )
    )
    assert [e.entitlement_id for e in active] == every
    assert await run(lambda: list(read.list_entitlements(customer_id="nobody"))) == []
    with pytest.raises(TypeError, match="colour"):
        read.list_entitlements(colour="red")

    history = await run(lambda: list(read.list_entitlement_events(entitlement_id)))
    assert [e.type for e in history] == [ful.ENTITLEMENT_EVENT_TYPE_CREATED]

    def watch(after: int, count: int) -> list[ful.EntitlementEvent]:
        with contextlib.closing(read.watch_events(after)) as stream:
            return list(itertools.islice(stream, count))

    watched = await run(watch, 0, 3)
    assert [e.entitlement_id for e in watched] == every
    assert watched[0].sequence < watched[1].sequence < watched[2].sequence
    resumed = await run(watch, watched[1].sequence, 1)
    assert [e.sequence for e in resumed] == [watched[2].sequence]
    for client in (fulfill, read, catalog):
        client.close()


async def test_missing_or_wrong_tokens_and_bad_input_get_typed_errors(
    server: KeyturnServer, bearer: dict[str, str]
) -> None:
    with FulfillmentClient(server.address, "kt_not-a-real-token") as stranger:
        with pytest.raises(AuthenticationError) as unknown:
            await run(stranger.get_entitlement, "ent_01")
        assert (unknown.value.code, unknown.value.reason) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_TOKEN",
        )
    with CatalogClient(server.address, bearer["read"]) as wrong_scope:
        with pytest.raises(PermissionDeniedError) as denied:
            await run(wrong_scope.put_product, product())
        assert denied.value.reason == "INSUFFICIENT_SCOPE"
        assert denied.value.metadata == {"required_scope": "catalog"}
    with FulfillmentClient(server.address, bearer["read"]) as reader:
        with pytest.raises(InvalidRequestError) as bad:
            await run(lambda: list(reader.list_entitlements(page_size=-1)))
        assert "page_size" in [f for f, _ in bad.value.field_violations]
    with pytest.raises(ValueError, match="bearer token"):
        FulfillmentClient(server.address, "")


async def test_fulfill_order_is_retried_through_an_outage(
    catalog: CatalogClient, proxy: TcpProxy, bearer: dict[str, str]
) -> None:
    await run(catalog.put_sku, create_sku("SUB-1"))
    calls = CallLog()
    channel = grpc.intercept_channel(
        grpc.insecure_channel(proxy.address, options=FAST_RECONNECT), SyncCounter(calls)
    )
    fulfill = FulfillmentClient(
        proxy.address,
        bearer["fulfill"],
        channel=channel,
        retry=RetryPolicy(attempts=20, initial=0.05, maximum=0.25),
    )
    proxy.pause()
    calls.after.append(lambda name, failed: proxy.resume())  # back after the first failure
    response = await run(fulfill.fulfill_order, order("o-outage", "SUB-1"))
    assert not response.replayed
    assert calls.names[0] == "FulfillOrder"
    assert calls.count("FulfillOrder") >= 2
    await run(channel.close)
