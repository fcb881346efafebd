"""Offline lease verification of both clients: what it accepts and what it refuses.

Forged tokens are built here with PyJWT and cryptography; genuine ones come
from the real server.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from client_harness import LicenseOf, Licensing, MovableClock, OpenLicensing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key

from keyturn.client import InvalidLeaseError, KeyturnError, LeaseBase, LeaseVerificationError
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc

pytest_plugins = ["client_fixtures"]

LEEWAY = timedelta(seconds=60)


async def genuine_lease(licensing: Licensing, license_of: LicenseOf) -> LeaseBase:
    entitlement = await license_of(seats=1)
    return await licensing.activate(entitlement.license_key)


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})


async def refused(licensing: Licensing, token: str) -> str:
    """The check that refused the token."""
    with pytest.raises(LeaseVerificationError) as caught:
        await licensing.verify_lease(token)
    return caught.value.metadata["check"]


async def test_other_algorithms_are_refused_before_any_key_is_fetched(
    licensing: Licensing,
    open_client: OpenLicensing,
    license_of: LicenseOf,
    licensing_stub: licensing_pb2_grpc.LicensingServiceStub,
) -> None:
    lease = await genuine_lease(licensing, license_of)
    header, claims = unverified(lease.token)
    jwks = json.loads((await licensing_stub.GetSigningKeys(lic.GetSigningKeysRequest())).jwks_json)
    public_bytes = jwt.utils.base64url_decode(jwks["keys"][0]["x"])
    body = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    none_header = jwt.utils.base64url_encode(
        json.dumps({"alg": "none", "typ": "JWT", "kid": header["kid"]}).encode()
    ).decode()
    forged = {
        "none": f"{none_header}.{body}.",
        # The classic confusion: the public key used as an HMAC secret.
        "HS256": jwt.encode(
            claims, public_bytes, algorithm="HS256", headers={"kid": header["kid"]}
        ),
        "RS256": jwt.encode(
            claims,
            generate_private_key(public_exponent=65537, key_size=2048),
            algorithm="RS256",
            headers={"kid": header["kid"]},
        ),
    }
    fresh = await open_client()  # no keys cached yet
    for name, token in forged.items():
        assert await refused(fresh, token) == "algorithm", name
    assert await refused(fresh, "not.a.jwt") == "format"
    assert await refused(fresh, "") == "format"
    assert fresh.calls.count("GetSigningKeys") == 0
    # The genuine token from the same server verifies with the same client.
    assert (await fresh.verify_lease(lease.token))["sub"] == lease.activation_id
    assert fresh.calls.count("GetSigningKeys") == 1


async def test_unknown_key_is_refetched_once_then_refused(
    licensing: Licensing, license_of: LicenseOf
) -> None:
    lease = await genuine_lease(licensing, license_of)
    header, claims = unverified(lease.token)
    assert licensing.calls.count("GetSigningKeys") == 1
    stranger = Ed25519PrivateKey.generate()
    unknown_kid = jwt.encode(claims, stranger, algorithm="EdDSA", headers={"kid": "key-unknown"})
    assert await refused(licensing, unknown_kid) == "kid"
    assert licensing.calls.count("GetSigningKeys") == 2  # fetched again once, in case of rotation
    # A foreign key under the genuine kid, and a tampered payload: the signature fails.
    known_kid = jwt.encode(claims, stranger, algorithm="EdDSA", headers={"kid": header["kid"]})
    assert await refused(licensing, known_kid) == "signature"
    head, _, signature = lease.token.split(".")
    claims["features"]["projects"] = 100000
    body = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    assert await refused(licensing, f"{head}.{body}.{signature}") == "signature"
    assert licensing.calls.count("GetSigningKeys") == 2


async def test_times_are_checked_against_the_client_clock_with_leeway(
    open_client: OpenLicensing, license_of: LicenseOf
) -> None:
    clock = MovableClock()
    licensing = await open_client(clock=clock, leeway=LEEWAY)
    lease = await genuine_lease(licensing, license_of)
    until_expiry = lease.expire_time - datetime.now(UTC)
    clock.offset = until_expiry + LEEWAY - timedelta(seconds=10)
    assert (await licensing.verify_lease(lease.token))["jti"] == lease.claims["jti"]
    clock.offset = until_expiry + LEEWAY + timedelta(seconds=10)
    assert await refused(licensing, lease.token) == "exp"
    clock.offset = -(LEEWAY + timedelta(seconds=10))  # a clock running behind the server's
    assert await refused(licensing, lease.token) == "nbf"


async def test_leases_of_another_product_or_issuer_are_refused(
    licensing: Licensing, open_client: OpenLicensing, license_of: LicenseOf
) -> None:
    lease = await genuine_lease(licensing, license_of)
    other_product = await open_client(product_id="other-app")
    assert await refused(other_product, lease.token) == "aud"
    other_issuer = await open_client(issuer="someone-else")
    assert await refused(other_issuer, lease.token) == "iss"
    with pytest.raises(InvalidLeaseError) as caught:  # one except for local and server refusals
        await other_issuer.verify_lease(lease.token)
    assert isinstance(caught.value, KeyturnError)
    assert caught.value.reason == "INVALID_LEASE"


async def test_preloaded_keys_verify_without_the_network(
    licensing: Licensing,
    open_client: OpenLicensing,
    license_of: LicenseOf,
    licensing_stub: licensing_pb2_grpc.LicensingServiceStub,
) -> None:
    lease = await genuine_lease(licensing, license_of)
    saved = (await licensing_stub.GetSigningKeys(lic.GetSigningKeysRequest())).jwks_json
    offline = await open_client("127.0.0.1:1", jwks=saved)  # nothing listens there
    claims = await offline.verify_lease(lease.token)
    assert claims["sub"] == lease.activation_id
    assert offline.calls.names == []
