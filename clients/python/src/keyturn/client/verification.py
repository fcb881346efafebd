"""Offline lease verification: EdDSA signature, issuer, audience and times.

No I/O here. The client fetches the JWKS (GetSigningKeys) and hands it over;
this module decides. The algorithm is checked before any key is looked at,
so a token that says `none`, `HS256` or `RS256` is refused without ever
reaching a key (which is what defeats the algorithm-confusion attacks).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from .errors import LeaseVerificationError

ALGORITHM = "EdDSA"
REQUIRED_CLAIMS = ("iss", "aud", "sub", "iat", "nbf", "exp", "jti")
MAX_TOKEN_LENGTH = 8192
DEFAULT_ISSUER = "keyturn"
DEFAULT_LEEWAY = timedelta(seconds=60)  # clock skew allowed on exp, nbf and iat


def parse_jwks(jwks: str | Mapping[str, Any]) -> dict[str, jwt.PyJWK]:
    """Ed25519 keys of a JWKS by kid; keys of any other type are ignored."""
    document = json.loads(jwks) if isinstance(jwks, str) else jwks
    keys: dict[str, jwt.PyJWK] = {}
    for entry in document.get("keys", ()):
        if not isinstance(entry, Mapping):
            continue
        kid = entry.get("kid")
        if (
            not isinstance(kid, str)
            or not kid
            or entry.get("kty") != "OKP"
            or entry.get("crv") != "Ed25519"
            or entry.get("alg", ALGORITHM) != ALGORITHM
        ):
            continue
        try:
            keys[kid] = jwt.PyJWK(dict(entry), algorithm=ALGORITHM)
        except jwt.PyJWTError:
            continue
    return keys


def header_kid(token: str) -> str:
    """The `kid` of a token whose header names EdDSA; refuses anything else first."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise LeaseVerificationError("the lease is not a token", "format")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise LeaseVerificationError("the lease is not a JWT", "format") from exc
    if header.get("alg") != ALGORITHM:
        raise LeaseVerificationError(
            f"the lease is not signed with {ALGORITHM}: refused", "algorithm"
        )
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise LeaseVerificationError("the lease names no signing key", "kid")
    return kid


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LeaseVerificationError(f"the lease claim {name!r} is not a number", name)
    return float(value)


def check_times(claims: Mapping[str, Any], now: datetime, leeway: timedelta) -> None:
    """exp, nbf and iat against `now`, each allowed `leeway` of clock skew."""
    at, slack = now.timestamp(), leeway.total_seconds()
    if at > _number(claims, "exp") + slack:
        raise LeaseVerificationError("the lease has expired", "exp")
    if at < _number(claims, "nbf") - slack:
        raise LeaseVerificationError("the lease is not valid yet", "nbf")
    if at < _number(claims, "iat") - slack:
        raise LeaseVerificationError("the lease was issued in the future", "iat")


class LeaseVerifier:
    """Verifies leases against a cached key set; tells the client when to (re)fetch it."""

    def __init__(self, product_id: str, issuer: str, leeway: timedelta) -> None:
        self.product_id = product_id
        self.issuer = issuer
        self.leeway = leeway
        self._keys: dict[str, jwt.PyJWK] | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._keys is not None

    def load(self, jwks: str | Mapping[str, Any]) -> None:
        keys = parse_jwks(jwks)
        with self._lock:
            self._keys = keys

    def kid_of(self, token: str) -> str:
        """The token's key id, once its header names EdDSA (checked before any key)."""
        return header_kid(token)

    def needs_keys(self, kid: str) -> bool:
        """True when the key set is missing or lacks `kid`: fetch (once) before verify()."""
        keys = self._keys
        return keys is None or kid not in keys

    def verify(self, token: str, now: datetime | None = None) -> dict[str, Any]:
        """The claims of a lease signed by a known key, for this product, valid at `now`."""
        kid = header_kid(token)
        key = (self._keys or {}).get(kid)
        if key is None:
            raise LeaseVerificationError("the lease is signed by an unknown key", "kid")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[ALGORITHM],
                audience=self.product_id,
                issuer=self.issuer,
                options={
                    # Times are checked below against the client's clock.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": list(REQUIRED_CLAIMS),
                },
            )
        except jwt.InvalidAudienceError as exc:
            raise LeaseVerificationError("the lease is for another product", "aud") from exc
        except jwt.InvalidIssuerError as exc:
            raise LeaseVerificationError("the lease has another issuer", "iss") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise LeaseVerificationError(
                f"the lease lacks the {exc.claim!r} claim", exc.claim
            ) from exc
        except jwt.InvalidSignatureError as exc:
            raise LeaseVerificationError(
                "the lease signature does not verify", "signature"
            ) from exc
        except jwt.PyJWTError as exc:
            raise LeaseVerificationError(f"the lease is not valid: {exc}", "format") from exc
        check_times(claims, now or datetime.now(UTC), self.leeway)
        return claims
