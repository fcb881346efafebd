"""Signed tokens: leases (a seat, for a while) and identity tokens (a named user).

Both are EdDSA JWTs signed by the current signing key with its `kid` in the
header; a `token_use` claim keeps one kind from passing for the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jwt

from keyturn.server.domain.entitlement import Entitlement
from keyturn.server.domain.errors import invalid_lease
from keyturn.server.domain.seats import Activation

from .keyring import SigningKey

ALGORITHM = "EdDSA"
MAX_TOKEN_LENGTH = 8192
LEASE_USE = "lease"
IDENTITY_USE = "identity"


@dataclass(frozen=True)
class LeaseIdentity:
    """What a presented lease says about itself, once its signature checks out."""

    activation_id: str
    jti: str
    entitlement_id: str
    product_id: str
    fingerprint: str
    user_id: str | None


@dataclass(frozen=True)
class IdentityClaims:
    """What a presented identity token says, once its signature checks out."""

    user_id: str
    jti: str
    entitlement_id: str
    email: str


@dataclass(frozen=True)
class NamedUserRef:
    user_id: str
    email: str


def _sign(key: SigningKey, claims: dict[str, Any]) -> str:
    return jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})


def issue_lease(
    key: SigningKey,
    issuer: str,
    entitlement: Entitlement,
    activation: Activation,
    now: datetime,
    seats_in_use: int,
    user: NamedUserRef | None = None,
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
        "token_use": LEASE_USE,
        "entitlement_id": entitlement.entitlement_id,
        "edition": entitlement.edition_id,
        "features": {f.name: f.limit for f in entitlement.features},
        "entitlement_end": None if end is None else int(end.timestamp()),
        "license_model": entitlement.license_model.value,
        "fingerprint": activation.fingerprint,
        "seats": entitlement.seats,
        "seat_limit": entitlement.seat_limit,
        "in_overage": seats_in_use > entitlement.seats,
    }
    if user is not None:
        claims["user_id"] = user.user_id
        claims["email"] = user.email
    return _sign(key, claims)


def issue_identity(
    key: SigningKey,
    issuer: str,
    entitlement: Entitlement,
    user: NamedUserRef,
    jti: str,
    now: datetime,
) -> str:
    """A token that names one user of one entitlement; valid until the user's next one."""
    return _sign(
        key,
        {
            "iss": issuer,
            "aud": entitlement.product_id,
            "sub": user.user_id,
            "iat": int(now.timestamp()),
            "jti": jti,
            "token_use": IDENTITY_USE,
            "entitlement_id": entitlement.entitlement_id,
            "email": user.email,
        },
    )


def unverified_kid(token: str) -> str:
    """The `kid` a token claims to be signed with ('' when it is not a JWT at all)."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return ""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return ""
    kid = header.get("kid")
    return kid if isinstance(kid, str) else ""


def _verified_claims(
    key: SigningKey | None, issuer: str, token: str, use: str, required: list[str]
) -> dict[str, Any] | None:
    """The claims of a token `key` signed for `use`, expired or not; None otherwise.

    Only EdDSA is accepted: the algorithm is fixed here, never taken from the header
    (so alg=none and HS256 signed with the public key both fail).
    """
    if key is None or not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    try:
        if jwt.get_unverified_header(token).get("alg") != ALGORITHM:
            return None
        claims: dict[str, Any] = jwt.decode(
            token,
            key.public_key,
            algorithms=[ALGORITHM],
            issuer=issuer,
            options={
                "verify_exp": False,
                "verify_aud": False,
                "verify_nbf": False,
                "verify_iat": False,
                "require": ["sub", "jti", "aud", "entitlement_id", *required],
            },
        )
    except jwt.PyJWTError:
        return None
    if claims.get("token_use", LEASE_USE) != use:
        return None
    if not all(isinstance(claims[name], str) for name in ("sub", "jti", "entitlement_id")):
        return None
    return claims


def read_lease(key: SigningKey | None, issuer: str, token: str) -> LeaseIdentity:
    """A lease we issued, expired or not (a lapsed lease may still be renewed while a
    seat is free). Leases issued before `token_use` existed count as leases."""
    claims = _verified_claims(key, issuer, token, LEASE_USE, ["exp", "fingerprint"])
    if claims is None:
        raise invalid_lease()
    user_id = claims.get("user_id")
    return LeaseIdentity(
        activation_id=claims["sub"],
        jti=claims["jti"],
        entitlement_id=claims["entitlement_id"],
        product_id=str(claims["aud"]),
        fingerprint=str(claims["fingerprint"]),
        user_id=user_id if isinstance(user_id, str) else None,
    )


def read_identity(key: SigningKey | None, issuer: str, token: str) -> IdentityClaims | None:
    """An identity token we issued; None when it is not one (the caller answers as for
    an unknown license key)."""
    claims = _verified_claims(key, issuer, token, IDENTITY_USE, ["email"])
    if claims is None:
        return None
    return IdentityClaims(
        user_id=claims["sub"],
        jti=claims["jti"],
        entitlement_id=claims["entitlement_id"],
        email=str(claims["email"]),
    )
