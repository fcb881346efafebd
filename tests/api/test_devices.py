"""Devices through a real server: ListActivations, DeactivateSeat and the SKU's limit on
deactivations, on every backend."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest
from sqlalchemy import select, text

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.app.context import AppContext
from keyturn.server.clock import SystemClock
from keyturn.server.store.tables import audit_events

from conftest import Tokens
from support.catalog import put_catalog
from support.rows import table_digests
from support.rpc import PRODUCT_ID, create_sku, failure_of, order

Catalog = catalog_pb2_grpc.CatalogServiceStub
Fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub
Licensing = licensing_pb2_grpc.LicensingServiceStub

FLOATING_3 = "FLOAT-3"
LOCKED_1 = "LOCKED-1"
LOCKED_2 = "LOCKED-2"
NAMED_2 = "NAMED-2"
LIMITED = "LIMITED-3-P30D"  # node-locked, 8 seats, 3 deactivations per 30 days
RELEASES_LIMITED = "RELEASES-2-P1D"  # floating, 5 seats, 2 per day, releases counted
LIVE, LAPSED = ful.ACTIVATION_STATE_LIVE, ful.ACTIVATION_STATE_LAPSED
RELEASED, DEACTIVATED = ful.ACTIVATION_STATE_RELEASED, ful.ACTIVATION_STATE_DEACTIVATED


def limited_sku(
    sku_id: str, *, seats: int, model: int, count: int, period: str, count_releases: bool
) -> cat.Sku:
    sku = create_sku(sku_id, seats=seats, model=model)
    sku.operations[0].create.deactivation_limit.CopyFrom(
        cat.DeactivationLimit(count=count, period=period, count_releases=count_releases)
    )
    return sku


@pytest.fixture
async def skus(catalog_stub: Catalog, tokens: Tokens) -> None:
    named = create_sku(NAMED_2, seats=2)
    named.operations[0].create.dispatch = cat.DISPATCH_INVITATION
    await put_catalog(
        catalog_stub,
        tokens("catalog"),
        create_sku(FLOATING_3, seats=3),
        create_sku(LOCKED_1, seats=1, model=cat.LICENSE_MODEL_NODE_LOCKED),
        create_sku(LOCKED_2, seats=2, model=cat.LICENSE_MODEL_NODE_LOCKED),
        named,
        limited_sku(
            LIMITED,
            seats=8,
            model=cat.LICENSE_MODEL_NODE_LOCKED,
            count=3,
            period="P30D",
            count_releases=False,
        ),
        limited_sku(
            RELEASES_LIMITED,
            seats=5,
            model=cat.LICENSE_MODEL_FLOATING,
            count=2,
            period="P1D",
            count_releases=True,
        ),
    )


def move_clock(app: AppContext, by: timedelta) -> None:
    assert isinstance(app.clock, SystemClock)
    app.clock.offset += by


async def buy(
    stub: Fulfillment,
    tokens: Tokens,
    sku_id: str,
    *,
    customer_id: str = "cust-1",
    emails: tuple[str, ...] = (),
) -> ful.Entitlement:
    request = order(f"order-{sku_id}-{customer_id}", sku_id)
    request.customer.customer_id = customer_id
    request.lines[0].named_user_emails.extend(emails)
    response = await stub.FulfillOrder(request, metadata=tokens("fulfill"))
    return response.entitlements[0]


async def activate(stub: Licensing, key: str, fingerprint: str) -> lic.ActivateSeatResponse:
    return await stub.ActivateSeat(
        lic.ActivateSeatRequest(
            license_key=key, product_id=PRODUCT_ID, fingerprint=fingerprint, label=fingerprint
        )
    )


async def deactivate(
    stub: Fulfillment, tokens: Tokens, entitlement_id: str, activation_id: str, reason: str
) -> ful.Activation:
    response = await stub.DeactivateSeat(
        ful.DeactivateSeatRequest(
            entitlement_id=entitlement_id, activation_id=activation_id, reason=reason
        ),
        metadata=tokens("fulfill"),
    )
    return response.activation


async def listed(stub: Fulfillment, tokens: Tokens, **filters: object) -> list[ful.Activation]:
    """Every page of a ListActivations query, two at a time."""
    found: list[ful.Activation] = []
    token = ""
    while True:
        response = await stub.ListActivations(
            ful.ListActivationsRequest(page_size=2, page_token=token, **filters),  # type: ignore[arg-type]
            metadata=tokens("read"),
        )
        assert len(response.activations) <= 2
        found += response.activations
        token = response.next_page_token
        if not token:
            return found


async def seats_in_use(stub: Fulfillment, tokens: Tokens, entitlement_id: str) -> int:
    response = await stub.GetEntitlement(
        ful.GetEntitlementRequest(entitlement_id=entitlement_id), metadata=tokens("read")
    )
    return response.entitlement.seats_in_use


async def kept_count_is_exact(app: AppContext, entitlement_id: str) -> int:
    """entitlements.seats_held against the activations that hold a seat (node-locked)."""
    async with app.store.read() as tx:
        held = (
            await tx.connection.execute(
                text("SELECT seats_held FROM entitlements WHERE entitlement_id = :e"),
                {"e": entitlement_id},
            )
        ).scalar_one()
        counted = (
            await tx.connection.execute(
                text(
                    "SELECT count(*) FROM activations WHERE entitlement_id = :e"
                    " AND released_time IS NULL AND lapse_recorded_time IS NULL"
                ),
                {"e": entitlement_id},
            )
        ).scalar_one()
    assert held == counted
    return int(held)


async def audit_rows(app: AppContext, action: str) -> list[dict[str, object]]:
    query = select(audit_events).where(audit_events.c.action == action)
    async with app.store.read() as tx:
        result = await tx.connection.execute(query.order_by(audit_events.c.audit_id))
        return [dict(row) for row in result.mappings()]


async def event_types(stub: Fulfillment, tokens: Tokens, entitlement_id: str) -> list[int]:
    response = await stub.ListEntitlementEvents(
        ful.ListEntitlementEventsRequest(entitlement_id=entitlement_id, page_size=500),
        metadata=tokens("read"),
    )
    return [event.type for event in response.events]


@pytest.mark.usefixtures("skus")
async def test_a_customers_devices_by_each_filter_and_page(
    fulfillment_stub: Fulfillment, licensing_stub: Licensing, tokens: Tokens, app: AppContext
) -> None:
    floating = await buy(fulfillment_stub, tokens, FLOATING_3)
    locked = await buy(fulfillment_stub, tokens, LOCKED_2)
    named = await buy(fulfillment_stub, tokens, NAMED_2, emails=("ada@initech.example",))
    other = await buy(fulfillment_stub, tokens, FLOATING_3, customer_id="cust-2")
    key = floating.license_key
    a = await activate(licensing_stub, key, "device-aaaa")
    b = await activate(licensing_stub, key, "device-bbbb")
    c = await activate(licensing_stub, key, "device-cccc")
    n1 = await activate(licensing_stub, locked.license_key, "device-nnn1")
    n2 = await activate(licensing_stub, locked.license_key, "device-nnn2")
    await activate(licensing_stub, other.license_key, "device-dddd")
    identity = await licensing_stub.RedeemInvitation(
        lic.RedeemInvitationRequest(invitation_code=named.named_users[0].invitation_code)
    )
    u = await licensing_stub.ActivateSeat(
        lic.ActivateSeatRequest(
            identity_token=identity.identity_token,
            product_id=PRODUCT_ID,
            fingerprint="device-uuuu",
        )
    )
    await licensing_stub.ReleaseSeat(lic.ReleaseSeatRequest(lease_token=b.lease.token))
    await deactivate(fulfillment_stub, tokens, locked.entitlement_id, n2.activation_id, "lost")
    # Every floating lease runs out; a and u renew (taking their seats again), c lapses.
    move_clock(app, timedelta(seconds=900) + app.lapse_grace + timedelta(seconds=1))
    await licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=a.lease.token))
    await licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=u.lease.token))

    every = await listed(fulfillment_stub, tokens, customer_id="cust-1")
    ids = {
        "a": a.activation_id,
        "b": b.activation_id,
        "c": c.activation_id,
        "n1": n1.activation_id,
        "n2": n2.activation_id,
        "u": u.activation_id,
    }
    name_of = {v: k for k, v in ids.items()}
    assert [name_of[x.activation_id] for x in every] == sorted(ids, key=lambda n: ids[n])
    by_name = {name_of[x.activation_id]: x for x in every}
    assert {n: x.state for n, x in by_name.items()} == {
        "a": LIVE,
        "b": RELEASED,
        "c": LAPSED,
        "n1": LIVE,
        "n2": DEACTIVATED,
        "u": LIVE,
    }

    async def names(**filters: object) -> set[str]:
        return {name_of[x.activation_id] for x in await listed(fulfillment_stub, tokens, **filters)}

    assert await names(entitlement_id=floating.entitlement_id) == {"a", "b", "c"}
    assert await names(customer_id="cust-1", states=[LIVE]) == {"a", "n1", "u"}
    assert await names(customer_id="cust-1", states=[LAPSED]) == {"c"}
    assert await names(customer_id="cust-1", states=[RELEASED, DEACTIVATED]) == {"b", "n2"}
    assert await names(customer_id="cust-1", node_locked=True) == {"n1", "n2"}
    assert await names(customer_id="cust-1", node_locked=False) == {"a", "b", "c", "u"}
    user_id = named.named_users[0].user_id
    assert await names(customer_id="cust-1", user_id=user_id) == {"u"}
    assert await names(entitlement_id=locked.entitlement_id, states=[LIVE]) == {"n1"}
    assert await names(customer_id="nobody") == set()
    assert len(await listed(fulfillment_stub, tokens, customer_id="cust-2")) == 1

    released, gone, device = by_name["b"], by_name["n2"], by_name["u"]
    assert released.released_by == f"device:{b.activation_id}"
    assert released.HasField("release_time")
    assert released.release_reason == ""
    assert gone.released_by.startswith("token:")
    assert gone.release_reason == "lost"
    assert gone.node_locked
    assert not released.node_locked
    assert device.user_id == user_id
    assert device.fingerprint == "device-uuuu"
    assert not device.HasField("release_time")
    assert device.released_by == ""
    renewed = by_name["a"]
    assert renewed.update_time.ToDatetime() > renewed.create_time.ToDatetime()
    assert renewed.label == "device-aaaa"
    assert renewed.entitlement_id == floating.entitlement_id


@pytest.mark.usefixtures("skus")
async def test_a_lost_node_locked_device_is_deactivated_and_another_takes_its_seat(
    fulfillment_stub: Fulfillment, licensing_stub: Licensing, tokens: Tokens, app: AppContext
) -> None:
    entitlement = await buy(fulfillment_stub, tokens, LOCKED_1)
    key, entitlement_id = entitlement.license_key, entitlement.entitlement_id
    lost = await activate(licensing_stub, key, "device-lost")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await activate(licensing_stub, key, "device-new1")
    assert failure_of(refused.value).reason == "SEATS_EXHAUSTED"

    taken = await deactivate(
        fulfillment_stub, tokens, entitlement_id, lost.activation_id, "laptop stolen, #4411"
    )
    assert taken.state == DEACTIVATED
    assert taken.release_reason == "laptop stolen, #4411"
    assert taken.released_by.startswith("token:")
    assert await seats_in_use(fulfillment_stub, tokens, entitlement_id) == 0
    assert await kept_count_is_exact(app, entitlement_id) == 0
    assert (await event_types(fulfillment_stub, tokens, entitlement_id))[-1] == (
        ful.ENTITLEMENT_EVENT_TYPE_SEAT_DEACTIVATED
    )
    (row,) = await audit_rows(app, "seat.deactivate")
    assert row["actor"] == taken.released_by
    assert row["resource"] == f"entitlements/{entitlement_id}/activations/{lost.activation_id}"
    assert row["entitlement_id"] == entitlement_id
    assert row["details"] == {"reason": "laptop stolen, #4411", "fingerprint": "device-lost"}

    # Again: the activation as it is, nothing written.
    before = await table_digests(app.store)
    again = await deactivate(fulfillment_stub, tokens, entitlement_id, lost.activation_id, "x")
    assert again == taken
    after = await table_digests(app.store)
    assert {t for t in before if before[t] != after[t]} <= {"api_tokens"}

    fresh = await activate(licensing_stub, key, "device-new1")
    assert fresh.entitlement.seats_in_use == 1
    assert await kept_count_is_exact(app, entitlement_id) == 1
    with pytest.raises(grpc.aio.AioRpcError) as renewal:
        await licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=lost.lease.token))
    failure = failure_of(renewal.value)
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SEAT_DEACTIVATED",
    )
    assert failure.metadata == {"activation_id": lost.activation_id}

    # The lost device comes back once the seat is free: a new claim, the same activation.
    await deactivate(fulfillment_stub, tokens, entitlement_id, fresh.activation_id, "swap")
    back = await activate(licensing_stub, key, "device-lost")
    assert back.activation_id == lost.activation_id
    await licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=back.lease.token))
    (shown,) = await listed(fulfillment_stub, tokens, entitlement_id=entitlement_id, states=[LIVE])
    assert shown.activation_id == lost.activation_id
    assert (shown.released_by, shown.release_reason) == ("", "")
    assert await kept_count_is_exact(app, entitlement_id) == 1


@pytest.mark.usefixtures("skus")
async def test_the_fourth_deactivation_within_the_period_waits_for_the_period(
    fulfillment_stub: Fulfillment,
    licensing_stub: Licensing,
    catalog_stub: Catalog,
    tokens: Tokens,
    app: AppContext,
) -> None:
    sku = await catalog_stub.GetSku(cat.GetSkuRequest(sku_id=LIMITED), metadata=tokens("catalog"))
    assert sku.sku.operations[0].create.deactivation_limit == cat.DeactivationLimit(
        count=3, period="P30D"
    )
    entitlement = await buy(fulfillment_stub, tokens, LIMITED)
    assert entitlement.deactivation_limit == cat.DeactivationLimit(count=3, period="P30D")
    devices = [
        await activate(licensing_stub, entitlement.license_key, f"device-{i:04}") for i in range(5)
    ]
    first = await deactivate(
        fulfillment_stub, tokens, entitlement.entitlement_id, devices[0].activation_id, "one"
    )
    for device in devices[1:3]:
        await deactivate(
            fulfillment_stub, tokens, entitlement.entitlement_id, device.activation_id, "more"
        )
    before = await table_digests(app.store)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await deactivate(
            fulfillment_stub, tokens, entitlement.entitlement_id, devices[3].activation_id, "4th"
        )
    failure = failure_of(refused.value)
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "DEACTIVATION_LIMIT_REACHED",
    )
    retry = first.release_time.ToDatetime() + timedelta(days=30)
    assert failure.metadata["limit"] == "3"
    assert failure.metadata["period"] == "P30D"
    assert failure.metadata["retry_time"].startswith(retry.isoformat()[:19])
    after = await table_digests(app.store)
    assert {t for t in before if before[t] != after[t]} <= {"api_tokens"}
    assert await seats_in_use(fulfillment_stub, tokens, entitlement.entitlement_id) == 2

    move_clock(app, timedelta(days=30, seconds=1))
    fourth = await deactivate(
        fulfillment_stub, tokens, entitlement.entitlement_id, devices[3].activation_id, "4th"
    )
    assert fourth.state == DEACTIVATED
    assert await kept_count_is_exact(app, entitlement.entitlement_id) == 1


@pytest.mark.usefixtures("skus")
async def test_counted_releases_limit_release_seat_and_uncounted_ones_do_not(
    fulfillment_stub: Fulfillment, licensing_stub: Licensing, tokens: Tokens, app: AppContext
) -> None:
    entitlement = await buy(fulfillment_stub, tokens, RELEASES_LIMITED)
    key = entitlement.license_key
    one, two, three = [await activate(licensing_stub, key, f"device-{i:04}") for i in range(3)]
    await licensing_stub.ReleaseSeat(lic.ReleaseSeatRequest(lease_token=one.lease.token))
    await deactivate(fulfillment_stub, tokens, entitlement.entitlement_id, two.activation_id, "x")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await licensing_stub.ReleaseSeat(lic.ReleaseSeatRequest(lease_token=three.lease.token))
    failure = failure_of(refused.value)
    assert failure.reason == "DEACTIVATION_LIMIT_REACHED"
    assert (failure.metadata["limit"], failure.metadata["period"]) == ("2", "P1D")
    assert await kept_count_is_exact(app, entitlement.entitlement_id) == 1
    # It keeps its seat: its lease renews.
    await licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=three.lease.token))

    # Without count_releases, releases are not limited and do not count.
    limited = await buy(fulfillment_stub, tokens, LIMITED)
    held = [await activate(licensing_stub, limited.license_key, f"device-{i:04}") for i in range(5)]
    for device in held[:4]:
        await licensing_stub.ReleaseSeat(lic.ReleaseSeatRequest(lease_token=device.lease.token))
    taken = await deactivate(
        fulfillment_stub, tokens, limited.entitlement_id, held[4].activation_id, "fine"
    )
    assert taken.state == DEACTIVATED


@pytest.mark.usefixtures("skus")
async def test_concurrent_deactivations_never_pass_the_limit(
    fulfillment_stub: Fulfillment, licensing_stub: Licensing, tokens: Tokens, app: AppContext
) -> None:
    entitlement = await buy(fulfillment_stub, tokens, LIMITED)
    devices = [
        await activate(licensing_stub, entitlement.license_key, f"device-{i:04}") for i in range(8)
    ]
    answers = await asyncio.gather(
        *(
            deactivate(fulfillment_stub, tokens, entitlement.entitlement_id, d.activation_id, "r")
            for d in devices
        ),
        return_exceptions=True,
    )
    done = [a for a in answers if isinstance(a, ful.Activation)]
    refused = [failure_of(a) for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    assert (len(done), len(refused)) == (3, 5), answers
    assert {f.reason for f in refused} == {"DEACTIVATION_LIMIT_REACHED"}
    assert await kept_count_is_exact(app, entitlement.entitlement_id) == 5
    types = await event_types(fulfillment_stub, tokens, entitlement.entitlement_id)
    assert types.count(ful.ENTITLEMENT_EVENT_TYPE_SEAT_DEACTIVATED) == 3
    assert len(await audit_rows(app, "seat.deactivate")) == 3


@pytest.mark.usefixtures("skus")
async def test_concurrent_counted_releases_never_pass_the_limit(
    fulfillment_stub: Fulfillment, licensing_stub: Licensing, tokens: Tokens, app: AppContext
) -> None:
    """The devices' own releases, on the seat path (asyncpg on PostgreSQL), count each
    other under the entitlement's lock as deactivations do."""
    entitlement = await buy(fulfillment_stub, tokens, RELEASES_LIMITED)
    devices = [
        await activate(licensing_stub, entitlement.license_key, f"device-{i:04}") for i in range(5)
    ]
    answers = await asyncio.gather(
        *(
            licensing_stub.ReleaseSeat(lic.ReleaseSeatRequest(lease_token=d.lease.token))
            for d in devices
        ),
        return_exceptions=True,
    )
    refused = [failure_of(a) for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    assert len(refused) == 3, answers
    assert {f.reason for f in refused} == {"DEACTIVATION_LIMIT_REACHED"}
    assert await kept_count_is_exact(app, entitlement.entitlement_id) == 3
    types = await event_types(fulfillment_stub, tokens, entitlement.entitlement_id)
    assert types.count(ful.ENTITLEMENT_EVENT_TYPE_SEAT_RELEASED) == 2
