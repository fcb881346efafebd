"""API tokens for order connectors: created with scopes, stored hashed, checked per call."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from typing import Literal

from keyturn.server.clock import Clock
from keyturn.server.domain.credential_expiry import expire_time, has_expired
from keyturn.server.domain.errors import (
    FieldViolation,
    insufficient_scope,
    invalid_token,
    raise_if_invalid,
    token_expired,
)
from keyturn.server.domain.ids import new_id
from keyturn.server.store.token_repository import ApiToken
from keyturn.server.store.unit_of_work import Store

from . import audit
from .context import AppContext
from .token_use import UseRecorder

SCOPES = frozenset({"catalog", "fulfill", "read", "webhooks"})
TOKEN_PREFIX = "kt_"
MAX_LIFETIME = timedelta(days=36_500)  # a hundred years: an end a date can still hold


class Lifetime(Enum):
    """How long a new token lasts when the caller does not say: AppContext.api_token_lifetime
    (KEYTURN_API_TOKEN_LIFETIME_DAYS)."""

    DEFAULT = "default"


def hash_token(secret: str) -> str:
    """Tokens carry 256 random bits, so a plain SHA-256 is a safe lookup key.

    A token is found by its digest (in the cache, then by the database's index), never
    compared as itself: how long a lookup takes can tell at most how much of some stored
    digest the digest of a guess matches, and a caller cannot steer a digest toward
    another, so timing says nothing about any token."""
    return hashlib.sha256(secret.encode()).hexdigest()


async def create_token(
    ctx: AppContext,
    scopes: set[str],
    description: str = "",
    *,
    lifetime: timedelta | Literal[Lifetime.DEFAULT] | None = Lifetime.DEFAULT,
) -> tuple[ApiToken, str]:
    """A new token that ends `lifetime` from now (None: never; by default the setting's);
    its secret is returned once and never stored."""
    unknown = sorted(scopes - SCOPES)
    violations = []
    if not scopes:
        violations.append(FieldViolation("scopes", "at least one scope is required"))
    if unknown:
        violations.append(
            FieldViolation("scopes", f"unknown {unknown}; choose from {sorted(SCOPES)}")
        )
    if lifetime is Lifetime.DEFAULT:
        lifetime = ctx.api_token_lifetime
    if lifetime is not None and not timedelta(0) < lifetime <= MAX_LIFETIME:
        violations.append(
            FieldViolation("lifetime", f"must be more than 0 and at most {MAX_LIFETIME.days} days")
        )
    raise_if_invalid(violations)
    now = ctx.clock.now()
    token = ApiToken(
        new_id("tok", now),
        frozenset(scopes),
        description,
        now,
        expire_time=expire_time(now, lifetime),
    )
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    async with ctx.store.write() as tx:
        await tx.tokens.add(token, hash_token(secret))
        await audit.record(
            tx,
            now,
            "token.create",
            f"tokens/{token.token_id}",
            details={
                "scopes": sorted(token.scopes),
                "description": description,
                "expire_time": None if token.expire_time is None else token.expire_time.isoformat(),
            },
        )
    return token, secret


async def revoke_token(ctx: AppContext, token: str) -> str | None:
    """Revoke `token`, given by its id (tok_...) or as the secret itself (kt_...): the id of
    the token revoked, or None when no active token is either."""
    async with ctx.store.write() as tx:
        token_id = token
        if token.startswith(TOKEN_PREFIX):
            found = await tx.tokens.find_by_hash(hash_token(token))
            if found is None:
                return None
            token_id = found.token_id
        now = ctx.clock.now()
        if not await tx.tokens.revoke(token_id, now):
            return None
        await audit.record(tx, now, "token.revoke", f"tokens/{token_id}")
        return token_id


async def list_tokens(ctx: AppContext, *, include_revoked: bool) -> list[ApiToken]:
    """Every token (active ones unless `include_revoked`), oldest first; never a secret."""
    async with ctx.store.read() as tx:
        tokens = await tx.tokens.list_all()
    return [t for t in tokens if include_revoked or t.revoke_time is None]


@dataclass
class _Cached:
    token: ApiToken | None
    until: float


class TokenAuthenticator:
    """Checks bearer tokens, remembering answers briefly (a revocation lands within `ttl`;
    an expiry, which is part of the answer, at its instant), and notes each accepted
    token's use (`uses` writes it down, off the call's path)."""

    def __init__(self, store: Store, clock: Clock, ttl_seconds: float = 5.0) -> None:
        self._store = store
        self._clock = clock
        self._ttl = ttl_seconds
        self._cache: dict[str, _Cached] = {}
        self.uses = UseRecorder(store, clock, what="API token")

    async def authenticate(self, secret: str) -> ApiToken:
        digest = hash_token(secret)
        cached = self._cache.get(digest)
        if cached is None or cached.until < time.monotonic():
            async with self._store.read() as tx:
                found = await tx.tokens.find_by_hash(digest)
            if len(self._cache) > 10_000:
                self._cache.clear()
            cached = _Cached(found, time.monotonic() + self._ttl)
            self._cache[digest] = cached
        token = cached.token
        if token is None or token.revoke_time is not None:
            raise invalid_token()
        if token.expire_time is not None and has_expired(token.expire_time, self._clock.now()):
            raise token_expired(token.token_id, token.expire_time)
        self.uses.note(token.token_id, token.last_used_time)
        return token

    @staticmethod
    def require(token: ApiToken, scope: str) -> None:
        if scope not in token.scopes:
            raise insufficient_scope(required_scope=scope)
