"""A token's last use, through a real server: written when the token authenticates a
call, at most once a minute, off the call's path, and never for a refused token.

Time is moved with the server's clock (`SystemClock.offset`), not waited for; each
check of the stored value first waits until the uses noted so far are written
(`TokenUseRecorder.settle`), so that a write that would happen has happened.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import grpc
import pytest
from sqlalchemy import update

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.context import AppContext
from keyturn.server.app.tokens import create_token, list_tokens, revoke_token
from keyturn.server.bootstrap import build_context
from keyturn.server.clock import SystemClock
from keyturn.server.domain.token_use import RECORD_INTERVAL
from keyturn.server.store.tables import api_tokens
from keyturn.server.store.unit_of_work import Store

from conftest import settings_for
from support.rpc import failure_of


async def last_used(server: KeyturnServer, token_id: str) -> datetime | None:
    """The stored last use of `token_id`, once the uses noted so far are written."""
    await server.authenticator.uses.settle()
    [token] = [
        t for t in await list_tokens(server.ctx, include_revoked=True) if t.token_id == token_id
    ]
    return token.last_used_time


async def list_products(server: KeyturnServer, secret: str) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        await catalog_pb2_grpc.CatalogServiceStub(channel).ListProducts(
            cat.ListProductsRequest(),
            metadata=(("authorization", f"Bearer {secret}"),),
            timeout=30,
        )


def clock_of(app: AppContext) -> SystemClock:
    assert isinstance(app.clock, SystemClock)
    return app.clock


async def test_a_use_is_written_once_an_interval(app: AppContext, server: KeyturnServer) -> None:
    clock = clock_of(app)
    token, secret = await create_token(app, {"catalog"}, "shop")
    assert await last_used(server, token.token_id) is None, "never used"

    before = clock.now()
    await list_products(server, secret)
    first = await last_used(server, token.token_id)
    assert first is not None
    assert before <= first <= clock.now()

    clock.offset += RECORD_INTERVAL - timedelta(seconds=1)
    await list_products(server, secret)
    assert await last_used(server, token.token_id) == first, "not written again so soon"

    clock.offset += timedelta(seconds=2)
    before = clock.now()
    await list_products(server, secret)
    again = await last_used(server, token.token_id)
    assert again is not None
    assert before <= again <= clock.now()
    assert again - first > RECORD_INTERVAL


async def test_a_revoked_token_is_refused_and_not_recorded(
    app: AppContext, server: KeyturnServer
) -> None:
    token, secret = await create_token(app, {"catalog"}, "gone")
    assert await revoke_token(app, token.token_id) == token.token_id
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await list_products(server, secret)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert failure_of(refused.value).reason == "INVALID_TOKEN"
    assert await last_used(server, token.token_id) is None


@pytest.fixture
async def patient_server(database_url: str) -> AsyncIterator[KeyturnServer]:
    """A server whose writes wait up to 30 s for a lock (SQLite's file, a PostgreSQL row),
    so that one held for a moment by the test is waited out, not given up."""
    settings = settings_for(
        database_url, database_statement_timeout_seconds=30.0, database_lock_timeout_seconds=30.0
    )
    ctx = await build_context(settings)
    running = KeyturnServer(ctx, "127.0.0.1:0")
    await running.start()
    yield running
    await running.stop(grace=1.0)


async def test_a_call_does_not_wait_for_its_use_to_be_written(
    database_url: str, patient_server: KeyturnServer
) -> None:
    server = patient_server
    token, secret = await create_token(server.ctx, {"catalog"}, "busy")
    other = Store.from_url(database_url)
    try:
        # Another writer holds the token's row (on SQLite the whole file) while the call
        # is made: the call is answered, its use written once the writer is done.
        async with other.write() as tx:
            await tx.connection.execute(
                update(api_tokens)
                .where(api_tokens.c.token_id == token.token_id)
                .values(description="busy")
            )
            before = server.ctx.clock.now()
            await list_products(server, secret)
            async with other.read() as reading:
                [stored] = await reading.tokens.list_all()
            assert stored.last_used_time is None, "not written while the row is held"
    finally:
        await other.close()
    used = await last_used(server, token.token_id)
    assert used is not None
    assert before <= used <= server.ctx.clock.now()
