"""Seat use cases: activate, renew, release, check, redeem; tokens signed after commit."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keyturn.server.domain.credential_expiry import has_expired
from keyturn.server.domain.entitlement import Entitlement, Status
from keyturn.server.domain.errors import (
    FieldViolation,
    identity_token_expired,
    invalid_invitation,
    invalid_license_key,
    invitation_redeemed,
    raise_if_invalid,
)
from keyturn.server.domain.events import EventType
from keyturn.server.domain.ids import new_id, same_secret_id
from keyturn.server.domain.license_key import normalize_invitation_code, normalize_license_key
from keyturn.server.domain.named_users import NamedUser, identity_expire_time
from keyturn.server.domain.seats import (
    Activation,
    check_product,
    renew_time,
    takes_seat,
)
from keyturn.server.domain.validation import check_slug
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
from keyturn.server.store.event_repository import NewEvent
from keyturn.server.store.seats import (
    ActivationClaim,
    LeaseRef,
    Release,
    RenewalClaim,
    SeatResult,
)

from .audit import device_actor
from .context import AppContext
from .lapses import lapse_events
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
        raise invalid_license_key()
    return claims


async def _credential_target(
    ctx: AppContext, credential: Credential, identity: IdentityClaims | None
) -> tuple[str, str, NamedUser | None]:
    """(key hash, entitlement id, named user): what the seat store looks the entitlement
    up by. A license key is found by its keyed hash; an identity token by its user."""
    if identity is None:
        normalized = normalize_license_key(credential.license_key)
        if normalized is None:
            raise invalid_license_key()
        return ctx.sealer.hash_secret(normalized), "", None
    async with ctx.store.read() as tx:
        user = await tx.named_users.get(identity.user_id)
    if (
        user is None
        or not same_secret_id(user.identity_jti, identity.jti)
        or user.entitlement_id != identity.entitlement_id
    ):
        raise invalid_license_key()  # replaced by a newer token, or never ours
    ends = identity_expire_time(user, ctx.identity_idle_limit)
    if ends is not None and has_expired(ends, ctx.clock.now()):
        raise identity_token_expired(user.user_id, ends)
    ctx.identity_uses.note(user.user_id, user.identity_used_time)
    return "", user.entitlement_id, user


def _note_renewal(ctx: AppContext, user: NamedUser | None) -> None:
    """A renewed lease of a named user is a use of their identity token (an app that
    runs for months without a restart is in use), unless that token has ended already:
    a renewal keeps an identity alive, it does not bring an ended one back."""
    if user is None or user.identity_jti is None:
        return
    ends = identity_expire_time(user, ctx.identity_idle_limit)
    if ends is None or not has_expired(ends, ctx.clock.now()):
        ctx.identity_uses.note(user.user_id, user.identity_used_time)


def _claim_events(result: SeatResult) -> list[NewEvent]:
    """Lapses noticed by this claim, then the seat taken, if one was."""
    took_seat = takes_seat(result.outcome)
    before_grant = result.seats_in_use - 1 if took_seat else result.seats_in_use
    recorded = lapse_events(result.entitlement, result.lapsed, result.now, before_grant)
    if took_seat:
        recorded.append(
            new_event(
                EventType.SEAT_ACTIVATED,
                result.entitlement,
                result.now,
                result.seats_in_use,
                actor=device_actor(result.activation.activation_id),
                activation_id=result.activation.activation_id,
            )
        )
    return recorded


def _release_events(release: Release, activation_id: str) -> list[NewEvent]:
    entitlement = release.entitlement
    if entitlement is None:
        return []
    in_use_before = release.seats_in_use + (1 if release.released_now else 0)
    recorded = lapse_events(entitlement, release.lapsed, release.now, in_use_before)
    if release.released_now:
        recorded.append(
            new_event(
                EventType.SEAT_RELEASED,
                entitlement,
                release.now,
                release.seats_in_use,
                actor=device_actor(activation_id),
                activation_id=activation_id,
            )
        )
    return recorded


async def _grant(ctx: AppContext, result: SeatResult, user: NamedUser | None) -> LeaseGrant:
    key = await ctx.keys.signing()
    ref = None if user is None else NamedUserRef(user.user_id, user.email)
    now = result.now
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
    key_hash, entitlement_id, user = await _credential_target(ctx, credential, identity)
    minted = ctx.clock.now()
    claim = ActivationClaim(
        product_id=product_id,
        fingerprint=fingerprint,
        label=label,
        new_activation_id=new_id("act", minted),
        new_jti=new_id("lease", minted),
        key_hash=key_hash,
        entitlement_id=entitlement_id,
        user_id=None if user is None else user.user_id,
    )
    result = await ctx.seats.activate(claim, _claim_events)
    return await _grant(ctx, result, user)


async def _presented_lease(ctx: AppContext, lease_token: str) -> LeaseIdentity:
    """The lease a caller presents, its signature checked against the key it names."""
    if not lease_token:
        raise_if_invalid([FieldViolation("lease_token", "a lease token is required")])
    return read_lease(await ctx.keys.find(unverified_kid(lease_token)), ctx.issuer, lease_token)


async def renew_lease(ctx: AppContext, lease_token: str) -> LeaseGrant:
    lease = await _presented_lease(ctx, lease_token)
    claim = RenewalClaim(
        entitlement_id=lease.entitlement_id,
        activation_id=lease.activation_id,
        jti=lease.jti,
        new_jti=new_id("lease", ctx.clock.now()),
    )
    result = await ctx.seats.renew(claim, _claim_events)
    _note_renewal(ctx, result.user)
    return await _grant(ctx, result, result.user)


async def release_seat(ctx: AppContext, lease_token: str) -> None:
    """Give the seat back. Releasing again with the same token succeeds quietly."""
    lease = await _presented_lease(ctx, lease_token)
    await ctx.seats.release(
        LeaseRef(lease.entitlement_id, lease.activation_id, lease.jti),
        _release_events,
        device_actor(lease.activation_id),
    )


async def check_license(ctx: AppContext, credential: Credential, product_id: str) -> LicenseStatus:
    """The entitlement behind a credential, whatever its state, without taking a seat.

    Counted on the read store: from a standby, seats in use as of its lag ago. The
    credential itself (an identity token's user) is checked on the primary."""
    raise_if_invalid(_check_product_id(product_id) + _check_credential(credential))
    identity = await _identity(ctx, credential)
    key_hash, entitlement_id, _ = await _credential_target(ctx, credential, identity)
    found = await ctx.read_seats.check(key_hash, entitlement_id)
    if found is None and ctx.reads_from_standby:  # sold a moment ago? (app/standby_reads.py)
        found = await ctx.seats.check(key_hash, entitlement_id)
    if found is None:
        raise invalid_license_key()
    check_product(found.entitlement, product_id)
    entitlement = found.entitlement
    return LicenseStatus(entitlement, entitlement.status(found.now), found.seats_in_use)


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
            raise invitation_redeemed(user.user_id)
    key = await ctx.keys.signing()
    return issue_identity(
        key, ctx.issuer, entitlement, NamedUserRef(user.user_id, user.email), jti, now
    )


async def signing_keys(ctx: AppContext) -> dict[str, Any]:
    """The public JWKS of every key whose leases may still be valid."""
    return await ctx.keys.jwks(ctx.clock.now())
