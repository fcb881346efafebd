"""API tokens for order connectors: created with scopes, stored hashed, checked per call."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from keyturn.server.clock import Clock
from keyturn.server.domain.errors import (
    FieldViolation,
    insufficient_scope,
    invalid_token,
    raise_if_invalid,
)
from keyturn.server.domain.ids import new_id
from keyturn.server.store.token_repository import ApiToken
from keyturn.server.store.unit_of_work import Store

from .context import AppContext
from .token_use import TokenUseRecorder

SCOPES = frozenset({"catalog", "fulfill", "read"})
TOKEN_PREFIX = "kt_"


def hash_token(secret: str) -> str:
    """Tokens carry 256 random bits, so a plain SHA-256 is a safe lookup key.

    A token is found by its digest (in the cache, then by the database's index), never
    compared as itself: how long a lookup takes can tell at most how much of some stored
    digest the digest of a guess matches, and a caller cannot steer a digest toward
    another, so timing says nothing about any token."""
    return hashlib.sha256(secret.encode()).hexdigest()


async def create_token(
    ctx: AppContext, scopes: set[str], description: str = ""
) -> tuple[ApiToken, str]:
    """A new token; its secret is returned once and never stored."""
    unknown = sorted(scopes - SCOPES)
    violations = []
    if not scopes:
        violations.append(FieldViolation("scopes", "at least one scope is required"))
    if unknown:
        violations.append(
            FieldViolation("scopes", f"unknown {unknown}; choose from {sorted(SCOPES)}")
        )
    raise_if_invalid(violations)
    now = ctx.clock.now()
    token = ApiToken(new_id("tok", now), frozenset(scopes), description, now)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    async with ctx.store.write() as tx:
        await tx.tokens.add(token, hash_token(secret))
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
        return token_id if await tx.tokens.revoke(token_id, ctx.clock.now()) else None


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
    """Checks bearer tokens, remembering answers briefly (a revocation lands within `ttl`),
    and notes each accepted token's use (`uses` writes it down, off the call's path)."""

    def __init__(self, store: Store, clock: Clock, ttl_seconds: float = 5.0) -> None:
        self._store = store
        self._ttl = ttl_seconds
        self._cache: dict[str, _Cached] = {}
        self.uses = TokenUseRecorder(store, clock)

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
        if cached.token is None or cached.token.revoke_time is not None:
            raise invalid_token()
        self.uses.note(cached.token)
        return cached.token

    @staticmethod
    def require(token: ApiToken, scope: str) -> None:
        if scope not in token.scopes:
            raise insufficient_scope(required_scope=scope)
