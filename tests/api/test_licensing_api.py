"""LicensingService through a real server: activation, leases, seat limits."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.fulfillment.v1 import fulfillment_pb2_grpc
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.app.context import AppContext
from keyturn.server.clock import SystemClock

from conftest import Tokens
from support.rpc import PRODUCT_ID, failure_of

Licensing = licensing_pb2_grpc.LicensingServiceStub


def activation(key: str, fingerprint: str, product_id: str = PRODUCT_ID) -> lic.ActivateSeatRequest:
    return lic.ActivateSeatRequest(
        license_key=key, product_id=product_id, fingerprint=fingerprint, label="laptop"
    )


async def jwks_of(stub: Licensing) -> jwt.PyJWKSet:
    response = await stub.GetSigningKeys(lic.GetSigningKeysRequest())
    return jwt.PyJWKSet.from_dict(json.loads(response.jwks_json))


def verify(token: str, keys: jwt.PyJWKSet) -> dict[str, object]:
    kid = jwt.get_unverified_header(token)["kid"]
    return jwt.decode(
        token, keys[kid].key, algorithms=["EdDSA"], audience=PRODUCT_ID, issuer="keyturn"
    )


async def test_lease_verifies_offline_with_the_published_keys(
    licensing_stub: Licensing, license_of
) -> None:  # type: ignore[no-untyped-def]
    entitlement = await license_of(seats=2)
    response = await licensing_stub.ActivateSeat(activation(entitlement.license_key, "device-0001"))
    claims = verify(response.lease.token, await jwks_of(licensing_stub))
    assert claims["sub"] == response.activation_id
    assert claims["entitlement_id"] == entitlement.entitlement_id
    assert claims["edition"] == "standard"
    assert claims["features"] == {"export-pdf": None, "projects": 10}
    assert claims["fingerprint"] == "device-0001"
    assert claims["exp"] == response.lease.expire_time.seconds
    assert claims["entitlement_end"] == entitlement.end_time.seconds
    assert response.entitlement.seats == 2
    assert response.entitlement.seats_in_use == 1
    header = jwt.get_unverified_header(response.lease.token)
    assert header["alg"] == "EdDSA"
    structured = (await licensing_stub.GetSigningKeys(lic.GetSigningKeysRequest())).keys
    assert [k.kid for k in structured] == [header["kid"]]


async def test_tampered_or_foreign_lease_fails_verification(
    licensing_stub: Licensing, license_of
) -> None:  # type: ignore[no-untyped-def]
    entitlement = await license_of(seats=1)
    token = (
        await licensing_stub.ActivateSeat(activation(entitlement.license_key, "device-0001"))
    ).lease.token
    keys = await jwks_of(licensing_stub)
    header, payload, signature = token.split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    claims["features"]["projects"] = 100000
    forged_payload = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    with pytest.raises(jwt.InvalidSignatureError):
        verify(f"{header}.{forged_payload}.{signature}", keys)
    kid = jwt.get_unverified_header(token)["kid"]
    foreign = jwt.encode(
        claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": kid}
    )
    with pytest.raises(jwt.InvalidSignatureError):
        verify(foreign, keys)
    # The server refuses both as well.
    for bad in (f"{header}.{forged_payload}.{signature}", foreign):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=bad))
        failure = failure_of(caught.value)
        assert (failure.code, failure.reason) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_LEASE")


async def test_fifty_concurrent_activations_take_exactly_the_seats(
    licensing_stub: Licensing, license_of, app: AppContext
) -> None:  # type: ignore[no-untyped-def]
    entitlement = await license_of(seats=5)
    calls = [
        licensing_stub.ActivateSeat(activation(entitlement.license_key, f"device-{i:04d}"))
        for i in range(50)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    granted = [r for r in results if isinstance(r, lic.ActivateSeatResponse)]
    refused = [failure_of(r) for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(granted) == 5
    assert len(refused) == 45
    assert {(f.code, f.reason) for f in refused} == {
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "SEATS_EXHAUSTED")
    }
    assert len({g.activation_id for g in granted}) == 5
    # Counted with plain SQL, independently of the seat code under test.
    async with app.store.read() as tx:
        held = await tx.connection.execute(
            text(
                "SELECT count(*) FROM activations WHERE entitlement_id = :id "
                "AND released_time IS NULL AND lease_expire_time > :now"
            ),
            {"id": entitlement.entitlement_id, "now": app.clock.now()},
        )
    assert held.scalar_one() == 5


async def test_same_fingerprint_reuses_its_seat(licensing_stub: Licensing, license_of) -> None:  # type: ignore[no-untyped-def]
    entitlement = await license_of(seats=1)
    first = await licensing_stub.ActivateSeat(activation(entitlement.license_key, "device-0001"))
    again = await licensing_stub.ActivateSeat(activation(entitlement.license_key, "device-0001"))
    assert again.activation_id == first.activation_id
    assert again.entitlement.seats_in_use == 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await licensing_stub.ActivateSeat(activation(entitlement.license_key, "device-0002"))
    assert failure_of(caught.value).reason == "SEATS_EXHAUSTED"


async def test_renew_rotates_the_lease_and_voids_the_old_token(
    licensing_stub: Licensing, license_of
) -> None:  # type: ignore[no-untyped-def]
    entitlement = await license_of(seats=1)
    first = await licensing_stub.ActivateSeat(activation(entitlement.license_key, "device-0001"))
    renewed = await licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=first.lease.token))
    keys = await jwks_of(licensing_stub)
    old_claims, new_claims = verify(first.lease.token, keys), verify(renewed.lease.token, keys)
    assert new_claims["jti"] != old_claims["jti"]
    assert new_claims["sub"] == old_claims["sub"]
    for call in (licensing_stub.RenewLease, licensing_stub.ReleaseSeat):
        request_type = (
            lic.RenewLeaseRequest if call is licensing_stub.RenewLease else lic.ReleaseSeatRequest
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(request_type(lease_token=first.lease.token))
        failure = failure_of(caught.value)
        assert (failure.code, failure.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "LEASE_SUPERSEDED",
        )


async def test_release_is_idempotent_and_frees_the_seat(
    licensing_stub: Licensing, license_of
) -> None:  # type: ignore[no-untyped-def]
    entitlement = await license_of(seats=1)
    first = await licensing_stub.ActivateSeat(activation(entitlement.license_key, "device-0001"))
    await licensing_stub.ReleaseSeat(lic.ReleaseSeatRequest(lease_token=first.lease.token))
    await licensing_stub.ReleaseSeat(lic.ReleaseSeatRequest(lease_token=first.lease.token))
    other = await licensing_stub.ActivateSeat(activation(entitlement.license_key, "device-0002"))
    assert other.entitlement.seats_in_use == 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=first.lease.token))
    assert failure_of(caught.value).reason == "LEASE_SUPERSEDED"


async def test_unknown_and_malformed_keys_get_the_same_answer(
    licensing_stub: Licensing, license_of
) -> None:  # type: ignore[no-untyped-def]
    entitlement = await license_of(seats=1)
    real = entitlement.license_key
    typo = real[:-1] + ("0" if real[-1] != "0" else "1")
    from keyturn.server.domain.license_key import generate_license_key

    answers = set()
    for key in (typo, "not-a-key", generate_license_key(), real.lower().replace("-", "")[:-2]):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await licensing_stub.ActivateSeat(activation(key, "device-0001"))
        failure = failure_of(caught.value)
        answers.add((failure.code, failure.reason, failure.message))
    assert answers == {
        (grpc.StatusCode.UNAUTHENTICATED, "INVALID_LICENSE_KEY", "the license key is not valid")
    }
    # Case, dashes and spaces do not matter for a real key.
    relaxed = " ".join(real.lower().split("-"))
    ok = await licensing_stub.ActivateSeat(activation(relaxed, "device-0001"))
    assert ok.entitlement.entitlement_id == entitlement.entitlement_id


async def test_key_for_another_product_is_refused(licensing_stub: Licensing, license_of) -> None:  # type: ignore[no-untyped-def]
    entitlement = await license_of(seats=1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await licensing_stub.ActivateSeat(
            activation(entitlement.license_key, "device-0001", "other-app")
        )
    failure = failure_of(caught.value)
    assert (failure.code, failure.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PRODUCT_MISMATCH")


async def test_a_lapse_is_recorded_once_when_the_entitlement_is_next_used(
    app: AppContext,
    license_of,  # type: ignore[no-untyped-def]
    licensing_stub: Licensing,
    fulfillment_stub: fulfillment_pb2_grpc.FulfillmentServiceStub,
    tokens: Tokens,
) -> None:
    clock = app.clock
    assert isinstance(clock, SystemClock)
    entitlement = await license_of(1)
    key = entitlement.license_key
    first = await licensing_stub.ActivateSeat(activation(key, "device-aaaa"))
    beyond_lapse = entitlement.lease_duration.ToTimedelta() + app.lapse_grace + timedelta(minutes=1)
    clock.offset += beyond_lapse
    second = await licensing_stub.ActivateSeat(activation(key, "device-bbbb"))
    clock.offset += beyond_lapse
    again = await licensing_stub.ActivateSeat(activation(key, "device-aaaa"))
    events = await fulfillment_stub.ListEntitlementEvents(
        ful.ListEntitlementEventsRequest(entitlement_id=entitlement.entitlement_id),
        metadata=tokens("read"),
    )
    a, b = first.activation_id, second.activation_id
    assert again.activation_id == a
    assert [(e.type, e.activation_id, e.entitlement.seats_in_use) for e in events.events] == [
        (ful.ENTITLEMENT_EVENT_TYPE_CREATED, "", 0),
        (ful.ENTITLEMENT_EVENT_TYPE_SEAT_ACTIVATED, a, 1),
        (ful.ENTITLEMENT_EVENT_TYPE_LEASE_LAPSED, a, 0),  # noticed as another device comes
        (ful.ENTITLEMENT_EVENT_TYPE_SEAT_ACTIVATED, b, 1),
        (ful.ENTITLEMENT_EVENT_TYPE_LEASE_LAPSED, b, 0),
        (ful.ENTITLEMENT_EVENT_TYPE_SEAT_ACTIVATED, a, 1),  # a's old lapse is not repeated
    ]
