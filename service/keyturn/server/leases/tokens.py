"""Lease tokens: EdDSA-signed JWTs, issued by the server and verified by anyone with the JWKS."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jwt

from keyturn.server.domain.catalog import LicenseModel
from keyturn.server.domain.entitlement import Entitlement
from keyturn.server.domain.errors import DomainError, Reason
from keyturn.server.domain.seats import Activation

from .keyring import Keyring

ALGORITHM = "EdDSA"


@dataclass(frozen=True)
class LeaseIdentity:
    """What a presented lease says about itself, once its signature checks out."""

    activation_id: str
    jti: str
    entitlement_id: str
    product_id: str
    fingerprint: str


def issue_lease(
    keyring: Keyring,
    issuer: str,
    entitlement: Entitlement,
    activation: Activation,
    now: datetime,
) -> str:
    end = entitlement.end_time
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": entitlement.product_id,
        "sub": activation.activation_id,
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int(activation.lease_expire_time.timestamp()),
        "jti": activation.lease_jti,
        "entitlement_id": entitlement.entitlement_id,
        "edition": entitlement.edition_id,
        "features": {f.name: f.limit for f in entitlement.features},
        "entitlement_end": None if end is None else int(end.timestamp()),
        "license_model": LicenseModel(entitlement.license_model).value,
        "fingerprint": activation.fingerprint,
    }
    key = keyring.signing_key
    return jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})


def _invalid() -> DomainError:
    return DomainError(Reason.INVALID_LEASE, "the lease token is not valid")


def read_lease(keyring: Keyring, issuer: str, token: str) -> LeaseIdentity:
    """Check the signature of a lease we issued, expired or not (a lapsed lease may
    still be renewed while a seat is free)."""
    if not token or len(token) > 8192:
        raise _invalid()
    try:
        header = jwt.get_unverified_header(token)
        key = keyring.find(str(header.get("kid", "")))
        if key is None or header.get("alg") != ALGORITHM:
            raise _invalid()
        claims = jwt.decode(
            token,
            key.public_key,
            algorithms=[ALGORITHM],
            issuer=issuer,
            options={
                "verify_exp": False,
                "verify_aud": False,
                "verify_nbf": False,
                "verify_iat": False,
                "require": ["sub", "jti", "aud", "exp"],
            },
        )
        return LeaseIdentity(
            activation_id=str(claims["sub"]),
            jti=str(claims["jti"]),
            entitlement_id=str(claims["entitlement_id"]),
            product_id=str(claims["aud"]),
            fingerprint=str(claims["fingerprint"]),
        )
    except (jwt.PyJWTError, KeyError, ValueError, TypeError) as exc:
        raise _invalid() from exc
