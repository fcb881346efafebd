"""API tokens that end, through a real server: a token works until its expiry and is
refused after it with TOKEN_EXPIRED (its id and end in the metadata), while unknown and
revoked tokens stay INVALID_TOKEN; new tokens last KEYTURN_API_TOKEN_LIFETIME_DAYS unless
told otherwise, and a token of a version before expiry (NULL) never ends.

Time is moved with the server's clock (`SystemClock.offset`), not waited for.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import grpc
import pytest
from sqlalchemy import update

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.context import AppContext
from keyturn.server.app.tokens import MAX_LIFETIME, create_token, list_tokens, revoke_token
from keyturn.server.bootstrap import build_context
from keyturn.server.clock import SystemClock
from keyturn.server.domain.errors import DomainError, Reason
from keyturn.server.store.tables import api_tokens

from conftest import settings_for
from support.rpc import RpcFailure, failure_of

DAY = timedelta(days=1)
SECOND = timedelta(seconds=1)


async def list_products(server: KeyturnServer, secret: str) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        await catalog_pb2_grpc.CatalogServiceStub(channel).ListProducts(
            cat.ListProductsRequest(),
            metadata=(("authorization", f"Bearer {secret}"),),
            timeout=30,
        )


async def refusal(server: KeyturnServer, secret: str) -> RpcFailure:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await list_products(server, secret)
    return failure_of(refused.value)


def clock_of(app: AppContext) -> SystemClock:
    assert isinstance(app.clock, SystemClock)
    return app.clock


async def test_a_token_works_until_its_end_and_is_then_refused_as_expired(
    app: AppContext, server: KeyturnServer
) -> None:
    clock = clock_of(app)
    token, secret = await create_token(app, {"catalog"}, "shop", lifetime=2 * DAY)
    assert token.expire_time == token.create_time + 2 * DAY
    revoked, revoked_secret = await create_token(app, {"catalog"}, "gone", lifetime=DAY)
    assert await revoke_token(app, revoked.token_id) == revoked.token_id

    clock.offset += 2 * DAY - SECOND
    await list_products(server, secret)  # a second before its end

    clock.offset += SECOND
    failure = await refusal(server, secret)
    assert (failure.code, failure.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED")
    assert failure.metadata == {
        "token_id": token.token_id,
        "expire_time": token.expire_time.isoformat(),
    }
    assert datetime.fromisoformat(failure.metadata["expire_time"]) == token.expire_time
    assert "keyturn tokens create" in failure.message

    # Revoked beats expired, and a secret nobody issued is INVALID_TOKEN whenever.
    assert (await refusal(server, revoked_secret)).reason == "INVALID_TOKEN"
    assert (await refusal(server, "kt_" + "x" * 43)).reason == "INVALID_TOKEN"


async def test_new_tokens_last_the_setting_unless_told_otherwise(app: AppContext) -> None:
    assert app.api_token_lifetime == timedelta(days=365), "the documented default"
    default, _ = await create_token(app, {"read"})
    assert default.expire_time == default.create_time + timedelta(days=365)
    never, _ = await create_token(app, {"read"}, lifetime=None)
    assert never.expire_time is None
    listed = {t.token_id: t.expire_time for t in await list_tokens(app, include_revoked=False)}
    assert listed == {default.token_id: default.expire_time, never.token_id: None}

    for wrong in (timedelta(0), -DAY, MAX_LIFETIME + DAY):
        with pytest.raises(DomainError) as refused:
            await create_token(app, {"read"}, lifetime=wrong)
        assert refused.value.reason is Reason.INVALID_REQUEST
        assert refused.value.metadata == {"field": "lifetime"}


async def test_a_lifetime_of_zero_days_makes_tokens_that_never_end(database_url: str) -> None:
    ctx = await build_context(settings_for(database_url, api_token_lifetime_days=0))
    try:
        assert ctx.api_token_lifetime is None
        token, _ = await create_token(ctx, {"read"})
        assert token.expire_time is None
        week, _ = await create_token(ctx, {"read"}, lifetime=7 * DAY)
        assert week.expire_time == week.create_time + 7 * DAY
    finally:
        await ctx.close()


async def test_a_token_without_an_end_works_whenever(
    app: AppContext, server: KeyturnServer
) -> None:
    """As every token made before migration 0008 (and by an older server) is stored."""
    token, secret = await create_token(app, {"catalog"}, "old connector")
    async with app.store.write() as tx:
        await tx.connection.execute(
            update(api_tokens)
            .where(api_tokens.c.token_id == token.token_id)
            .values(expire_time=None)
        )
    clock_of(app).offset += timedelta(days=3650)
    await list_products(server, secret)
