"""LicensingClient and AsyncLicensingClient against a real server: one body, both clients.

Every test runs for the sync and the asyncio client (the `open_client`
fixture) on every database backend.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from client_harness import LicenseOf, Licensing, MovableClock, OpenLicensing, Signal, TcpProxy

from keyturn.client import (
    InvalidLicenseKeyError,
    InvalidRequestError,
    KeyturnError,
    LeaseSupersededError,
    ProductMismatchError,
    RetryPolicy,
    SeatDeactivatedError,
    SeatsExhaustedError,
    UnavailableError,
)
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.fulfillment.v1 import fulfillment_pb2_grpc
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.app.context import AppContext
from keyturn.server.clock import SystemClock

from conftest import Tokens
from support.rpc import PRODUCT_ID

pytest_plugins = ["client_fixtures"]


async def test_activate_returns_a_verified_lease(
    licensing: Licensing, license_of: LicenseOf
) -> None:
    entitlement = await license_of(seats=2)
    before = datetime.now(UTC)
    lease = await licensing.activate(entitlement.license_key, label="laptop")
    assert lease.claims["sub"] == lease.activation_id
    assert lease.claims["fingerprint"] == "device-0001"
    assert lease.product_id == PRODUCT_ID
    assert lease.entitlement_id == entitlement.entitlement_id
    assert lease.edition == "standard"
    assert lease.features == {"export-pdf": None, "projects": 10}
    assert lease.has_feature("export-pdf")
    assert not lease.has_feature("render-farm")
    assert before < lease.renew_time < lease.expire_time
    assert lease.expire_time == datetime.fromtimestamp(lease.claims["exp"], UTC)
    info = lease.entitlement
    assert (info.entitlement_id, info.product_id, info.edition_id) == (
        entitlement.entitlement_id,
        PRODUCT_ID,
        "standard",
    )
    assert (info.status, info.seats, info.seats_in_use, info.seat_limit) == ("active", 2, 1, 2)
    assert info.end_time == entitlement.end_time.ToDatetime(tzinfo=UTC)
    assert info.features == lease.features
    # Verified before it was returned: the keys were fetched once, and are cached.
    assert licensing.calls.count("GetSigningKeys") == 1
    assert await licensing.verify_lease(lease.token) == dict(lease.claims)
    assert licensing.calls.count("GetSigningKeys") == 1


async def test_same_fingerprint_reuses_its_seat_and_no_free_seat_is_not_retried(
    licensing: Licensing, license_of: LicenseOf
) -> None:
    entitlement = await license_of(seats=1)
    first = await licensing.activate(entitlement.license_key)
    again = await licensing.activate(entitlement.license_key)  # same fingerprint: same seat
    assert again.activation_id == first.activation_id
    assert again.entitlement.seats_in_use == 1
    with pytest.raises(SeatsExhaustedError) as caught:
        await licensing.activate(entitlement.license_key, fingerprint="device-0002")
    error = caught.value
    assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "SEATS_EXHAUSTED")
    assert error.metadata["seats"] == "1"
    # Only UNAVAILABLE is retried: one attempt per activation.
    assert licensing.calls.count("ActivateSeat") == 3


async def test_bad_credentials_and_bad_input_get_typed_errors(
    licensing: Licensing, open_client: OpenLicensing, license_of: LicenseOf
) -> None:
    entitlement = await license_of(seats=1)
    with pytest.raises(InvalidLicenseKeyError) as bad_key:
        await licensing.activate("AAAA-BBBB-CCCC-DDDD")
    assert (bad_key.value.code, bad_key.value.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_LICENSE_KEY",
    )
    other_app = await open_client(product_id="other-app")
    with pytest.raises(ProductMismatchError) as mismatch:
        await other_app.activate(entitlement.license_key)
    assert mismatch.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert mismatch.value.metadata == {"product_id": "other-app"}
    with pytest.raises(InvalidRequestError) as bad_input:
        await licensing.activate(entitlement.license_key, fingerprint="short", label="x" * 201)
    assert bad_input.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in bad_input.value.field_violations] == ["fingerprint", "label"]
    with pytest.raises(ValueError, match="exactly one"):
        await licensing.activate(entitlement.license_key, identity_token="also")
    assert licensing.calls.count("ActivateSeat") == 2  # the last one never left the client
    with pytest.raises(KeyturnError) as not_a_lease:
        await licensing.release("not-a-lease")
    error = not_a_lease.value
    assert error.reason == "INVALID_LEASE"
    assert error.code is grpc.StatusCode.UNAUTHENTICATED
    assert error.message
    assert str(error).startswith("INVALID_LEASE: ")


async def test_renew_rotates_the_token_and_voids_the_old_one(
    licensing: Licensing, license_of: LicenseOf
) -> None:
    entitlement = await license_of(seats=1)
    lease = await licensing.activate(entitlement.license_key)
    old_token, old_jti = lease.token, lease.claims["jti"]
    renewed = await licensing.renew(lease)
    assert renewed is lease  # updated in place
    assert lease.token != old_token
    assert lease.claims["jti"] != old_jti
    assert lease.claims["sub"] == lease.activation_id
    with pytest.raises(LeaseSupersededError) as caught:
        await licensing.release(old_token)
    assert (caught.value.code, caught.value.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "LEASE_SUPERSEDED",
    )
    await licensing.release_lease(lease)  # the current token still releases
    assert lease.released


async def test_release_frees_the_seat_and_with_releases_on_exit(
    licensing: Licensing, license_of: LicenseOf
) -> None:
    entitlement = await license_of(seats=1)
    first = await licensing.activate(entitlement.license_key)
    await licensing.release(first)
    await licensing.release(first)  # released already: nothing to do
    assert licensing.calls.count("ReleaseSeat") == 1
    second = await licensing.activate(entitlement.license_key, fingerprint="device-0002")
    async with licensing.held(second) as held:
        assert held is second
        with pytest.raises(SeatsExhaustedError):
            await licensing.activate(entitlement.license_key, fingerprint="device-0003")
    assert second.released
    third = await licensing.activate(entitlement.license_key, fingerprint="device-0003")
    assert third.entitlement.seats_in_use == 1
    # An error inside the block still releases, and is the error that propagates.
    with pytest.raises(RuntimeError, match="app failed"):
        async with licensing.held(third):
            raise RuntimeError("app failed")
    assert third.released
    await licensing.activate(entitlement.license_key, fingerprint="device-0004")


async def test_heartbeat_renews_until_released(licensing: Licensing, license_of: LicenseOf) -> None:
    entitlement = await license_of(seats=1)
    renewed, lost = Signal(times=3), Signal()
    lease = await licensing.activate(
        entitlement.license_key,
        heartbeat=True,
        heartbeat_interval=0.05,
        on_renewed=renewed,
        on_lost=lost,
    )
    first_jti = lease.claims["jti"]
    await renewed.wait()
    assert all(args == (lease,) for args in renewed.calls)
    assert lease.claims["jti"] != first_jti
    assert licensing.calls.count("RenewLease") >= 3
    await licensing.release_lease(lease)  # stops the heartbeat first, then releases
    assert lease.released
    assert not lease.heartbeat.running
    assert lost.calls == []
    assert lease.lost is None
    # The seat is free: the heartbeat did not renew after the release.
    await licensing.activate(entitlement.license_key, fingerprint="device-0002")


async def test_heartbeat_reports_a_seat_taken_after_a_lapse_once(
    licensing: Licensing,
    license_of: LicenseOf,
    app: AppContext,
    licensing_stub: licensing_pb2_grpc.LicensingServiceStub,
) -> None:
    entitlement = await license_of(seats=1)
    lost = Signal()
    lease = await licensing.activate(entitlement.license_key, heartbeat=True, on_lost=lost)
    # The device sleeps past its lease and the grace; another device takes the seat.
    assert isinstance(app.clock, SystemClock)
    app.clock.offset += (
        entitlement.lease_duration.ToTimedelta() + app.lapse_grace + timedelta(minutes=1)
    )
    await licensing_stub.ActivateSeat(
        lic.ActivateSeatRequest(
            license_key=entitlement.license_key, product_id=PRODUCT_ID, fingerprint="device-0002"
        )
    )
    await licensing.wake(lease)  # as after a resume from sleep
    await lost.wait()
    await licensing.stop_heartbeat(lease)
    assert len(lost.calls) == 1
    [(lost_lease, error)] = lost.calls
    assert lost_lease is lease
    assert lease.lost is error
    assert isinstance(error, SeatsExhaustedError)
    assert error.reason == "SEATS_EXHAUSTED"
    assert licensing.calls.count("RenewLease") == 1


async def test_heartbeat_reports_a_deactivated_seat_as_lost_and_does_not_take_it_again(
    licensing: Licensing,
    license_of: LicenseOf,
    fulfillment_stub: fulfillment_pb2_grpc.FulfillmentServiceStub,
    tokens: Tokens,
) -> None:
    entitlement = await license_of(seats=1)
    lost = Signal()
    lease = await licensing.activate(entitlement.license_key, heartbeat=True, on_lost=lost)
    await fulfillment_stub.DeactivateSeat(
        ful.DeactivateSeatRequest(
            entitlement_id=entitlement.entitlement_id,
            activation_id=lease.activation_id,
            reason="laptop stolen",
        ),
        metadata=tokens("fulfill"),
    )
    await licensing.wake(lease)
    await lost.wait()
    await licensing.stop_heartbeat(lease)
    [(lost_lease, error)] = lost.calls
    assert lost_lease is lease
    assert lease.lost is error
    assert isinstance(error, SeatDeactivatedError)
    assert error.metadata == {"activation_id": lease.activation_id}
    assert licensing.calls.count("ActivateSeat") == 1  # the seat was not taken back
    assert (await licensing.check(entitlement.license_key)).seats_in_use == 0


async def test_heartbeat_rides_out_an_outage(
    open_client: OpenLicensing, proxy: TcpProxy, license_of: LicenseOf
) -> None:
    entitlement = await license_of(seats=1)
    licensing = await open_client(proxy.address)
    renewed, lost = Signal(), Signal()
    lease = await licensing.activate(
        entitlement.license_key, heartbeat=True, on_renewed=renewed, on_lost=lost
    )
    failed = Signal(times=2)
    licensing.calls.after.append(lambda name, bad: failed() if bad else None)
    proxy.pause()
    await licensing.wake(lease)
    await failed.wait()  # two renewals could not reach the server...
    proxy.resume()
    await renewed.wait()  # ...and the heartbeat kept trying until one did
    assert lost.calls == []
    assert lease.lost is None
    assert licensing.calls.count("RenewLease") >= 3


async def test_heartbeat_takes_its_seat_again_when_a_renewal_was_answered_unseen(
    open_client: OpenLicensing,
    proxy: TcpProxy,
    license_of: LicenseOf,
    licensing_stub: licensing_pb2_grpc.LicensingServiceStub,
) -> None:
    """A renewal that commits but whose answer never arrives (a restart cut it off) leaves
    the device with a superseded token; the heartbeat activates again with the same
    fingerprint and keeps the same seat rather than reporting the lease lost."""
    entitlement = await license_of(seats=1)
    licensing = await open_client(proxy.address)
    renewed, lost = Signal(), Signal()
    lease = await licensing.activate(
        entitlement.license_key, heartbeat=True, on_renewed=renewed, on_lost=lost
    )
    first_activation = lease.activation_id
    failed = Signal()
    licensing.calls.after.append(lambda name, bad: failed() if bad else None)
    proxy.pause()
    await licensing.wake(lease)
    await failed.wait()  # the heartbeat's renewal went unanswered...
    # ...and a renewal with its token did commit (its answer is what the device lost).
    await licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=lease.token))
    proxy.resume()
    await renewed.wait()
    assert lost.calls == []
    assert lease.lost is None
    assert lease.activation_id == first_activation
    assert licensing.calls.count("ActivateSeat") == 2
    info = await licensing.check(entitlement.license_key)
    assert info.seats_in_use == 1
    await licensing.stop_heartbeat(lease)


async def test_heartbeat_gives_up_when_the_lease_expires_unrenewed(
    open_client: OpenLicensing, proxy: TcpProxy, license_of: LicenseOf
) -> None:
    entitlement = await license_of(seats=1)
    clock = MovableClock()
    licensing = await open_client(proxy.address, clock=clock)
    lost = Signal()
    lease = await licensing.activate(entitlement.license_key, heartbeat=True, on_lost=lost)
    proxy.pause()
    clock.offset = lease.expire_time - datetime.now(UTC) + timedelta(seconds=5)
    await licensing.wake(lease)
    await lost.wait()
    await licensing.stop_heartbeat(lease)
    [(_, error)] = lost.calls
    assert isinstance(error, UnavailableError)
    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert lease.lost is error


async def test_unavailable_is_retried_with_backoff(
    open_client: OpenLicensing, proxy: TcpProxy, license_of: LicenseOf
) -> None:
    entitlement = await license_of(seats=1)
    proxy.pause()
    licensing = await open_client(
        proxy.address, retry=RetryPolicy(attempts=3, initial=0.01, maximum=0.02)
    )
    with pytest.raises(UnavailableError) as caught:
        await licensing.activate(entitlement.license_key)
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert licensing.calls.count("ActivateSeat") == 3
    # Back after the first failure: a retry gets through (with room for gRPC to reconnect).
    patient = await open_client(
        proxy.address, retry=RetryPolicy(attempts=20, initial=0.05, maximum=0.25)
    )
    patient.calls.after.append(lambda name, bad: proxy.resume())
    lease = await patient.activate(entitlement.license_key)
    assert lease.entitlement.seats_in_use == 1
    assert patient.calls.names[0] == "ActivateSeat"
    assert patient.calls.count("ActivateSeat") >= 2


async def test_clients_open_and_close_their_own_channel(
    open_client: OpenLicensing, license_of: LicenseOf
) -> None:
    entitlement = await license_of(seats=1)
    licensing = await open_client(counted=False)
    lease = await licensing.activate(entitlement.license_key)
    await licensing.release_lease(lease)
    await licensing.close()
    other = await open_client(counted=False)
    await other.activate(entitlement.license_key, fingerprint="device-0002")
