"""The usage report under concurrency, on PostgreSQL (its seat path takes no lock when it
can): many devices activating and releasing at once, and the report's peak is the most
seats any claim saw in use, never above the limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.fulfillment.v1 import fulfillment_pb2_grpc
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.app.context import AppContext
from keyturn.server.bootstrap import build_context

from conftest import Tokens, settings_for
from support.rpc import PRODUCT_ID

SEATS = 4
DEVICES = 16
ROUNDS = 6


@pytest.fixture
async def app(database_url: str) -> AsyncIterator[AppContext]:
    settings = settings_for(
        database_url, rate_limit_per_peer="off", rate_limit_per_credential="off"
    )
    ctx = await build_context(settings)
    yield ctx
    await ctx.store.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_the_reported_peak_is_the_most_seats_any_claim_saw_under_concurrency(
    license_of,  # type: ignore[no-untyped-def]
    licensing_stub: licensing_pb2_grpc.LicensingServiceStub,
    fulfillment_stub: fulfillment_pb2_grpc.FulfillmentServiceStub,
    tokens: Tokens,
) -> None:
    entitlement = await license_of(SEATS)
    key = entitlement.license_key
    seen: list[int] = []
    refusals: list[grpc.StatusCode] = []

    async def device(index: int) -> None:
        request = lic.ActivateSeatRequest(
            license_key=key, product_id=PRODUCT_ID, fingerprint=f"device-{index:04d}-load"
        )
        held = 0
        while held < ROUNDS:
            try:
                granted = await licensing_stub.ActivateSeat(request)
            except grpc.aio.AioRpcError as refused:
                refusals.append(refused.code())  # no seat free: try again
                continue
            seen.append(granted.entitlement.seats_in_use)
            held += 1
            await licensing_stub.ReleaseSeat(
                lic.ReleaseSeatRequest(lease_token=granted.lease.token)
            )

    this_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    await asyncio.gather(*(device(i) for i in range(DEVICES)))
    request = ful.GetUsageReportRequest(
        entitlement_id=entitlement.entitlement_id, granularity=ful.USAGE_GRANULARITY_HOUR
    )
    request.start_time.FromDatetime(this_hour)
    request.end_time.FromDatetime(this_hour + timedelta(hours=2))  # the hour may turn
    buckets = (await fulfillment_stub.GetUsageReport(request, metadata=tokens("read"))).buckets
    assert len(seen) == DEVICES * ROUNDS
    # The seats really were contended: a refusal means all were held at that moment.
    assert refusals
    assert set(refusals) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert max(seen) == SEATS
    assert max(b.peak_seats_in_use for b in buckets) == max(seen)
    assert all(b.seat_limit == SEATS for b in buckets)
    assert all(0 < b.average_seats_in_use <= SEATS for b in buckets if b.peak_seats_in_use)
