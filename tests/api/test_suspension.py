"""Suspend and reinstate through a real server, on every backend: a suspended entitlement
refuses seats and renewals and releases nothing; reinstated, it goes on with the same
devices. Both RPCs and both SKU operations are safe to repeat."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import timedelta

import grpc
import jwt
import pytest
from sqlalchemy import text

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.app.context import AppContext
from keyturn.server.clock import SystemClock
from keyturn.server.store.audit_repository import AuditFilter

from conftest import Tokens
from support.catalog import put_catalog
from support.rpc import PRODUCT_ID, create_sku, failure_of, order

Fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub
Licensing = licensing_pb2_grpc.LicensingServiceStub
Catalog = catalog_pb2_grpc.CatalogServiceStub

SUSPENDED = ful.ENTITLEMENT_EVENT_TYPE_SUSPENDED
REINSTATED = ful.ENTITLEMENT_EVENT_TYPE_REINSTATED


def _sku(sku_id: str, operation: cat.Operation) -> cat.Sku:
    return cat.Sku(
        sku_id=sku_id, product_id=PRODUCT_ID, display_name=sku_id, operations=[operation]
    )


@pytest.fixture
async def skus(catalog_stub: Catalog, tokens: Tokens) -> None:
    await put_catalog(
        catalog_stub,
        tokens("catalog"),
        create_sku("SUB-3", seats=3, term="P1Y"),
        create_sku("SUB-SHORT", seats=2, term="P1D"),
        _sku("SUSPEND", cat.Operation(suspend=cat.SuspendOperation())),
        _sku("REINSTATE", cat.Operation(reinstate=cat.ReinstateOperation())),
        _sku("CANCEL", cat.Operation(cancel=cat.CancelOperation())),
        _sku("ADD-1", cat.Operation(add_seats=cat.AddSeatsOperation(seats_per_unit=1))),
    )


async def _new(
    stub: Fulfillment, tokens: Tokens, reference: str, sku: str = "SUB-3"
) -> ful.Entitlement:
    response = await stub.FulfillOrder(
        order(f"new-{reference}", sku, reference=reference), metadata=tokens("fulfill")
    )
    return response.entitlements[0]


async def _suspend(stub: Fulfillment, tokens: Tokens, entitlement_id: str) -> ful.Entitlement:
    request = ful.SuspendEntitlementRequest(entitlement_id=entitlement_id, reason="payment_failed")
    return (await stub.SuspendEntitlement(request, metadata=tokens("fulfill"))).entitlement


async def _reinstate(stub: Fulfillment, tokens: Tokens, entitlement_id: str) -> ful.Entitlement:
    request = ful.ReinstateEntitlementRequest(entitlement_id=entitlement_id)
    return (await stub.ReinstateEntitlement(request, metadata=tokens("fulfill"))).entitlement


async def _event_types(stub: Fulfillment, tokens: Tokens, entitlement_id: str) -> list[int]:
    request = ful.ListEntitlementEventsRequest(entitlement_id=entitlement_id, page_size=100)
    events = (await stub.ListEntitlementEvents(request, metadata=tokens("read"))).events
    return [e.type for e in events]


async def _audit(app: AppContext, entitlement_id: str) -> list[tuple[str, str]]:
    async with app.store.read() as tx:
        rows = await tx.connection.execute(
            text(
                "SELECT action, actor FROM audit_events WHERE entitlement_id = :id"
                " AND action LIKE 'entitlement.%' ORDER BY create_time, action"
            ),
            {"id": entitlement_id},
        )
        return [(str(a), str(b)) for a, b in rows]


def _activation(key: str, fingerprint: str) -> lic.ActivateSeatRequest:
    return lic.ActivateSeatRequest(license_key=key, product_id=PRODUCT_ID, fingerprint=fingerprint)


def _subject(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["sub"])


async def _refused(
    call: Awaitable[object],
    reason: str,
    code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    failure = failure_of(caught.value)
    assert (failure.code, failure.reason) == (code, reason)


@pytest.mark.usefixtures("skus")
async def test_suspended_refuses_seats_and_renewals_and_reinstated_goes_on_with_the_same_devices(
    fulfillment_stub: Fulfillment, licensing_stub: Licensing, tokens: Tokens, app: AppContext
) -> None:
    ent = await _new(fulfillment_stub, tokens, "stripe:sub_hold")
    first = await licensing_stub.ActivateSeat(_activation(ent.license_key, "device-0001"))
    second = await licensing_stub.ActivateSeat(_activation(ent.license_key, "device-0002"))

    suspended = await _suspend(fulfillment_stub, tokens, ent.entitlement_id)
    assert suspended.status == ful.ENTITLEMENT_STATUS_SUSPENDED
    assert suspended.seats_in_use == 2  # nothing released

    await _refused(
        licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=first.lease.token)),
        "ENTITLEMENT_SUSPENDED",
    )
    await _refused(
        licensing_stub.ActivateSeat(_activation(ent.license_key, "device-0003")),
        "ENTITLEMENT_SUSPENDED",
    )
    await _refused(  # a known device too: no seat comes back while suspended
        licensing_stub.ActivateSeat(_activation(ent.license_key, "device-0002")),
        "ENTITLEMENT_SUSPENDED",
    )
    checked = await licensing_stub.CheckLicense(
        lic.CheckLicenseRequest(license_key=ent.license_key, product_id=PRODUCT_ID)
    )
    assert checked.entitlement.status == lic.ENTITLEMENT_STATUS_SUSPENDED
    assert checked.entitlement.seats_in_use == 2
    fetched = await fulfillment_stub.GetEntitlement(
        ful.GetEntitlementRequest(entitlement_id=ent.entitlement_id), metadata=tokens("read")
    )
    assert fetched.entitlement.status == ful.ENTITLEMENT_STATUS_SUSPENDED

    reinstated = await _reinstate(fulfillment_stub, tokens, ent.entitlement_id)
    assert reinstated.status == ful.ENTITLEMENT_STATUS_ACTIVE
    assert reinstated.seats_in_use == 2
    renewed = await licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=first.lease.token))
    assert _subject(renewed.lease.token) == first.activation_id
    again = await licensing_stub.ActivateSeat(_activation(ent.license_key, "device-0002"))
    assert again.activation_id == second.activation_id
    third = await licensing_stub.ActivateSeat(_activation(ent.license_key, "device-0003"))
    assert third.entitlement.seats_in_use == 3
    await _refused(
        licensing_stub.ActivateSeat(_activation(ent.license_key, "device-0004")),
        "SEATS_EXHAUSTED",
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    types = await _event_types(fulfillment_stub, tokens, ent.entitlement_id)
    assert types.count(SUSPENDED) == 1
    assert types.count(REINSTATED) == 1
    assert types.index(SUSPENDED) < types.index(REINSTATED)
    actions = [action for action, _ in await _audit(app, ent.entitlement_id)]
    assert actions == ["entitlement.suspend", "entitlement.reinstate"]
    assert all(actor.startswith("token:") for _, actor in await _audit(app, ent.entitlement_id))


@pytest.mark.usefixtures("skus")
async def test_a_lease_that_lapsed_while_suspended_regains_its_seat_once_reinstated(
    fulfillment_stub: Fulfillment, licensing_stub: Licensing, tokens: Tokens, app: AppContext
) -> None:
    ent = await _new(fulfillment_stub, tokens, "stripe:sub_lapse")
    held = await licensing_stub.ActivateSeat(_activation(ent.license_key, "device-0001"))
    await _suspend(fulfillment_stub, tokens, ent.entitlement_id)
    assert isinstance(app.clock, SystemClock)
    app.clock.offset += ent.lease_duration.ToTimedelta() + app.lapse_grace + timedelta(seconds=1)
    lapsed = await _reinstate(fulfillment_stub, tokens, ent.entitlement_id)
    assert lapsed.seats_in_use == 0
    renewed = await licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=held.lease.token))
    assert _subject(renewed.lease.token) == held.activation_id
    assert renewed.entitlement.seats_in_use == 1


@pytest.mark.usefixtures("skus")
async def test_suspend_and_reinstate_are_safe_to_repeat(
    fulfillment_stub: Fulfillment, tokens: Tokens, app: AppContext
) -> None:
    ent = await _new(fulfillment_stub, tokens, "stripe:sub_twice")
    untouched = await _reinstate(fulfillment_stub, tokens, ent.entitlement_id)  # not suspended
    assert untouched.status == ful.ENTITLEMENT_STATUS_ACTIVE
    assert untouched.update_time == ent.update_time
    once = await _suspend(fulfillment_stub, tokens, ent.entitlement_id)
    twice = await _suspend(fulfillment_stub, tokens, ent.entitlement_id)
    assert twice.status == ful.ENTITLEMENT_STATUS_SUSPENDED
    assert twice.update_time == once.update_time
    await _reinstate(fulfillment_stub, tokens, ent.entitlement_id)
    await _reinstate(fulfillment_stub, tokens, ent.entitlement_id)
    types = await _event_types(fulfillment_stub, tokens, ent.entitlement_id)
    assert types == [ful.ENTITLEMENT_EVENT_TYPE_CREATED, SUSPENDED, REINSTATED]
    actions = [action for action, _ in await _audit(app, ent.entitlement_id)]
    assert actions == ["entitlement.suspend", "entitlement.reinstate"]


@pytest.mark.usefixtures("skus")
async def test_a_cancelled_entitlement_is_neither_suspended_nor_reinstated(
    fulfillment_stub: Fulfillment, tokens: Tokens
) -> None:
    ent = await _new(fulfillment_stub, tokens, "stripe:sub_gone")
    await fulfillment_stub.FulfillOrder(
        order("cancel-1", "CANCEL", reference="stripe:sub_gone"), metadata=tokens("fulfill")
    )
    suspend = ful.SuspendEntitlementRequest(entitlement_id=ent.entitlement_id)
    await _refused(
        fulfillment_stub.SuspendEntitlement(suspend, metadata=tokens("fulfill")),
        "ENTITLEMENT_CANCELLED",
    )
    reinstate = ful.ReinstateEntitlementRequest(entitlement_id=ent.entitlement_id)
    await _refused(
        fulfillment_stub.ReinstateEntitlement(reinstate, metadata=tokens("fulfill")),
        "ENTITLEMENT_CANCELLED",
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fulfillment_stub.FulfillOrder(
            order("suspend-gone", "SUSPEND", reference="stripe:sub_gone"),
            metadata=tokens("fulfill"),
        )
    failure = failure_of(caught.value)
    assert failure.reason == "ENTITLEMENT_CANCELLED"
    assert failure.metadata["line"] == "0"
    types = await _event_types(fulfillment_stub, tokens, ent.entitlement_id)
    assert SUSPENDED not in types
    assert REINSTATED not in types


@pytest.mark.usefixtures("skus")
async def test_sku_operations_suspend_and_reinstate_through_orders_with_replay(
    fulfillment_stub: Fulfillment, licensing_stub: Licensing, tokens: Tokens, app: AppContext
) -> None:
    ref = "stripe:sub_dunning"
    ent = await _new(fulfillment_stub, tokens, ref)
    held = await licensing_stub.ActivateSeat(_activation(ent.license_key, "device-0001"))
    failed = order("invoice-1-failed", "SUSPEND", reference=ref)
    applied = await fulfillment_stub.FulfillOrder(failed, metadata=tokens("fulfill"))
    assert applied.entitlements[0].status == ful.ENTITLEMENT_STATUS_SUSPENDED
    assert list(applied.order.results[0].operations) == ["suspend"]
    replayed = await fulfillment_stub.FulfillOrder(failed, metadata=tokens("fulfill"))
    assert replayed.entitlements[0].status == ful.ENTITLEMENT_STATUS_SUSPENDED
    again = order("invoice-1-failed-retry", "SUSPEND", reference=ref)  # already suspended
    await fulfillment_stub.FulfillOrder(again, metadata=tokens("fulfill"))
    await _refused(
        licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=held.lease.token)),
        "ENTITLEMENT_SUSPENDED",
    )

    # All or nothing: a reinstating line beside a bad one changes nothing.
    mixed = order("invoice-1-paid", "REINSTATE", reference=ref)
    mixed.lines.append(ful.OrderLine(sku_id="NO-SUCH-SKU", quantity=1))
    with pytest.raises(grpc.aio.AioRpcError):
        await fulfillment_stub.FulfillOrder(mixed, metadata=tokens("fulfill"))
    paid = order("invoice-1-paid", "REINSTATE", reference=ref)
    reinstated = await fulfillment_stub.FulfillOrder(paid, metadata=tokens("fulfill"))
    assert reinstated.entitlements[0].status == ful.ENTITLEMENT_STATUS_ACTIVE
    await fulfillment_stub.FulfillOrder(paid, metadata=tokens("fulfill"))  # replay
    renewed = await licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=held.lease.token))
    assert _subject(renewed.lease.token) == held.activation_id

    types = await _event_types(fulfillment_stub, tokens, ent.entitlement_id)
    assert types.count(SUSPENDED) == 1
    assert types.count(REINSTATED) == 1
    # An order's changes are its own audit records (order.fulfil, the operations in their
    # details), one per order applied: none for the replay or the rolled-back order.
    async with app.store.read() as tx:
        rows = await tx.audit.list(AuditFilter(entitlement_id=ent.entitlement_id), None, 100)
    assert sorted(
        (r.resource, tuple(r.details["operations"])) for r in rows if r.action == "order.fulfil"
    ) == sorted(
        [
            (f"orders/test/{ent_order}", ops)
            for ent_order, ops in (
                ("new-stripe:sub_dunning", ("create",)),
                ("invoice-1-failed", ("suspend",)),
                ("invoice-1-failed-retry", ("suspend",)),
                ("invoice-1-paid", ("reinstate",)),
            )
        ]
    )
    assert await _audit(app, ent.entitlement_id) == []


@pytest.mark.usefixtures("skus")
async def test_list_entitlements_finds_suspended_ones_under_suspended_only(
    fulfillment_stub: Fulfillment, tokens: Tokens, app: AppContext
) -> None:
    running = await _new(fulfillment_stub, tokens, "stripe:sub_a")
    held = await _new(fulfillment_stub, tokens, "stripe:sub_b")
    held_and_ended = await _new(fulfillment_stub, tokens, "stripe:sub_c", sku="SUB-SHORT")
    ended = await _new(fulfillment_stub, tokens, "stripe:sub_d", sku="SUB-SHORT")
    await _suspend(fulfillment_stub, tokens, held.entitlement_id)
    await _suspend(fulfillment_stub, tokens, held_and_ended.entitlement_id)
    assert isinstance(app.clock, SystemClock)
    app.clock.offset += timedelta(days=2)

    async def listed(status: int) -> set[str]:
        request = ful.ListEntitlementsRequest(status=status, page_size=100)  # type: ignore[arg-type]
        response = await fulfillment_stub.ListEntitlements(request, metadata=tokens("read"))
        return {e.entitlement_id for e in response.entitlements}

    suspended = {held.entitlement_id, held_and_ended.entitlement_id}
    assert await listed(ful.ENTITLEMENT_STATUS_SUSPENDED) == suspended
    assert await listed(ful.ENTITLEMENT_STATUS_ACTIVE) == {running.entitlement_id}
    assert await listed(ful.ENTITLEMENT_STATUS_EXPIRED) == {ended.entitlement_id}
    await _reinstate(fulfillment_stub, tokens, held_and_ended.entitlement_id)
    assert await listed(ful.ENTITLEMENT_STATUS_EXPIRED) == {
        ended.entitlement_id,
        held_and_ended.entitlement_id,
    }


@pytest.mark.usefixtures("skus")
async def test_an_invitation_redeems_while_suspended_and_its_seat_waits_for_reinstatement(
    fulfillment_stub: Fulfillment, licensing_stub: Licensing, tokens: Tokens
) -> None:
    request = order("named-1", "SUB-3", reference="stripe:sub_named")
    request.lines[0].named_user_emails.append("ada@example.com")
    ent = (await fulfillment_stub.FulfillOrder(request, metadata=tokens("fulfill"))).entitlements[0]
    (user,) = ent.named_users
    await _suspend(fulfillment_stub, tokens, ent.entitlement_id)
    redeemed = await licensing_stub.RedeemInvitation(
        lic.RedeemInvitationRequest(invitation_code=user.invitation_code)
    )
    seat = lic.ActivateSeatRequest(
        identity_token=redeemed.identity_token, product_id=PRODUCT_ID, fingerprint="device-0001"
    )
    await _refused(licensing_stub.ActivateSeat(seat), "ENTITLEMENT_SUSPENDED")
    await _reinstate(fulfillment_stub, tokens, ent.entitlement_id)
    taken = await licensing_stub.ActivateSeat(seat)
    assert taken.entitlement.seats_in_use == 1
