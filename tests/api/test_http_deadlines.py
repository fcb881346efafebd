"""A caller's deadline over HTTP/JSON (`connect-timeout-ms`) ends its call as a gRPC
deadline does: the call stops waiting, its transaction is rolled back, and it answers
DEADLINE_EXCEEDED (HTTP 504) at the deadline, not at the database's lock timeout.
PostgreSQL only: another session holds the entitlement's row lock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import grpc
import httpx
import pytest

from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.context import AppContext
from keyturn.server.app.tokens import create_token
from keyturn.server.bootstrap import build_context

from conftest import settings_for
from support.catalog import new_license
from support.http_json import HttpCallError, post_json
from support.rpc import PRODUCT_ID

ACTIVATE = "/keyturn.licensing.v1.LicensingService/ActivateSeat"
CHECK = "/keyturn.licensing.v1.LicensingService/CheckLicense"
DEADLINE_MS = 300


@pytest.fixture
async def pg_app(postgres_url: str) -> AsyncIterator[AppContext]:
    ctx = await build_context(settings_for(postgres_url))
    yield ctx
    await ctx.store.close()


async def test_an_activation_past_its_deadline_is_504_and_takes_no_seat(
    pg_app: AppContext, postgres_url: str
) -> None:
    server = KeyturnServer(pg_app, "127.0.0.1:0", http_listen="127.0.0.1:0")
    await server.start()
    holder = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        _, secret = await create_token(pg_app, {"catalog", "fulfill"}, "set-up", lifetime=None)
        auth = (("authorization", f"Bearer {secret}"),)
        async with grpc.aio.insecure_channel(server.address) as channel:
            entitlement = await new_license(
                catalog_pb2_grpc.CatalogServiceStub(channel),
                fulfillment_pb2_grpc.FulfillmentServiceStub(channel),
                auth, auth, seats=2,
            )  # fmt: skip
        body = {
            "licenseKey": entitlement.license_key,
            "productId": PRODUCT_ID,
            "fingerprint": "device-deadline",
        }
        async with httpx.AsyncClient(base_url=f"http://{server.http_address}", timeout=30) as http:
            lock = holder.transaction()
            await lock.start()
            await holder.execute(
                "SELECT 1 FROM entitlements WHERE entitlement_id = $1 FOR UPDATE",
                entitlement.entitlement_id,
            )
            with pytest.raises(HttpCallError) as caught:
                await post_json(
                    http, ACTIVATE, body, headers={"connect-timeout-ms": str(DEADLINE_MS)}
                )
            await lock.rollback()
            checked = await post_json(
                http, CHECK, {"licenseKey": entitlement.license_key, "productId": PRODUCT_ID}
            )
    finally:
        await holder.close()
        await server.stop(grace=1.0)
    failure = caught.value.failure
    assert (failure.status, failure.code) == (504, grpc.StatusCode.DEADLINE_EXCEEDED)
    # Ended by its deadline: at the lock timeout (seconds) it would be 503 DATABASE_BUSY.
    assert checked["entitlement"].get("seatsInUse", 0) == 0, "the activation was rolled back"
