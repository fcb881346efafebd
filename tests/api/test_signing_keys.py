"""Signing-key rotation through a real server on both backends.

Leases are checked offline as a shipped app checks them: PyJWT against the JWKS
that GetSigningKeys publishes. Rotations are made with the server's own
`rotate_signing_key`, in the server's AppContext or in a second one over the
same database (another process, as `keyturn keys rotate` is). Time moves by
shifting the server clock, never by sleeping; offline checks use the real clock.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.app.context import AppContext
from keyturn.server.bootstrap import build_context
from keyturn.server.config import Settings
from keyturn.server.domain.ids import new_id
from keyturn.server.leases.keyring import Rotation, rotate_signing_key

from conftest import Tokens, settings_for
from support.catalog import put_catalog
from support.rpc import PRODUCT_ID, create_sku, failure_of, order

Licensing = licensing_pb2_grpc.LicensingServiceStub
Catalog = catalog_pb2_grpc.CatalogServiceStub
Fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub

ISSUER = "keyturn"  # settings_for leaves the default issuer
MARGIN = timedelta(minutes=5)  # added to the longest lease when a key is retired

THROUGH_PGBOUNCER = True  # conftest: also through PgBouncer in transaction mode


def activation(key: str, fingerprint: str) -> lic.ActivateSeatRequest:
    return lic.ActivateSeatRequest(
        license_key=key, product_id=PRODUCT_ID, fingerprint=fingerprint, label="laptop"
    )


async def published(stub: Licensing) -> tuple[list[str], jwt.PyJWKSet]:
    """The kids of GetSigningKeys in its order, and its JWKS document as PyJWT reads it.

    The structured list and the JSON document must name the same keys in the same order.
    """
    response = await stub.GetSigningKeys(lic.GetSigningKeysRequest())
    document = json.loads(response.jwks_json)
    kids = [key.kid for key in response.keys]
    assert [key["kid"] for key in document["keys"]] == kids
    assert [key["x"] for key in document["keys"]] == [key.x for key in response.keys]
    return kids, jwt.PyJWKSet.from_dict(document)


REFRESH_SECONDS = Settings.model_fields["signing_key_refresh_seconds"].default


def kid_of(token: str) -> str:
    kid = jwt.get_unverified_header(token)["kid"]
    assert isinstance(kid, str)
    return kid


def verify(token: str, keys: jwt.PyJWKSet) -> dict[str, Any]:
    """What an app does offline: the key named by `kid` in the published set, EdDSA only."""
    claims: dict[str, Any] = jwt.decode(
        token, keys[kid_of(token)].key, algorithms=["EdDSA"], audience=PRODUCT_ID, issuer=ISSUER
    )
    return claims


async def rotate(ctx: AppContext) -> tuple[datetime, Rotation]:
    now = ctx.clock.now()
    return now, await ctx.keys.rotate(now)


async def test_lease_signed_before_a_rotation_still_verifies_and_new_leases_use_the_new_key(
    licensing_stub: Licensing, license_of, app: AppContext
) -> None:  # type: ignore[no-untyped-def]
    entitlement = await license_of(seats=2)
    before = await licensing_stub.ActivateSeat(activation(entitlement.license_key, "device-0001"))
    old_kid = kid_of(before.lease.token)
    kids, keys_before = await published(licensing_stub)
    assert kids == [old_kid]
    old_x = keys_before[old_kid].key

    _, rotation = await rotate(app)
    assert rotation.new_kid != old_kid
    assert rotation.retired == [old_kid]

    kids, keys_after = await published(licensing_stub)
    assert kids == [rotation.new_kid, old_kid], "both keys, newest first"
    # The old key is published unchanged, and the lease it signed still checks out offline.
    assert keys_after[old_kid].key.public_bytes_raw() == old_x.public_bytes_raw()
    claims = verify(before.lease.token, keys_after)
    assert claims["sub"] == before.activation_id
    assert claims["entitlement_id"] == entitlement.entitlement_id

    after = await licensing_stub.ActivateSeat(activation(entitlement.license_key, "device-0002"))
    assert kid_of(after.lease.token) == rotation.new_kid
    assert verify(after.lease.token, keys_after)["sub"] == after.activation_id
    # Only the new key can have signed it.
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(
            after.lease.token,
            keys_after[old_kid].key,
            algorithms=["EdDSA"],
            audience=PRODUCT_ID,
            issuer=ISSUER,
        )


async def sku_with_lease(
    catalog: Catalog, auth: tuple[tuple[str, str], ...], sku_id: str, lease: timedelta
) -> cat.Sku:
    sku = create_sku(sku_id, seats=2)
    sku.operations[0].create.lease_duration.seconds = int(lease.total_seconds())
    await put_catalog(catalog, auth, sku)
    return sku


async def test_old_key_leaves_the_jwks_at_its_retire_time_after_the_longest_lease(
    licensing_stub: Licensing,
    catalog_stub: Catalog,
    fulfillment_stub: Fulfillment,
    tokens: Tokens,
    app: AppContext,
) -> None:
    long_lease, short_lease = timedelta(hours=2), timedelta(minutes=15)
    await sku_with_lease(catalog_stub, tokens("catalog"), "LEASE-2H", long_lease)
    await sku_with_lease(catalog_stub, tokens("catalog"), "LEASE-15M", short_lease)
    entitlements = {}
    for sku_id in ("LEASE-15M", "LEASE-2H"):
        response = await fulfillment_stub.FulfillOrder(
            order(f"order-{sku_id}", sku_id), metadata=tokens("fulfill")
        )
        entitlements[sku_id] = response.entitlements[0]
    short = await licensing_stub.ActivateSeat(
        activation(entitlements["LEASE-15M"].license_key, "device-0001")
    )
    long = await licensing_stub.ActivateSeat(
        activation(entitlements["LEASE-2H"].license_key, "device-0002")
    )
    old_kid = kid_of(long.lease.token)
    _, keys_before = await published(licensing_stub)
    long_claims = verify(long.lease.token, keys_before)
    assert long_claims["exp"] - long_claims["iat"] == long_lease.total_seconds()

    rotated_at, rotation = await rotate(app)

    # Retire time: rotation time + the longest lease of any entitlement + the margin,
    # so past the expiry of every lease the old key can have signed.
    assert rotation.retire_time == rotated_at + long_lease + MARGIN
    assert rotation.retire_time - rotated_at >= long_lease
    assert rotation.retire_time.timestamp() >= long_claims["exp"]
    async with app.store.read() as tx:
        stored = {key.kid: key for key in await tx.signing_keys.list_all()}
    assert stored[old_kid].retire_time == rotation.retire_time
    assert stored[rotation.new_kid].retire_time is None

    # Shortly before the retire time (server clock), the old key is still published.
    app.clock.offset = rotation.retire_time - datetime.now(UTC) - timedelta(seconds=30)  # type: ignore[attr-defined]
    kids, _ = await published(licensing_stub)
    assert kids == [rotation.new_kid, old_kid]

    # Past it, only the new key is.
    app.clock.offset = rotation.retire_time - datetime.now(UTC) + timedelta(seconds=1)  # type: ignore[attr-defined]
    kids, keys_after = await published(licensing_stub)
    assert kids == [rotation.new_kid]
    # The old key's leases no longer verify with the published set (the offline check
    # runs on the real clock, where they have not expired: the key alone is missing).
    for token in (short.lease.token, long.lease.token):
        verify(token, keys_before)  # still fine with the set published before retirement
        with pytest.raises(KeyError, match=old_kid):
            verify(token, keys_after)
        for key in keys_after.keys:
            with pytest.raises(jwt.InvalidSignatureError):
                jwt.decode(token, key.key, algorithms=["EdDSA"], audience=PRODUCT_ID, issuer=ISSUER)

    # The server still recognises what the retired key signed: the lapsed lease is
    # renewed (its seat is free) with a lease that the published set verifies.
    renewed = await licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=long.lease.token))
    assert kid_of(renewed.lease.token) == rotation.new_kid
    renewed_claims = jwt.decode(
        renewed.lease.token,
        keys_after[rotation.new_kid].key,
        algorithms=["EdDSA"],
        audience=PRODUCT_ID,
        issuer=ISSUER,
        options={"verify_iat": False, "verify_nbf": False},  # issued on the moved clock
    )
    assert renewed_claims["sub"] == long.activation_id


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """A compact JWS signed with HMAC-SHA256, built by hand (PyJWT refuses public keys)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}."


async def test_server_refuses_leases_of_unknown_keys_alg_none_and_hs256_with_the_public_key(
    licensing_stub: Licensing, license_of, app: AppContext
) -> None:  # type: ignore[no-untyped-def]
    entitlement = await license_of(seats=1)
    real = await licensing_stub.ActivateSeat(activation(entitlement.license_key, "device-0001"))
    kid = kid_of(real.lease.token)
    # The claims of the live lease: only the signature makes the forgeries differ from it.
    claims = jwt.decode(real.lease.token, options={"verify_signature": False})
    signing_key = app.keys.keyring.find(kid)
    assert signing_key is not None
    public = signing_key.public_key
    raw_public = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem_public = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    unknown_kid = new_id("key", app.clock.now())  # well formed: the server looks it up
    stranger = Ed25519PrivateKey.generate()
    forgeries = {
        "unknown key, unknown kid": jwt.encode(
            claims, stranger, algorithm="EdDSA", headers={"kid": unknown_kid}
        ),
        "unknown key, the real kid": jwt.encode(
            claims, stranger, algorithm="EdDSA", headers={"kid": kid}
        ),
        "alg none": unsigned({"alg": "none", "typ": "JWT", "kid": kid}, claims),
        "alg none, no kid": unsigned({"alg": "none", "typ": "JWT"}, claims),
        "HS256 with the raw public key": hs256(
            {"alg": "HS256", "typ": "JWT", "kid": kid}, claims, raw_public
        ),
        "HS256 with the PEM public key": hs256(
            {"alg": "HS256", "typ": "JWT", "kid": kid}, claims, pem_public
        ),
        "HS256 with the JWK x": hs256(
            {"alg": "HS256", "typ": "JWT", "kid": kid}, claims, b64url(raw_public).encode()
        ),
    }
    for name, token in forgeries.items():
        for call, request in (
            (licensing_stub.RenewLease, lic.RenewLeaseRequest(lease_token=token)),
            (licensing_stub.ReleaseSeat, lic.ReleaseSeatRequest(lease_token=token)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(request)  # type: ignore[operator]
            failure = failure_of(caught.value)
            assert (failure.code, failure.reason, failure.domain) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "INVALID_LEASE",
                "keyturn.dev",
            ), name
    # None of them touched the seat: it is still held, under the real lease.
    status = await licensing_stub.CheckLicense(
        lic.CheckLicenseRequest(license_key=entitlement.license_key, product_id=PRODUCT_ID)
    )
    assert status.entitlement.seats_in_use == 1
    # The same claims signed by the server's own key are accepted: the refusals above
    # were for the signature alone.
    genuine = jwt.encode(claims, signing_key.private_key, algorithm="EdDSA", headers={"kid": kid})
    renewed = await licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=genuine))
    renewed_claims = jwt.decode(renewed.lease.token, options={"verify_signature": False})
    assert renewed_claims["sub"] == real.activation_id
    assert renewed_claims["jti"] != claims["jti"]


class StoppedClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


async def test_rotation_by_another_process_signs_here_within_the_refresh_time(
    licensing_stub: Licensing, license_of, app: AppContext, database_url: str
) -> None:  # type: ignore[no-untyped-def]
    monotonic = StoppedClock()
    app.keys.monotonic = monotonic
    app.keys.forget_signing()
    entitlement = await license_of(seats=3)
    first = await licensing_stub.ActivateSeat(activation(entitlement.license_key, "device-0001"))
    old_kid = kid_of(first.lease.token)

    other = await build_context(settings_for(database_url))
    try:
        _, rotation = await rotate(other)
    finally:
        await other.store.close()
    assert rotation.retired == [old_kid]
    assert app.keys.keyring.find(rotation.new_kid) is None, "the server has not seen it yet"

    # GetSigningKeys reads the database: the new key is published at once.
    kids, keys = await published(licensing_stub)
    assert kids == [rotation.new_kid, old_kid]

    # Within the refresh time the key held in memory still signs, and its leases verify
    # against the published keys (the old key stays published past every such lease).
    monotonic.value += REFRESH_SECONDS - 0.001
    second = await licensing_stub.ActivateSeat(activation(entitlement.license_key, "device-0002"))
    assert kid_of(second.lease.token) == old_kid
    assert verify(second.lease.token, keys)["sub"] == second.activation_id

    # Once the refresh time has passed, the next activation looks again and signs with it.
    monotonic.value += 0.001
    third = await licensing_stub.ActivateSeat(activation(entitlement.license_key, "device-0003"))
    assert kid_of(third.lease.token) == rotation.new_kid
    assert verify(third.lease.token, keys)["sub"] == third.activation_id
    assert verify(first.lease.token, keys)["sub"] == first.activation_id


async def test_old_lease_renews_under_the_new_key_and_its_old_token_is_superseded(
    licensing_stub: Licensing, license_of, app: AppContext
) -> None:  # type: ignore[no-untyped-def]
    entitlement = await license_of(seats=1)
    first = await licensing_stub.ActivateSeat(activation(entitlement.license_key, "device-0001"))
    old_kid = kid_of(first.lease.token)
    _, rotation = await rotate(app)

    renewed = await licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=first.lease.token))
    assert kid_of(renewed.lease.token) == rotation.new_kid != old_kid
    assert renewed.entitlement.seats_in_use == 1
    _, keys = await published(licensing_stub)
    old_claims, new_claims = verify(first.lease.token, keys), verify(renewed.lease.token, keys)
    assert new_claims["sub"] == old_claims["sub"]
    assert new_claims["jti"] != old_claims["jti"]

    for call, request in (
        (licensing_stub.ReleaseSeat, lic.ReleaseSeatRequest(lease_token=first.lease.token)),
        (licensing_stub.RenewLease, lic.RenewLeaseRequest(lease_token=first.lease.token)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(request)  # type: ignore[operator]
        failure = failure_of(caught.value)
        assert (failure.code, failure.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "LEASE_SUPERSEDED",
        )
        assert failure.metadata.get("activation_id") == first.activation_id

    # The newest token, signed by the new key, releases the seat.
    await licensing_stub.ReleaseSeat(lic.ReleaseSeatRequest(lease_token=renewed.lease.token))
    status = await licensing_stub.CheckLicense(
        lic.CheckLicenseRequest(license_key=entitlement.license_key, product_id=PRODUCT_ID)
    )
    assert status.entitlement.seats_in_use == 0


async def test_concurrent_rotations_leave_exactly_one_signing_key(
    app: AppContext, database_url: str
) -> None:
    """Two processes rotating at once: each retires the key the other added first."""
    other = await build_context(settings_for(database_url))
    try:
        for _ in range(3):
            await asyncio.gather(
                rotate_signing_key(app.store, app.sealer, app.clock.now()),
                rotate_signing_key(other.store, other.sealer, other.clock.now()),
            )
        async with app.store.read() as tx:
            keys = await tx.signing_keys.list_all()
            signing = await tx.signing_keys.signing_kid()
    finally:
        await other.store.close()
    unretired = [key.kid for key in keys if key.retire_time is None]
    assert len(keys) == 7  # the first key and six rotations
    assert unretired == [signing]
