"""Lapse across processes: leases taken on one server are judged lapsed by servers
running later (their clock moved past lease and grace), either one `keyturn serve
--workers 2` or three replicas: seats are free again without a job, a lapsed lease
renews only while a seat is free, and each lapse is recorded once although several
processes claim seats and sweep.

The later server's clock is shifted with KEYTURN_CLOCK_OFFSET_SECONDS; on PostgreSQL
the seat decisions take the database's time plus that shift, on SQLite the server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.app.context import AppContext
from keyturn.server.app.tokens import create_token

from conftest import server_settings
from support.catalog import new_license
from support.rpc import PRODUCT_ID, failure_of
from support.subprocess_server import ServerProcess, start_server

THROUGH_PGBOUNCER = True  # conftest: also through PgBouncer in transaction mode
LEASE_S = 900  # support.rpc.create_sku
GRACE_S = 30
LATER_S = LEASE_S + GRACE_S + 60
WAIT_S = 60.0


# (replicas, workers each) of the later servers
TOPOLOGIES = {"two-workers": (1, 2), "three-replicas": (3, 1)}


@contextlib.asynccontextmanager
async def serving(
    cwd: Path, database_url: str, workers: int, replicas: int = 1, **extra: str
) -> AsyncIterator[list[grpc.aio.Channel]]:
    """`replicas` servers of `workers` processes each; a channel to each."""
    settings = server_settings(database_url, KEYTURN_LAPSE_GRACE_SECONDS=str(GRACE_S), **extra)
    async with contextlib.AsyncExitStack() as stack:
        managers = [start_server(cwd, settings, workers=workers) for _ in range(replicas)]
        servers: list[ServerProcess] = await asyncio.gather(
            *(asyncio.to_thread(m.__enter__) for m in managers)
        )
        for manager in managers:
            stack.push_async_callback(asyncio.to_thread, manager.__exit__, None, None, None)
        yield [
            await stack.enter_async_context(grpc.aio.insecure_channel(s.address)) for s in servers
        ]


class Licensing:
    """A LicensingService stub that sends each call where `next_stub` says."""

    def __init__(self, next_stub: Callable[[], licensing_pb2_grpc.LicensingServiceStub]) -> None:
        self._next = next_stub

    def __getattr__(self, name: str) -> object:
        return getattr(self._next(), name)


def activation(key: str, fingerprint: str) -> lic.ActivateSeatRequest:
    return lic.ActivateSeatRequest(license_key=key, product_id=PRODUCT_ID, fingerprint=fingerprint)


async def lapse_events(
    fulfillment: fulfillment_pb2_grpc.FulfillmentServiceStub, auth, entitlement_id: str
) -> list[str]:  # type: ignore[no-untyped-def]
    page = await fulfillment.ListEntitlementEvents(
        ful.ListEntitlementEventsRequest(entitlement_id=entitlement_id, page_size=100),
        metadata=auth,
    )
    return [
        e.activation_id for e in page.events if e.type == ful.ENTITLEMENT_EVENT_TYPE_LEASE_LAPSED
    ]


@pytest.mark.parametrize("topology", list(TOPOLOGIES))
async def test_leases_lapse_for_later_servers(
    app: AppContext, database_url: str, tmp_path: Path, topology: str
) -> None:
    replicas, workers = TOPOLOGIES[topology]
    _, secret = await create_token(app, {"catalog", "fulfill", "read"}, "lapse workers")
    auth = (("authorization", f"Bearer {secret}"),)
    async with serving(tmp_path, database_url, workers=1) as [now_channel]:
        catalog = catalog_pb2_grpc.CatalogServiceStub(now_channel)
        fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub(now_channel)
        claimed = await new_license(catalog, fulfillment, auth, auth, seats=2)
        swept = await new_license(catalog, fulfillment, auth, auth, seats=3)
        licensing = licensing_pb2_grpc.LicensingServiceStub(now_channel)
        leases = {
            name: await licensing.ActivateSeat(activation(claimed.license_key, name))
            for name in ("device-0001", "device-0002")
        }
        for name in ("device-1001", "device-1002"):
            await licensing.ActivateSeat(activation(swept.license_key, name))

    later = {"KEYTURN_CLOCK_OFFSET_SECONDS": str(LATER_S), "KEYTURN_LAPSE_SWEEP_SECONDS": "0.2"}
    async with serving(tmp_path, database_url, workers, replicas, **later) as channels:
        # Each call on the next replica in turn (one replica: its two workers share it).
        turns = itertools.cycle(channels)
        licensing = Licensing(lambda: licensing_pb2_grpc.LicensingServiceStub(next(turns)))
        fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub(channels[-1])
        check = await licensing.CheckLicense(
            lic.CheckLicenseRequest(license_key=claimed.license_key, product_id=PRODUCT_ID)
        )
        assert check.entitlement.seats_in_use == 0, "both leases lapsed: no seat is held"

        # A new device takes a free seat; the lapsed device-0001 takes the other back.
        taken = await licensing.ActivateSeat(activation(claimed.license_key, "device-0003"))
        assert taken.entitlement.seats_in_use == 1
        regained = await licensing.RenewLease(
            lic.RenewLeaseRequest(lease_token=leases["device-0001"].lease.token)
        )
        assert regained.entitlement.seats_in_use == 2
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await licensing.RenewLease(
                lic.RenewLeaseRequest(lease_token=leases["device-0002"].lease.token)
            )
        failure = failure_of(caught.value)
        assert (failure.code, failure.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "SEATS_EXHAUSTED",
        )

        # Each lapse is in the log once: noticed by the claim on one entitlement...
        recorded = await lapse_events(fulfillment, auth, claimed.entitlement_id)
        assert sorted(recorded) == sorted(r.activation_id for r in leases.values())
        # ...and by the sweep on the other, where nobody claimed: wait for both, then a
        # new activation's event must follow them with no lapse recorded twice between.
        stream = fulfillment.WatchEntitlementEvents(
            ful.WatchEntitlementEventsRequest(after_sequence=0), metadata=auth
        )
        seen: list[str] = []
        async with asyncio.timeout(WAIT_S):
            async for response in stream:
                event = response.event
                if (event.entitlement_id, event.type) == (
                    swept.entitlement_id,
                    ful.ENTITLEMENT_EVENT_TYPE_LEASE_LAPSED,
                ):
                    seen.append(event.activation_id)
                if len(seen) == 2:
                    break
        stream.cancel()
        await licensing.ActivateSeat(activation(swept.license_key, "device-1003"))
        page = await fulfillment.ListEntitlementEvents(
            ful.ListEntitlementEventsRequest(entitlement_id=swept.entitlement_id, page_size=100),
            metadata=auth,
        )
        kinds = [e.type for e in page.events]
        assert kinds.count(ful.ENTITLEMENT_EVENT_TYPE_LEASE_LAPSED) == 2
        assert kinds[-1] == ful.ENTITLEMENT_EVENT_TYPE_SEAT_ACTIVATED
