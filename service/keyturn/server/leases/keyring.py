"""Ed25519 signing keys: created on first start, rotated on demand, sealed at rest.

The newest unretired key signs. Rotation adds a key and schedules the
retirement of the old ones for when every lease they can have signed has
expired; until then they stay in the published JWKS. Retired keys are kept:
the server still accepts a lapsed lease they signed for renewal (the new lease
is signed by the current key), while apps verifying offline no longer do.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from keyturn.server.clock import Clock, SystemClock
from keyturn.server.domain.errors import DomainError, signing_key_unavailable
from keyturn.server.domain.ids import is_id, new_id
from keyturn.server.sealing import Sealer, SecretError
from keyturn.server.store.signing_key_repository import StoredSigningKey
from keyturn.server.store.unit_of_work import ReadStore, Store, Transaction

log = logging.getLogger("keyturn.keys")

# Added to the longest lease when a key is retired: covers leases being signed
# while the rotation commits (the signing key is read inside each seat transaction).
RETIRE_MARGIN = timedelta(minutes=5)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_jwk(kid: str, public_key_hex: str) -> dict[str, str]:
    """A public key as an RFC 8037 JSON Web Key."""
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": _b64url(bytes.fromhex(public_key_hex)),
        "kid": kid,
        "alg": "EdDSA",
        "use": "sig",
    }


def is_published(key: StoredSigningKey, now: datetime) -> bool:
    """A key is published until its retire time: leases it signed may still be valid."""
    return key.retire_time is None or key.retire_time > now


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: Ed25519PrivateKey
    create_time: datetime
    retire_time: datetime | None = None

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    def jwk(self) -> dict[str, str]:
        return public_jwk(self.kid, _raw_public(self.public_key).hex())


class Keyring:
    """Every key of the deployment, newest first."""

    def __init__(self, keys: list[SigningKey]) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        self.keys = keys
        self._by_kid = {key.kid: key for key in keys}

    def find(self, kid: str) -> SigningKey | None:
        return self._by_kid.get(kid)


def may_still_sign(keyring: Keyring, key: SigningKey, now: datetime, refresh: timedelta) -> bool:
    """Whether `key`, superseded by a rotation, may sign for `refresh` more: every lease it
    signs must expire before its retire time, which the first rotation after it set to
    its own time + the longest lease + RETIRE_MARGIN."""
    newer = [k.create_time for k in keyring.keys if k.create_time > key.create_time]
    return not newer or now + refresh <= min(newer) + RETIRE_MARGIN


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
    try:
        raw = sealer.unseal(stored.private_key_sealed)
    except SecretError as exc:
        raise SecretError(f"signing key {stored.kid}: {exc}") from exc
    private = Ed25519PrivateKey.from_private_bytes(raw)
    if _raw_public(private.public_key()).hex() != stored.public_key:
        raise ValueError(f"signing key {stored.kid} does not match its public key")
    return SigningKey(stored.kid, private, stored.create_time, stored.retire_time)


async def _read_keyring(store: Store, sealer: Sealer) -> Keyring | None:
    async with store.read() as tx:
        stored = await tx.signing_keys.list_all()
    return Keyring([_open(key, sealer) for key in stored]) if stored else None


async def load_keyring(store: Store, sealer: Sealer, now: datetime) -> Keyring:
    """The keyring from the database, creating the first key when there is none.

    Raises SecretError when a key cannot be opened with this secret.
    """
    keyring = await _read_keyring(store, sealer)
    if keyring is not None:
        return keyring
    async with store.write() as tx:
        if await tx.signing_keys.signing_kid() is None:
            await tx.signing_keys.add(new_signing_key(sealer, now))
    keyring = await _read_keyring(store, sealer)
    assert keyring is not None
    return keyring


@dataclass(frozen=True)
class Rotation:
    new_kid: str
    retired: list[str]
    retire_time: datetime


async def rotate_signing_key(store: Store, sealer: Sealer, now: datetime) -> Rotation:
    """Add a key that signs from now on; the others retire once their leases have expired."""
    async with store.write() as tx:
        return await rotate_in(tx, sealer, now)


async def rotate_in(tx: Transaction, sealer: Sealer, now: datetime) -> Rotation:
    """The rotation, in a transaction of the caller's (app/signing_keys.py records it in
    the audit trail in the same one)."""
    await tx.signing_keys.lock_all()
    longest = max(await tx.entitlements.longest_lease(), timedelta(0))
    retire_time = now + longest + RETIRE_MARGIN
    key = new_signing_key(sealer, now)
    await tx.signing_keys.add(key)
    retired = await tx.signing_keys.retire_all_but(key.kid, retire_time)
    return Rotation(key.kid, retired, retire_time)


class SigningKeys:
    """This process's keyring, read again when another process has rotated the keys.

    The key that signs is held in memory and looked up again in the database
    every `refresh_seconds`: a rotation by any process signs everywhere within
    that time. Keys retire `RETIRE_MARGIN` after the longest lease, so a lease
    signed by the old key meanwhile stays verifiable as long as it runs.

    The JWKS comes from `published`, the read store. When that is a standby, a
    new key signs only once the standby shows it too (the older key signs
    meanwhile, while `may_still_sign`): an app fetching the keys from this
    server must find the key of every lease it is given.
    """

    def __init__(
        self,
        store: Store,
        sealer: Sealer,
        keyring: Keyring,
        refresh_seconds: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
        *,
        published: ReadStore | None = None,
        clock: Clock | None = None,
    ) -> None:
        if refresh_seconds >= RETIRE_MARGIN.total_seconds():
            raise ValueError("the signing key refresh must be shorter than the retire margin")
        self._store = store
        self._published: ReadStore = store if published is None else published
        self._sealer = sealer
        self.keyring = keyring
        self._reload_lock = asyncio.Lock()
        self._refresh_seconds = refresh_seconds
        self.monotonic = monotonic  # what refresh_seconds is measured on (tests move it)
        self._clock: Clock = clock or SystemClock()
        self._signing: SigningKey | None = None
        self._signing_read_at = 0.0

    async def signing(self) -> SigningKey:
        """The key that signs new leases and tokens (read at most every refresh_seconds)."""
        key = self._signing
        if key is not None and self.monotonic() - self._signing_read_at < self._refresh_seconds:
            return key
        async with self._reload_lock:
            if self._signing is not key and self._signing is not None:
                return self._signing  # another caller refreshed it meanwhile
            read_at = self.monotonic()
            async with self._store.read() as tx:
                kid = await tx.signing_keys.signing_kid()
        found = await self.find(kid or "")
        if found is None:
            raise signing_key_unavailable()
        if key is None or found.kid != key.kid:
            found = await self._once_published(found)
        self._signing, self._signing_read_at = found, read_at
        return found

    async def _once_published(self, key: SigningKey) -> SigningKey:
        """`key` if the JWKS shows it; else the key the JWKS still shows signing, while it
        may sign. Failing that (the standby is down, or minutes behind) `key` after all,
        so that a lagging standby never stops seats from being granted."""
        if self._published is self._store:
            return key
        try:
            async with self._published.read() as tx:
                if await tx.signing_keys.exists(key.kid):
                    return key
                shown = await tx.signing_keys.signing_kid()
        except DomainError as error:
            log.warning("signing with %s unchecked: the read database failed: %s", key.kid, error)
            return key
        older = None if shown is None else await self.find(shown)
        refresh = timedelta(seconds=self._refresh_seconds)
        if older is not None and may_still_sign(self.keyring, older, self._clock.now(), refresh):
            return older
        log.warning("signing with %s, which the read database does not publish yet", key.kid)
        return key

    def forget_signing(self) -> None:
        """Look the signing key up again at the next signature."""
        self._signing = None

    async def rotate(self, now: datetime) -> Rotation:
        """Rotate the keys; this process signs with the new one at once (with a standby,
        once it publishes the key)."""
        rotation = await rotate_signing_key(self._store, self._sealer, now)
        self.forget_signing()
        return rotation

    async def find(self, kid: str) -> SigningKey | None:
        """The key `kid`, reading the database once when this process does not know it."""
        key = self.keyring.find(kid)
        if key is not None or not is_id("key", kid):
            return key
        async with self._store.read() as tx:
            if not await tx.signing_keys.exists(kid):
                return None  # not ours: no reading and unsealing of every key for it
        async with self._reload_lock:
            if self.keyring.find(kid) is None:
                fresh = await _read_keyring(self._store, self._sealer)
                if fresh is not None:
                    self.keyring = fresh
        return self.keyring.find(kid)

    async def jwks(self, now: datetime) -> dict[str, Any]:
        """The published keys as stored now (a rotation by another process shows at once;
        from a standby, once it has replayed it)."""
        async with self._published.read() as tx:
            stored = await tx.signing_keys.list_all()
        return {"keys": [public_jwk(k.kid, k.public_key) for k in stored if is_published(k, now)]}
