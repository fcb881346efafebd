"""Ed25519 signing keys: created on first start, sealed at rest, published as a JWKS."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from keyturn.server.domain.ids import new_id
from keyturn.server.sealing import Sealer
from keyturn.server.store.signing_key_repository import StoredSigningKey
from keyturn.server.store.unit_of_work import Store


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: Ed25519PrivateKey
    create_time: datetime

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    def jwk(self) -> dict[str, str]:
        """The public half as an RFC 8037 JSON Web Key."""
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": _b64url(_raw_public(self.public_key)),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        }


class Keyring:
    """The unretired keys, newest first; the newest signs."""

    def __init__(self, keys: list[SigningKey]) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        self.keys = keys
        self._by_kid = {key.kid: key for key in keys}

    @property
    def signing_key(self) -> SigningKey:
        return self.keys[0]

    def find(self, kid: str) -> SigningKey | None:
        return self._by_kid.get(kid)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.jwk() for key in self.keys]}


def new_signing_key(sealer: Sealer, now: datetime) -> StoredSigningKey:
    private = Ed25519PrivateKey.generate()
    raw = private.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return StoredSigningKey(
        kid=new_id("key", now),
        private_key_sealed=sealer.seal(raw),
        public_key=_raw_public(private.public_key()).hex(),
        create_time=now,
    )


def _open(stored: StoredSigningKey, sealer: Sealer) -> SigningKey:
    private = Ed25519PrivateKey.from_private_bytes(sealer.unseal(stored.private_key_sealed))
    if _raw_public(private.public_key()).hex() != stored.public_key:
        raise ValueError(f"signing key {stored.kid} does not match its public key")
    return SigningKey(stored.kid, private, stored.create_time)


async def load_keyring(store: Store, sealer: Sealer, now: datetime) -> Keyring:
    """The keyring from the database, creating the first key when there is none.

    Raises SecretError when the keys cannot be opened with this secret.
    """
    async with store.read() as tx:
        stored = await tx.signing_keys.list_unretired()
    if not stored:
        async with store.write() as tx:
            stored = await tx.signing_keys.list_unretired()
            if not stored:
                await tx.signing_keys.add(new_signing_key(sealer, now))
                stored = await tx.signing_keys.list_unretired()
    return Keyring([_open(key, sealer) for key in stored])
