"""Seat use cases: activate, renew, release, check, redeem; tokens signed after commit."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keyturn.server.domain.entitlement import Entitlement, Status
from keyturn.server.domain.errors import DomainError, FieldViolation, Reason, raise_if_invalid
from keyturn.server.domain.events import EventType
from keyturn.server.domain.ids import new_id
from keyturn.server.domain.license_key import normalize_invitation_code, normalize_license_key
from keyturn.server.domain.named_users import NamedUser
from keyturn.server.domain.seats import Activation, renew_time
from keyturn.server.domain.validation import check_slug
from keyturn.server.leases.keyring import SigningKey
from keyturn.server.leases.tokens import (
    IdentityClaims,
    LeaseIdentity,
    NamedUserRef,
    issue_identity,
    issue_lease,
    read_identity,
    read_lease,
    unverified_kid,
)
from keyturn.server.store.activation_repository import SeatClaim, SeatOutcome, SeatResult
from keyturn.server.store.unit_of_work import Transaction

from .context import AppContext
from .lapses import record_lapses
from .views import new_event

FINGERPRINT = re.compile(r"^[\x21-\x7e]{8,256}$")
MAX_LABEL = 200


@dataclass(frozen=True)
class Credential:
    """What an app presents for a seat: a license key or an identity token (one of them)."""

    license_key: str = ""
    identity_token: str = ""


@dataclass(frozen=True)
class LicenseStatus:
    """An entitlement as an app sees it, at one instant."""

    entitlement: Entitlement
    status: Status
    seats_in_use: int


@dataclass(frozen=True)
class LeaseGrant:
    token: str
    issue_time: datetime
    expire_time: datetime
    renew_time: datetime
    activation: Activation
    license: LicenseStatus


def invalid_key() -> DomainError:
    """The same answer for malformed, mistyped and unknown keys or identity tokens."""
    return DomainError(Reason.INVALID_LICENSE_KEY, "the license key is not valid")


def invalid_invitation() -> DomainError:
    return DomainError(Reason.INVALID_INVITATION, "the invitation code is not valid")


def _check_credential(credential: Credential) -> list[FieldViolation]:
    if not credential.license_key and not credential.identity_token:
        return [FieldViolation("license_key", "a license key or an identity token is required")]
    return []


def _check_product_id(product_id: str) -> list[FieldViolation]:
    return check_slug("product_id", product_id, "product id")


def _check_activation_request(
    credential: Credential, product_id: str, fingerprint: str, label: str
) -> None:
    violations = _check_product_id(product_id) + _check_credential(credential)
    if not FINGERPRINT.fullmatch(fingerprint):
        violations.append(
            FieldViolation("fingerprint", "must be 8 to 256 printable ASCII characters")
        )
    if len(label) > MAX_LABEL:
        violations.append(FieldViolation("label", f"must be at most {MAX_LABEL} characters"))
    raise_if_invalid(violations)


async def _identity(ctx: AppContext, credential: Credential) -> IdentityClaims | None:
    """The claims of the identity token, checked before any transaction (the signing key
    may have to be read); None when the credential is a license key."""
    if not credential.identity_token:
        return None
    token = credential.identity_token
    claims = read_identity(await ctx.keys.find(unverified_kid(token)), ctx.issuer, token)
    if claims is None:
        raise invalid_key()
    return claims


@dataclass(frozen=True)
class Holder:
    """Whom a credential names: an entitlement, and the named user when it is a token."""

    entitlement: Entitlement
    user: NamedUser | None


async def _holder(
    ctx: AppContext, tx: Transaction, credential: Credential, identity: IdentityClaims | None
) -> Holder:
    if identity is None:
        normalized = normalize_license_key(credential.license_key)
        if normalized is None:
            raise invalid_key()
        entitlement = await tx.entitlements.find_by_key_hash(ctx.sealer.hash_secret(normalized))
        if entitlement is None:
            raise invalid_key()
        return Holder(entitlement, None)
    user = await tx.named_users.get(identity.user_id)
    if (
        user is None
        or user.identity_jti != identity.jti
        or user.entitlement_id != identity.entitlement_id
    ):
        raise invalid_key()  # replaced by a newer token, or never ours
    entitlement = await tx.entitlements.get(user.entitlement_id)
    if entitlement is None:
        raise invalid_key()
    return Holder(entitlement, user)


def _check_product(entitlement: Entitlement, product_id: str) -> None:
    if entitlement.product_id != product_id:
        raise DomainError(
            Reason.PRODUCT_MISMATCH,
            f"this license is not for product {product_id!r}",
            {"product_id": product_id},
        )


async def _record_claim(tx: Transaction, result: SeatResult, now: datetime) -> None:
    """Lapses noticed by this claim, then the seat taken, if one was."""
    took_seat = result.outcome is not SeatOutcome.KEPT
    before_grant = result.seats_in_use - 1 if took_seat else result.seats_in_use
    await record_lapses(tx, result.entitlement, result.lapsed, now, before_grant)
    if took_seat:
        await tx.events.append(
            new_event(
                EventType.SEAT_ACTIVATED,
                result.entitlement,
                now,
                result.seats_in_use,
                activation_id=result.activation.activation_id,
            )
        )


async def _signing_key(ctx: AppContext, kid: str | None) -> SigningKey:
    """The key the seat transaction found signing (it reads it, so a rotation by any
    process takes effect at once)."""
    key = await ctx.keys.find(kid or "")
    if key is None:
        raise DomainError(Reason.STORAGE_UNAVAILABLE, "the signing key could not be loaded")
    return key


async def _grant(
    ctx: AppContext, result: SeatResult, user: NamedUser | None, kid: str | None, now: datetime
) -> LeaseGrant:
    key = await _signing_key(ctx, kid)
    ref = None if user is None else NamedUserRef(user.user_id, user.email)
    token = issue_lease(
        key, ctx.issuer, result.entitlement, result.activation, now, result.seats_in_use, ref
    )
    expires = result.activation.lease_expire_time
    entitlement = result.entitlement
    return LeaseGrant(
        token=token,
        issue_time=now,
        expire_time=expires,
        renew_time=renew_time(now, expires),
        activation=result.activation,
        license=LicenseStatus(entitlement, entitlement.status(now), result.seats_in_use),
    )


async def activate_seat(
    ctx: AppContext, credential: Credential, product_id: str, fingerprint: str, label: str
) -> LeaseGrant:
    _check_activation_request(credential, product_id, fingerprint, label)
    identity = await _identity(ctx, credential)
    now = ctx.clock.now()
    async with ctx.store.write() as tx:
        holder = await _holder(ctx, tx, credential, identity)
        _check_product(holder.entitlement, product_id)
        result = await tx.activations.claim_seat(
            SeatClaim(
                entitlement_id=holder.entitlement.entitlement_id,
                fingerprint=fingerprint,
                label=label,
                now=now,
                lapse_grace=ctx.lapse_grace,
                new_activation_id=new_id("act", now),
                new_jti=new_id("lease", now),
                user_id=None if holder.user is None else holder.user.user_id,
            )
        )
        await _record_claim(tx, result, now)
        kid = await tx.signing_keys.signing_kid()
    return await _grant(ctx, result, holder.user, kid, now)


async def _presented_lease(ctx: AppContext, lease_token: str) -> LeaseIdentity:
    """The lease a caller presents, its signature checked against the key it names."""
    if not lease_token:
        raise_if_invalid([FieldViolation("lease_token", "a lease token is required")])
    return read_lease(await ctx.keys.find(unverified_kid(lease_token)), ctx.issuer, lease_token)


async def renew_lease(ctx: AppContext, lease_token: str) -> LeaseGrant:
    lease = await _presented_lease(ctx, lease_token)
    now = ctx.clock.now()
    async with ctx.store.write() as tx:
        result = await tx.activations.claim_seat(
            SeatClaim(
                entitlement_id=lease.entitlement_id,
                fingerprint=lease.fingerprint,
                label="",
                now=now,
                lapse_grace=ctx.lapse_grace,
                new_activation_id=lease.activation_id,
                new_jti=new_id("lease", now),
                renew_activation_id=lease.activation_id,
                renew_jti=lease.jti,
            )
        )
        await _record_claim(tx, result, now)
        user_id = result.activation.user_id
        user = None if user_id is None else await tx.named_users.get(user_id)
        kid = await tx.signing_keys.signing_kid()
    return await _grant(ctx, result, user, kid, now)


async def release_seat(ctx: AppContext, lease_token: str) -> None:
    """Give the seat back. Releasing again with the same token succeeds quietly."""
    lease = await _presented_lease(ctx, lease_token)
    now = ctx.clock.now()
    async with ctx.store.write() as tx:
        before = await tx.activations.release(lease.activation_id, lease.jti, now)
        if before is None:
            raise DomainError(
                Reason.LEASE_SUPERSEDED,
                "this lease was renewed; release with the newest lease token",
                {"activation_id": lease.activation_id},
            )
        if before.released_time is None:
            entitlement = await tx.entitlements.get(lease.entitlement_id)
            if entitlement is not None:
                in_use = await tx.activations.count_live(entitlement, now, ctx.lapse_grace)
                await tx.events.append(
                    new_event(
                        EventType.SEAT_RELEASED,
                        entitlement,
                        now,
                        in_use,
                        activation_id=lease.activation_id,
                    )
                )


async def check_license(ctx: AppContext, credential: Credential, product_id: str) -> LicenseStatus:
    """The entitlement behind a credential, whatever its state, without taking a seat."""
    raise_if_invalid(_check_product_id(product_id) + _check_credential(credential))
    identity = await _identity(ctx, credential)
    now = ctx.clock.now()
    async with ctx.store.read() as tx:
        entitlement = (await _holder(ctx, tx, credential, identity)).entitlement
        _check_product(entitlement, product_id)
        in_use = await tx.activations.count_live(entitlement, now, ctx.lapse_grace)
    return LicenseStatus(entitlement, entitlement.status(now), in_use)


async def redeem_invitation(ctx: AppContext, invitation_code: str) -> str:
    """Exchange a single-use invitation code for the user's identity token."""
    if not invitation_code:
        raise_if_invalid([FieldViolation("invitation_code", "an invitation code is required")])
    normalized = normalize_invitation_code(invitation_code)
    if normalized is None:
        raise invalid_invitation()
    now = ctx.clock.now()
    async with ctx.store.write() as tx:
        user = await tx.named_users.find_by_invitation(ctx.sealer.hash_secret(normalized))
        if user is None:
            raise invalid_invitation()
        entitlement = await tx.entitlements.get(user.entitlement_id)
        if entitlement is None:
            raise invalid_invitation()
        jti = new_id("idt", now)
        if user.redeem_time is not None or not await tx.named_users.redeem(user, jti, now):
            raise DomainError(
                Reason.INVITATION_REDEEMED,
                "this invitation was already used; ask for a new one",
                {"user_id": user.user_id},
            )
        kid = await tx.signing_keys.signing_kid()
    key = await _signing_key(ctx, kid)
    return issue_identity(
        key, ctx.issuer, entitlement, NamedUserRef(user.user_id, user.email), jti, now
    )


async def signing_keys(ctx: AppContext) -> dict[str, Any]:
    """The public JWKS of every key whose leases may still be valid."""
    return await ctx.keys.jwks(ctx.clock.now())
