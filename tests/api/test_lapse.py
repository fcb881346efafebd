"""Lapse and resurrection with a controllable clock: floating seats free themselves,
node-locked ones do not, and the sweep only writes the events."""

from __future__ import annotations

from datetime import UTC, timedelta

import grpc
import pytest

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.fulfillment.v1 import fulfillment_pb2_grpc
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.app.context import AppContext
from keyturn.server.app.lapses import sweep_lapses
from keyturn.server.clock import SystemClock
from keyturn.server.domain.events import EventType
from keyturn.server.domain.seats import seat_freed_time

from conftest import Tokens
from support.rpc import PRODUCT_ID, failure_of

Licensing = licensing_pb2_grpc.LicensingServiceStub

THROUGH_PGBOUNCER = True  # conftest: also through PgBouncer in transaction mode


def clock_of(app: AppContext) -> SystemClock:
    assert isinstance(app.clock, SystemClock)
    return app.clock


def lapse_span(app: AppContext, entitlement: ful.Entitlement) -> timedelta:
    """Time after which a lease not renewed has lapsed (lease + lapse grace, and a bit)."""
    return entitlement.lease_duration.ToTimedelta() + app.lapse_grace + timedelta(seconds=1)


async def activate(stub: Licensing, key: str, fingerprint: str) -> lic.ActivateSeatResponse:
    return await stub.ActivateSeat(  # type: ignore[no-any-return]
        lic.ActivateSeatRequest(license_key=key, product_id=PRODUCT_ID, fingerprint=fingerprint)
    )


async def refusal(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    failure = failure_of(caught.value)
    return failure.code, failure.reason


async def test_a_lapsed_floating_seat_is_free_for_another_device(
    app: AppContext,
    license_of,
    licensing_stub: Licensing,  # type: ignore[no-untyped-def]
) -> None:
    entitlement = await license_of(1)
    key = entitlement.license_key
    await activate(licensing_stub, key, "device-aaaa")
    # While the lease (plus the lapse grace) runs, the seat is held.
    clock_of(app).offset += entitlement.lease_duration.ToTimedelta()
    assert await refusal(activate(licensing_stub, key, "device-bbbb")) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "SEATS_EXHAUSTED",
    )
    clock_of(app).offset += app.lapse_grace + timedelta(seconds=1)
    taken = await activate(licensing_stub, key, "device-bbbb")
    assert taken.entitlement.seats_in_use == 1


async def test_a_lapsed_lease_is_resurrected_while_a_seat_is_free(
    app: AppContext,
    license_of,
    licensing_stub: Licensing,  # type: ignore[no-untyped-def]
) -> None:
    entitlement = await license_of(2)
    first = await activate(licensing_stub, entitlement.license_key, "device-aaaa")
    clock_of(app).offset += lapse_span(app, entitlement)
    renewed = await licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=first.lease.token))
    assert renewed.lease.token != first.lease.token
    assert renewed.lease.expire_time.ToDatetime() > first.lease.expire_time.ToDatetime()
    assert renewed.entitlement.seats_in_use == 1
    # The resurrected lease is the current one: the old token is void.
    assert await refusal(
        licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=first.lease.token))
    ) == (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_SUPERSEDED")


async def test_resurrection_fails_when_the_seat_was_taken(
    app: AppContext,
    license_of,
    licensing_stub: Licensing,  # type: ignore[no-untyped-def]
) -> None:
    entitlement = await license_of(1)
    key = entitlement.license_key
    lapsed = await activate(licensing_stub, key, "device-aaaa")
    clock_of(app).offset += lapse_span(app, entitlement)
    other = await activate(licensing_stub, key, "device-bbbb")
    assert await refusal(
        licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=lapsed.lease.token))
    ) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "SEATS_EXHAUSTED")
    # Once the other device releases, the lapsed lease comes back.
    await licensing_stub.ReleaseSeat(lic.ReleaseSeatRequest(lease_token=other.lease.token))
    back = await licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=lapsed.lease.token))
    assert back.entitlement.seats_in_use == 1


async def test_node_locked_seats_are_not_freed_by_lapse(
    app: AppContext,
    license_of,
    licensing_stub: Licensing,  # type: ignore[no-untyped-def]
) -> None:
    entitlement = await license_of(1, cat.LICENSE_MODEL_NODE_LOCKED)
    key = entitlement.license_key
    held = await activate(licensing_stub, key, "device-aaaa")
    clock_of(app).offset += lapse_span(app, entitlement) * 10
    assert await refusal(activate(licensing_stub, key, "device-bbbb")) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "SEATS_EXHAUSTED",
    )
    # The bound device renews its expired lease, and only a release frees the seat.
    renewed = await licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=held.lease.token))
    await licensing_stub.ReleaseSeat(lic.ReleaseSeatRequest(lease_token=renewed.lease.token))
    taken = await activate(licensing_stub, key, "device-bbbb")
    assert taken.entitlement.seats_in_use == 1


async def test_the_sweep_records_each_lapse_once_and_frees_nothing_itself(
    app: AppContext,
    license_of,  # type: ignore[no-untyped-def]
    licensing_stub: Licensing,
    fulfillment_stub: fulfillment_pb2_grpc.FulfillmentServiceStub,
    tokens: Tokens,
) -> None:
    floating = await license_of(3)
    locked = await license_of(1, cat.LICENSE_MODEL_NODE_LOCKED)
    a = await activate(licensing_stub, floating.license_key, "device-aaaa")
    b = await activate(licensing_stub, floating.license_key, "device-bbbb")
    await activate(licensing_stub, locked.license_key, "device-cccc")
    assert await sweep_lapses(app) == 0  # nothing has lapsed yet
    lease = floating.lease_duration.ToTimedelta()
    clock_of(app).offset += lease / 2
    kept = await licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=b.lease.token))
    clock_of(app).offset += lease / 2 + app.lapse_grace + timedelta(seconds=1)
    # a has lapsed, b has not: the seat count already says so, with no sweep run.
    check = lic.CheckLicenseRequest(license_key=floating.license_key, product_id=PRODUCT_ID)
    assert (await licensing_stub.CheckLicense(check)).entitlement.seats_in_use == 1
    assert await sweep_lapses(app) == 1  # a's, which nobody noticed
    assert await sweep_lapses(app) == 0
    clock_of(app).offset += lease
    # b has lapsed now; a device coming notices it first, so the sweep finds nothing.
    await activate(licensing_stub, floating.license_key, "device-dddd")
    assert await sweep_lapses(app) == 0
    assert kept.lease.token != b.lease.token
    events = await fulfillment_stub.ListEntitlementEvents(
        ful.ListEntitlementEventsRequest(entitlement_id=floating.entitlement_id),
        metadata=tokens("read"),
    )
    lapses = [
        (e.activation_id, e.entitlement.seats_in_use)
        for e in events.events
        if e.type == ful.ENTITLEMENT_EVENT_TYPE_LEASE_LAPSED
    ]
    assert lapses == [(a.activation_id, 1), (b.activation_id, 0)]
    # Each event names its actor: the order's token, each device its own seat, and the
    # system the lapses, after what noticed them (the sweep, or device d's claim).
    d = events.events[-1].activation_id
    assert [(e.type, e.actor) for e in events.events] == [
        (ful.ENTITLEMENT_EVENT_TYPE_CREATED, f"token:{tokens.ids['fulfill']}"),
        (ful.ENTITLEMENT_EVENT_TYPE_SEAT_ACTIVATED, f"device:{a.activation_id}"),
        (ful.ENTITLEMENT_EVENT_TYPE_SEAT_ACTIVATED, f"device:{b.activation_id}"),
        (ful.ENTITLEMENT_EVENT_TYPE_LEASE_LAPSED, "system:lapse-sweep"),
        (ful.ENTITLEMENT_EVENT_TYPE_LEASE_LAPSED, "system:lease-expiry"),
        (ful.ENTITLEMENT_EVENT_TYPE_SEAT_ACTIVATED, f"device:{d}"),
    ]
    locked_events = await fulfillment_stub.ListEntitlementEvents(
        ful.ListEntitlementEventsRequest(entitlement_id=locked.entitlement_id),
        metadata=tokens("read"),
    )
    assert ful.ENTITLEMENT_EVENT_TYPE_LEASE_LAPSED not in [e.type for e in locked_events.events]


async def test_every_recorded_lapse_is_effective_when_the_seat_rule_freed_its_seat(
    app: AppContext,
    license_of,  # type: ignore[no-untyped-def]
    licensing_stub: Licensing,
) -> None:
    """A lapse is recorded late (by the sweep, or a claim, a release or a renewal on the
    entitlement), but its event says when its seat was freed: expiry plus lapse grace."""
    entitlement = await license_of(3)
    key = entitlement.license_key
    span = lapse_span(app, entitlement)
    expected: list[tuple[str, object]] = []

    async def lapse_once(fingerprint: str) -> lic.ActivateSeatResponse:
        granted = await activate(licensing_stub, key, fingerprint)
        expiry = granted.lease.expire_time.ToDatetime(UTC)
        expected.append((granted.activation_id, seat_freed_time(expiry, app.lapse_grace)))
        clock_of(app).offset += span * 2
        return granted

    await lapse_once("device-swept")
    assert await sweep_lapses(app) == 1
    await lapse_once("device-claimed")
    other = await activate(licensing_stub, key, "device-claimer")  # notices the lapse
    await lapse_once("device-released")
    # The claimer's lease lapsed as well; a release notices both.
    expected.insert(-1, (other.activation_id, None))
    await licensing_stub.ReleaseSeat(lic.ReleaseSeatRequest(lease_token=other.lease.token))
    renewed = await lapse_once("device-renewed")
    back = await licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=renewed.lease.token))
    assert back.entitlement.seats_in_use == 1  # its own lapse recorded, then regained
    async with app.store.read() as tx:
        recorded = await tx.events.after(0, 1000, entitlement.entitlement_id)
    lapses = [(e.activation_id, e.effective_time) for e in recorded if e.type == "lease_lapsed"]
    other_expiry = other.lease.expire_time.ToDatetime(UTC)
    expected = [
        (a, seat_freed_time(other_expiry, app.lapse_grace) if t is None else t) for a, t in expected
    ]
    assert sorted(lapses, key=str) == sorted(expected, key=str)
    late = [e for e in recorded if e.type == EventType.LEASE_LAPSED]
    assert all(e.effective_time is not None and e.effective_time < e.create_time for e in late)
    others = [e for e in recorded if e.type != EventType.LEASE_LAPSED]
    assert others
    assert all(e.effective_time is None for e in others)
