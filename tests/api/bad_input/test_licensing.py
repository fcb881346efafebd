"""LicensingService: ActivateSeat, CheckLicense, RedeemInvitation, RenewLease and
ReleaseSeat with keys, identity tokens, invitation codes and leases that are not
ours: forged (alg none, HS256 keyed with the public key, a foreign key, tampered
claims), mistyped, or another credential in the wrong place. Every bad credential
of one kind gets the same answer.

The generated cases (generated.py) cover every string and required field.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.server.domain.license_key import generate_invitation_code, generate_license_key

from .builders import activate, check
from .cases import INVALID_UNDECODABLE, K10, MB, Case, Code, b64, invalid, json_b64, refused
from .generated import generated_cases
from .running import refusal_test
from .world import World
from support.rpc import PRODUCT_ID


def _lease_parts(w: World) -> tuple[dict[str, object], dict[str, object], str, str]:
    """Header, claims, and the header and payload segments of the world's lease."""
    header = jwt.get_unverified_header(w.lease_token)
    claims = jwt.decode(w.lease_token, options={"verify_signature": False})
    head, payload, _ = w.lease_token.split(".")
    return header, claims, head, payload


def alg_none_lease(w: World) -> str:
    header, _, _, payload = _lease_parts(w)
    return f"{json_b64({'alg': 'none', 'typ': 'JWT', 'kid': header['kid']})}.{payload}."


def hs256_lease(w: World) -> str:
    """The classic algorithm confusion: HMAC keyed with the published public key."""
    header, _, _, payload = _lease_parts(w)
    public = w.app.keys.keyring.find(header["kid"]).jwk()  # type: ignore[union-attr]
    head = json_b64({"alg": "HS256", "typ": "JWT", "kid": header["kid"]})
    signature = hmac.new(public["x"].encode(), f"{head}.{payload}".encode(), hashlib.sha256)
    return f"{head}.{payload}.{b64(signature.digest())}"


def foreign_lease(w: World, kid: str | None = None) -> str:
    header, claims, _, _ = _lease_parts(w)
    headers = {"kid": kid or header["kid"]}
    return jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers=headers)


def tampered_lease(w: World) -> str:
    _, claims, head, _ = _lease_parts(w)
    signature = w.lease_token.split(".")[2]
    forged = dict(claims, features={"export-pdf": None, "projects": 100000})
    return f"{head}.{json_b64(forged)}.{signature}"


def typo_of_world_key(w: World) -> lic.ActivateSeatRequest:
    key = w.license_key
    typo = key[:-1] + ("0" if key[-1] != "0" else "1")
    return activate(typo)(w)


def lease_request(
    rpc: str, token: Callable[[World], str]
) -> Callable[[World], lic.RenewLeaseRequest | lic.ReleaseSeatRequest]:
    kind = lic.RenewLeaseRequest if rpc == "RenewLease" else lic.ReleaseSeatRequest
    return lambda w: kind(lease_token=token(w))


ACTIVATE_SEAT = [
    refused(
        "ActivateSeat",
        "malformed-license-key",
        activate("not-a-key"),
        Code.UNAUTHENTICATED,
        "INVALID_LICENSE_KEY",
    ),
    refused(
        "ActivateSeat",
        "license-key-with-typo",
        typo_of_world_key,
        Code.UNAUTHENTICATED,
        "INVALID_LICENSE_KEY",
    ),
    refused(
        "ActivateSeat",
        "unknown-license-key",
        activate(generate_license_key()),
        Code.UNAUTHENTICATED,
        "INVALID_LICENSE_KEY",
    ),
    refused(
        "ActivateSeat",
        "license-key-non-ascii",
        activate("ÄÖÜßÄ-ÖÜßÄÖ-Üß\x00ÄÖ-ÜßÄÖÜ-ßÄÖÜß-ÄÖÜßÄ"),
        Code.UNAUTHENTICATED,
        "INVALID_LICENSE_KEY",
    ),
    refused(
        "ActivateSeat",
        "unknown-product",
        activate(product_id="other-app"),
        Code.PERMISSION_DENIED,
        "PRODUCT_MISMATCH",
        product_id="other-app",
    ),
    invalid("ActivateSeat", "fingerprint-7-chars", activate(fingerprint="abcdefg"), "fingerprint"),
    invalid(
        "ActivateSeat", "fingerprint-with-space", activate(fingerprint="device 0001"), "fingerprint"
    ),
    invalid("ActivateSeat", "label-1mb", activate(label=MB), "label"),
    refused(
        "ActivateSeat",
        "no-free-seat",
        activate(fingerprint="device-0002"),
        Code.RESOURCE_EXHAUSTED,
        "SEATS_EXHAUSTED",
        seats="1",
    ),
]


def with_identity(
    rpc: str, token: Callable[[World], str]
) -> Callable[[World], lic.ActivateSeatRequest | lic.CheckLicenseRequest]:
    def build(w: World) -> lic.ActivateSeatRequest | lic.CheckLicenseRequest:
        if rpc == "CheckLicense":
            return lic.CheckLicenseRequest(identity_token=token(w), product_id=PRODUCT_ID)
        return lic.ActivateSeatRequest(
            identity_token=token(w), product_id=PRODUCT_ID, fingerprint="device-0003"
        )

    return build


def identity_token_cases(rpc: str) -> list[Case]:
    """Identity tokens that are not ours get the answer of an unknown license key."""
    bad = Code.UNAUTHENTICATED, "INVALID_LICENSE_KEY"
    return [
        refused(rpc, "identity-token-garbage", with_identity(rpc, lambda w: "garbage"), *bad),
        refused(rpc, "identity-token-10k-chars", with_identity(rpc, lambda w: K10), *bad),
        refused(rpc, "lease-as-identity-token", with_identity(rpc, lambda w: w.lease_token), *bad),
        refused(
            rpc, "license-key-as-identity-token", with_identity(rpc, lambda w: w.license_key), *bad
        ),
        refused(rpc, "identity-token-alg-none", with_identity(rpc, alg_none_lease), *bad),
        refused(rpc, "identity-token-hs256", with_identity(rpc, hs256_lease), *bad),
        refused(rpc, "identity-token-foreign-key", with_identity(rpc, foreign_lease), *bad),
    ]


CHECK_LICENSE = [
    refused(
        "CheckLicense",
        "malformed-license-key",
        check("not-a-key"),
        Code.UNAUTHENTICATED,
        "INVALID_LICENSE_KEY",
    ),
    refused(
        "CheckLicense",
        "license-key-with-typo",
        lambda w: check(w.license_key[:-1] + ("0" if w.license_key[-1] != "0" else "1"))(w),
        Code.UNAUTHENTICATED,
        "INVALID_LICENSE_KEY",
    ),
    refused(
        "CheckLicense",
        "unknown-license-key",
        check(generate_license_key()),
        Code.UNAUTHENTICATED,
        "INVALID_LICENSE_KEY",
    ),
    refused(
        "CheckLicense",
        "unknown-product",
        check(product_id="other-app"),
        Code.PERMISSION_DENIED,
        "PRODUCT_MISMATCH",
        product_id="other-app",
    ),
    *identity_token_cases("CheckLicense"),
]

REDEEM_INVITATION = [
    *(
        refused(
            "RedeemInvitation",
            name,
            request,
            Code.UNAUTHENTICATED,
            "INVALID_INVITATION",
        )
        for name, request in [
            ("garbage", lic.RedeemInvitationRequest(invitation_code="INVITE-0001")),
            ("non-ascii", lic.RedeemInvitationRequest(invitation_code="ÄÖÜß-ÄÖÜß")),
            (
                "unknown-code",
                lic.RedeemInvitationRequest(invitation_code=generate_invitation_code()),
            ),
            (
                "license-key-as-code",
                lambda w: lic.RedeemInvitationRequest(invitation_code=w.license_key),
            ),
            ("lease-as-code", lambda w: lic.RedeemInvitationRequest(invitation_code=w.lease_token)),
        ]
    ),
]


def lease_cases(rpc: str) -> list[Case]:
    request = lic.RenewLeaseRequest if rpc == "RenewLease" else lic.ReleaseSeatRequest
    bad = Code.UNAUTHENTICATED, "INVALID_LEASE"
    return [
        refused(rpc, "garbage", request(lease_token="garbage"), *bad),
        refused(rpc, "three-dots", request(lease_token="..."), *bad),
        refused(rpc, "not-base64-segments", request(lease_token="a!.b!.c!"), *bad),
        refused(rpc, "alg-none", lease_request(rpc, alg_none_lease), *bad),
        refused(rpc, "alg-hs256-keyed-with-public-key", lease_request(rpc, hs256_lease), *bad),
        refused(rpc, "foreign-key-with-real-kid", lease_request(rpc, foreign_lease), *bad),
        refused(
            rpc,
            "unknown-kid",
            lease_request(rpc, lambda w: foreign_lease(w, kid="no-such-kid")),
            *bad,
        ),
        refused(rpc, "tampered-claims", lease_request(rpc, tampered_lease), *bad),
        refused(rpc, "license-key-as-lease", lease_request(rpc, lambda w: w.license_key), *bad),
        # Field 1 sent as a varint: protobuf keeps it as an unknown field, the token is empty.
        invalid(rpc, "lease-token-sent-as-varint", b"\x08\x01", "lease_token"),
        # Field 1 as length-delimited bytes that are not UTF-8: the request does not decode.
        Case(rpc, "lease-token-not-utf8", b"\x0a\x04\xff\xfe\xfd\xfc", *INVALID_UNDECODABLE),
    ]


CASES = [
    *generated_cases(
        "ActivateSeat", "CheckLicense", "RedeemInvitation", "RenewLease", "ReleaseSeat"
    ),
    *ACTIVATE_SEAT,
    *identity_token_cases("ActivateSeat"),
    *CHECK_LICENSE,
    *REDEEM_INVITATION,
    *lease_cases("RenewLease"),
    *lease_cases("ReleaseSeat"),
]

test_bad_input_is_refused_and_writes_nothing = refusal_test(CASES)
