"""Abuse limits on a real server, over gRPC and HTTP/JSON, on both backends.

Peers are told apart by the peer header (`x-forwarded-for`, as behind a proxy), so one
test process can be many callers; one test checks that without the setting the header
is ignored. The limits are small here so that a few calls reach them; the load test
with the defaults' shape and two workers is tests/e2e/test_abuse_limits_workers.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import httpx
import pytest
from sqlalchemy import select

from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.api.abuse_limits import AbuseLimits, rules_of
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.context import AppContext
from keyturn.server.app.failed_credentials import FailedCredentials
from keyturn.server.app.tokens import create_token
from keyturn.server.clock import SystemClock
from keyturn.server.store.tables import credential_failures

from conftest import Tokens
from support.catalog import new_license
from support.http_json import HttpCallError, post_json
from support.rpc import PRODUCT_ID, RpcFailure, failure_of

HEADER = "x-forwarded-for"
BUDGET = 5  # wrong credentials per peer and window
WINDOW = timedelta(minutes=10)
ACTIVATE = "/keyturn.licensing.v1.LicensingService/ActivateSeat"


def limits_for(app: AppContext, **rules: str) -> AbuseLimits:
    """Only the given rules, plus the failure budget; peers named by HEADER."""
    return AbuseLimits(
        per_peer=rules_of(rules.get("per_peer", "off")),
        per_credential=rules_of(rules.get("per_credential", "off")),
        per_token=rules_of(rules.get("per_token", "off")),
        failed=FailedCredentials(app.store, app.clock, BUDGET, WINDOW),
        peer_header=rules.get("peer_header", HEADER),
    )


@pytest.fixture
async def started(app: AppContext) -> AsyncIterator[tuple[KeyturnServer, AbuseLimits]]:
    """A server whose limits each test sets through `limits` before calling."""
    holder = limits_for(app)
    running = KeyturnServer(app, "127.0.0.1:0", http_listen="127.0.0.1:0", abuse=holder)
    await running.start()
    yield running, holder
    await running.stop(grace=1.0)


class Caller:
    """Calls of the licensing and fulfillment services, as one peer or another."""

    def __init__(self, server: KeyturnServer, channel: grpc.aio.Channel) -> None:
        self.server = server
        self.licensing = licensing_pb2_grpc.LicensingServiceStub(channel)
        self.fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub(channel)
        self.catalog = catalog_pb2_grpc.CatalogServiceStub(channel)

    def limit(self, limits: AbuseLimits) -> None:
        self.server.guard.abuse = limits

    async def activate(
        self, key: str, peer: str, fingerprint: str = "fingerprint-0"
    ) -> lic.ActivateSeatResponse:
        response: lic.ActivateSeatResponse = await self.licensing.ActivateSeat(
            lic.ActivateSeatRequest(
                license_key=key, product_id=PRODUCT_ID, fingerprint=fingerprint
            ),
            metadata=((HEADER, peer),),
        )
        return response

    async def refused(self, key: str, peer: str, fingerprint: str = "fingerprint-0") -> RpcFailure:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self.activate(key, peer, fingerprint)
        return failure_of(caught.value)


@pytest.fixture
async def caller(
    started: tuple[KeyturnServer, AbuseLimits],
) -> AsyncIterator[Caller]:
    server, _ = started
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield Caller(server, channel)


async def license_key(caller: Caller, tokens: Tokens, seats: int = 50) -> str:
    entitlement = await new_license(
        caller.catalog, caller.fulfillment, tokens("catalog"), tokens("fulfill"), seats
    )
    key: str = entitlement.license_key
    return key


def assert_rate_limited(failure: RpcFailure, limit: str) -> None:
    assert (failure.code, failure.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert failure.metadata["limit"] == limit
    assert failure.retry_delay_seconds is not None
    assert failure.retry_delay_seconds >= 1
    assert failure.metadata["retry_after_seconds"] == str(int(failure.retry_delay_seconds))


async def stored_failures(app: AppContext, peer: str) -> int:
    async with app.store.read() as tx:
        rows = await tx.connection.execute(
            select(credential_failures.c.failures).where(credential_failures.c.peer == peer)
        )
        return sum(rows.scalars())


async def test_wrong_keys_past_the_budget_block_the_peer_not_others(
    app: AppContext, caller: Caller, tokens: Tokens
) -> None:
    key = await license_key(caller, tokens)
    for attempt in range(BUDGET):
        failure = await caller.refused(f"KT-WRONG-{attempt}", "203.0.113.9")
        assert failure.reason == "INVALID_LICENSE_KEY"
    assert await stored_failures(app, "203.0.113.9") == BUDGET
    blocked = await caller.refused("KT-WRONG-NEXT", "203.0.113.9")
    assert_rate_limited(blocked, "failed_credentials")
    assert blocked.retry_delay_seconds is not None
    assert blocked.retry_delay_seconds <= WINDOW.total_seconds()
    # Even a valid key is refused from the blocked peer, before it is looked at...
    assert_rate_limited(await caller.refused(key, "203.0.113.9"), "failed_credentials")
    assert await stored_failures(app, "203.0.113.9") == BUDGET, "refusals are not failures"
    # ...while another peer activates with it.
    activated = await caller.activate(key, "198.51.100.20")
    assert activated.lease.token
    # When the window ends, the peer may try again.
    clock = app.clock
    assert isinstance(clock, SystemClock)
    clock.offset += timedelta(seconds=blocked.retry_delay_seconds)
    assert (await caller.activate(key, "203.0.113.9", "fingerprint-2")).lease.token


async def test_the_failure_budget_is_shared_through_the_database(
    app: AppContext, caller: Caller, tokens: Tokens
) -> None:
    """A second process (its own FailedCredentials over the same database) answers the
    peer's first failure there RATE_LIMITED, and refuses it from then on."""
    await license_key(caller, tokens)
    for attempt in range(BUDGET):
        await caller.refused(f"KT-WRONG-{attempt}", "203.0.113.7")
    other = FailedCredentials(app.store, app.clock, BUDGET, WINDOW)
    assert other.refusal("203.0.113.7") is None, "it has not heard of the peer yet"
    instead = await other.record("203.0.113.7")
    assert instead is not None
    assert instead.reason.value == "RATE_LIMITED"
    refusal = other.refusal("203.0.113.7")
    assert refusal is not None
    assert refusal.metadata["limit"] == "failed_credentials"


async def test_per_peer_limit(caller: Caller, tokens: Tokens, app: AppContext) -> None:
    key = await license_key(caller, tokens)
    caller.limit(limits_for(app, per_peer="3/minute"))
    for device in range(3):
        await caller.activate(key, "192.0.2.1", f"fingerprint-{device}")
    assert_rate_limited(await caller.refused(key, "192.0.2.1", "fingerprint-3"), "peer")
    await caller.activate(key, "192.0.2.2", "fingerprint-3")  # another peer is not limited by it


async def test_per_credential_limit(caller: Caller, tokens: Tokens, app: AppContext) -> None:
    key, other_key = await license_key(caller, tokens, 40), await license_key(caller, tokens, 41)
    caller.limit(limits_for(app, per_credential="2/minute"))
    await caller.activate(key, "192.0.2.10", "fingerprint-a")
    await caller.activate(key, "192.0.2.11", "fingerprint-b")
    assert_rate_limited(await caller.refused(key, "192.0.2.12", "fingerprint-c"), "credential")
    await caller.activate(other_key, "192.0.2.12", "fingerprint-c")


async def test_per_token_limit(caller: Caller, tokens: Tokens, app: AppContext) -> None:
    entitlement_id = (
        await new_license(
            caller.catalog, caller.fulfillment, tokens("catalog"), tokens("fulfill"), 2
        )
    ).entitlement_id
    caller.limit(limits_for(app, per_token="2/minute"))
    request = ful.GetEntitlementRequest(entitlement_id=entitlement_id)
    for _ in range(2):
        await caller.fulfillment.GetEntitlement(request, metadata=tokens("read"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await caller.fulfillment.GetEntitlement(request, metadata=tokens("read"))
    assert_rate_limited(failure_of(caught.value), "token")
    _, other = await create_token(app, {"read"}, "another reader", lifetime=None)
    await caller.fulfillment.GetEntitlement(  # another token has its own budget
        request, metadata=(("authorization", f"Bearer {other}"),)
    )


async def test_without_the_peer_header_setting_the_header_is_ignored(
    caller: Caller, tokens: Tokens, app: AppContext
) -> None:
    """A caller cannot pick its own budget by writing addresses into a header."""
    key = await license_key(caller, tokens)
    caller.limit(limits_for(app, per_peer="2/minute", peer_header=""))
    await caller.activate(key, "192.0.2.30", "fingerprint-a")
    await caller.activate(key, "192.0.2.31", "fingerprint-b")
    assert_rate_limited(await caller.refused(key, "192.0.2.32", "fingerprint-c"), "peer")


async def test_over_http_429_with_retry_after_and_the_same_reason(
    started: tuple[KeyturnServer, AbuseLimits], caller: Caller, tokens: Tokens, app: AppContext
) -> None:
    server, _ = started
    key = await license_key(caller, tokens)
    caller.limit(limits_for(app, per_peer="1/minute"))
    body = {"licenseKey": key, "productId": PRODUCT_ID, "fingerprint": "fingerprint-http"}
    async with httpx.AsyncClient(base_url=f"http://{server.http_address}") as http:
        await post_json(http, ACTIVATE, body, headers={HEADER: "192.0.2.40"})
        response = await http.post(
            ACTIVATE, json=body, headers={HEADER: "192.0.2.40", "content-type": "application/json"}
        )
        assert response.status_code == 429
        retry_after = int(response.headers["retry-after"])
        assert 1 <= retry_after <= 60
        with pytest.raises(HttpCallError) as caught:
            await post_json(http, ACTIVATE, body, headers={HEADER: "192.0.2.40"})
    failure = caught.value.failure
    assert_rate_limited(failure, "peer")
    assert failure.status == 429
