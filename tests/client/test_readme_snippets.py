"""The Python snippets of clients/python/README.md, run as they stand against a real
server with the shipped catalog: a snippet that stops working fails here.

A snippet leaves some names to the reader (`license_key`, `run_app`, `save`...); each
test supplies them, runs the snippet's text unchanged but for the documented
address, and checks what the snippet claims to do (a seat taken and given back, a
lease verified with no server, an order fulfilled and its event seen).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import pytest

from keyturn.client import LicensingClient
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.context import AppContext
from keyturn.server.app.tokens import create_token

from conftest import Tokens
from support.catalog import put_shipped_catalog
from support.doc_blocks import Block, block, executed
from support.smtp import free_port

pytest_plugins = ["client_fixtures"]

README = "clients/python/README.md"
DOCUMENTED_TARGET = "127.0.0.1:50051"
PRODUCT = "acme-cad"


class Enough(Exception):
    """Raised by a supplied callback to end a snippet's endless loop."""


def run(snippet: Block, names: dict[str, Any], target: str | None = None) -> dict[str, Any]:
    """Execute `snippet` with `names` defined (its documented address replaced by
    `target` when given); the names it defined afterwards."""
    return executed(snippet, names, {DOCUMENTED_TARGET: target} if target else None)


async def run_async(snippet: Block, names: dict[str, Any]) -> dict[str, Any]:
    """`run` for a snippet with top-level `await`, on this event loop."""
    code = compile(snippet.text, snippet.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, names)
    if inspect.iscoroutine(result):
        await result
    return names


@pytest.fixture
async def license_key(
    server: KeyturnServer,
    catalog_stub: catalog_pb2_grpc.CatalogServiceStub,
    fulfillment_stub: fulfillment_pb2_grpc.FulfillmentServiceStub,
    tokens: Tokens,
) -> str:
    """A 2-seat license of the shipped catalog's CAD-STD-1Y."""
    await put_shipped_catalog(catalog_stub, tokens("catalog"))
    response = await fulfillment_stub.FulfillOrder(
        ful.FulfillOrderRequest(
            source="readme",
            order_id="o-1",
            customer=ful.Customer(customer_id="c-1"),
            lines=[ful.OrderLine(sku_id="CAD-STD-1Y", quantity=2)],
        ),
        metadata=tokens("fulfill"),
    )
    return response.entitlements[0].license_key


@pytest.fixture
def seats_in_use(
    licensing_stub: licensing_pb2_grpc.LicensingServiceStub, license_key: str
) -> Callable[[], Any]:
    async def count() -> int:
        check = await licensing_stub.CheckLicense(
            lic.CheckLicenseRequest(license_key=license_key, product_id=PRODUCT)
        )
        return check.entitlement.seats_in_use

    return count


async def test_activate_in_three_lines_takes_a_seat_for_the_block_and_gives_it_back(
    server: KeyturnServer, license_key: str, seats_in_use: Callable[[], Any]
) -> None:
    ran: list[tuple[str, dict[str, int | None]]] = []
    loop = asyncio.get_running_loop()

    def run_app(edition: str, features: dict[str, int | None]) -> None:
        in_use = asyncio.run_coroutine_threadsafe(seats_in_use(), loop).result(30)
        assert in_use == 1
        ran.append((edition, features))

    snippet = block(README, "Activate in three lines")
    names = {"license_key": license_key, "run_app": run_app}
    await asyncio.to_thread(run, snippet, names, server.address)
    names["client"].close()
    assert ran == [("standard", {"export-pdf": None, "projects": 10})]
    assert await seats_in_use() == 0


async def test_the_heartbeat_snippet_renews_and_releases_without_calling_on_lost(
    server: KeyturnServer, license_key: str, seats_in_use: Callable[[], Any]
) -> None:
    banners: list[str] = []
    logged: list[str] = []
    first_tokens: list[str] = []
    snippet = block(README, "Heartbeat and `on_lost`")
    with LicensingClient(server.address, PRODUCT) as client:

        class Recording:
            """The client, noting the token each activation handed out."""

            def activate(self, *args: Any, **options: Any) -> Any:
                lease = client.activate(*args, **options)
                first_tokens.append(lease.token)
                return lease

        names = {
            "client": Recording(),
            "key": license_key,
            "show_banner": banners.append,
            "log": logged.append,
        }
        await asyncio.to_thread(run, snippet, names)
    lease = names["lease"]
    assert lease.released
    assert len(first_tokens) == 1
    assert lease.token != first_tokens[0]  # renewed (by the heartbeat it woke, or by hand)
    assert set(logged) <= {"renewed"}  # on_renewed fires for the heartbeat's renewals only
    assert banners == []
    assert lease.lost is None
    assert await seats_in_use() == 0


async def test_offline_verification_needs_no_server_once_the_keys_are_saved(
    server: KeyturnServer, license_key: str
) -> None:
    saved: dict[str, Any] = {}

    def save(token: str, jwks: dict[str, Any]) -> None:
        saved.update(saved_token=token, saved_jwks=jwks)

    snippet = block(README, "Offline verification")
    with LicensingClient(server.address, PRODUCT) as online:
        lease = await asyncio.to_thread(online.activate, license_key, heartbeat=False)
        nothing_there = f"127.0.0.1:{free_port()}"  # a server call would fail
        names: dict[str, Any] = {"lease": lease, "client": online, "target": nothing_there}
        names["save"] = lambda token, jwks: (save(token, jwks), names.update(saved))
        await asyncio.to_thread(run, snippet, names)
        await asyncio.to_thread(lease.release)
    assert names["client"] is not online
    assert names["claims"]["sub"] == lease.activation_id
    assert names["claims"]["aud"] == PRODUCT
    names["client"].close()


async def test_the_asyncio_snippet_holds_a_seat_while_the_app_runs(
    server: KeyturnServer, license_key: str, seats_in_use: Callable[[], Any]
) -> None:
    ran: list[int] = []

    async def run_app(lease: Any) -> None:
        ran.append(await seats_in_use())
        assert lease.entitlement.seats == 2

    async def on_lost(lease: Any, error: Exception) -> None:
        raise AssertionError(f"lost: {error}")

    snippet = block(README, "asyncio")
    names = {"target": server.address, "key": license_key, "run_app": run_app, "on_lost": on_lost}
    await run_async(snippet, names)
    assert ran == [1]
    assert await seats_in_use() == 0


async def test_the_connector_snippet_fulfils_lists_and_follows_the_order(
    server: KeyturnServer,
    app: AppContext,
    catalog_stub: catalog_pb2_grpc.CatalogServiceStub,
    tokens: Tokens,
) -> None:
    await put_shipped_catalog(catalog_stub, tokens("catalog"))
    _, token = await create_token(app, {"fulfill", "read"}, "readme connector")
    seen: list[Any] = []

    def sync_to_crm(event: Any) -> None:
        seen.append(event)
        raise Enough  # the stream follows new changes forever: one is enough here

    snippet = block(README, "Order connectors and catalog tools")
    names = {"target": server.address, "token": token, "last_seen": 0, "sync_to_crm": sync_to_crm}
    with pytest.raises(Enough):
        await asyncio.to_thread(run, snippet, names)
    [created] = names["response"].entitlements
    assert (created.seats, created.customer.customer_id) == (3, "c-7")
    assert names["entitlement"].entitlement_id == created.entitlement_id  # the listed one
    assert [event.entitlement_id for event in seen] == [created.entitlement_id]
