"""Seat use cases: activate, renew, release, check; leases signed after the seat is secured."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keyturn.server.domain.entitlement import Entitlement
from keyturn.server.domain.errors import DomainError, FieldViolation, Reason, raise_if_invalid
from keyturn.server.domain.events import EventType
from keyturn.server.domain.ids import new_id
from keyturn.server.domain.license_key import normalize_license_key
from keyturn.server.domain.seats import Activation, renew_time
from keyturn.server.domain.validation import check_slug
from keyturn.server.leases.tokens import issue_lease, read_lease
from keyturn.server.store.activation_repository import SeatClaim, SeatOutcome, SeatResult
from keyturn.server.store.unit_of_work import Transaction

from .context import AppContext
from .views import new_event

FINGERPRINT = re.compile(r"^[\x21-\x7e]{8,256}$")
MAX_LABEL = 200


@dataclass(frozen=True)
class LeaseGrant:
    token: str
    issue_time: datetime
    expire_time: datetime
    renew_time: datetime
    activation: Activation
    entitlement: Entitlement
    seats_in_use: int


def invalid_key() -> DomainError:
    """The same answer for malformed, mistyped and unknown keys: it reveals nothing."""
    return DomainError(Reason.INVALID_LICENSE_KEY, "the license key is not valid")


async def find_by_license_key(ctx: AppContext, tx: Transaction, license_key: str) -> Entitlement:
    normalized = normalize_license_key(license_key)
    if normalized is None:
        raise invalid_key()
    entitlement = await tx.entitlements.find_by_key_hash(ctx.sealer.hash_secret(normalized))
    if entitlement is None:
        raise invalid_key()
    return entitlement


def _check_product(entitlement: Entitlement, product_id: str) -> None:
    if entitlement.product_id != product_id:
        raise DomainError(
            Reason.PRODUCT_MISMATCH,
            f"this license is not for product {product_id!r}",
            {"product_id": product_id},
        )


def _check_activation_request(
    license_key: str, product_id: str, fingerprint: str, label: str
) -> None:
    violations = check_slug("product_id", product_id, "product id")
    if not license_key:
        violations.append(FieldViolation("license_key", "a license key is required"))
    if not FINGERPRINT.fullmatch(fingerprint):
        violations.append(
            FieldViolation("fingerprint", "must be 8 to 256 printable ASCII characters")
        )
    if len(label) > MAX_LABEL:
        violations.append(FieldViolation("label", f"must be at most {MAX_LABEL} characters"))
    raise_if_invalid(violations)


async def _record_claim(tx: Transaction, result: SeatResult, now: datetime) -> None:
    """Lapses noticed by this claim, then the seat taken, if one was."""
    took_seat = result.outcome is not SeatOutcome.KEPT
    before_grant = result.seats_in_use - 1 if took_seat else result.seats_in_use
    for activation_id in result.lapsed:
        await tx.events.append(
            new_event(
                EventType.LEASE_LAPSED,
                result.entitlement,
                now,
                before_grant,
                activation_id=activation_id,
            )
        )
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


def _grant(ctx: AppContext, result: SeatResult, now: datetime) -> LeaseGrant:
    token = issue_lease(ctx.keyring, ctx.issuer, result.entitlement, result.activation, now)
    expires = result.activation.lease_expire_time
    return LeaseGrant(
        token=token,
        issue_time=now,
        expire_time=expires,
        renew_time=renew_time(now, expires),
        activation=result.activation,
        entitlement=result.entitlement,
        seats_in_use=result.seats_in_use,
    )


async def activate_seat(
    ctx: AppContext, license_key: str, product_id: str, fingerprint: str, label: str
) -> LeaseGrant:
    _check_activation_request(license_key, product_id, fingerprint, label)
    now = ctx.clock.now()
    async with ctx.store.write() as tx:
        entitlement = await find_by_license_key(ctx, tx, license_key)
        _check_product(entitlement, product_id)
        result = await tx.activations.claim_seat(
            SeatClaim(
                entitlement_id=entitlement.entitlement_id,
                fingerprint=fingerprint,
                label=label,
                now=now,
                lapse_grace=ctx.lapse_grace,
                new_activation_id=new_id("act", now),
                new_jti=new_id("lease", now),
            )
        )
        await _record_claim(tx, result, now)
    return _grant(ctx, result, now)


async def renew_lease(ctx: AppContext, lease_token: str) -> LeaseGrant:
    if not lease_token:
        raise_if_invalid([FieldViolation("lease_token", "a lease token is required")])
    lease = read_lease(ctx.keyring, ctx.issuer, lease_token)
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
    return _grant(ctx, result, now)


async def release_seat(ctx: AppContext, lease_token: str) -> None:
    """Give the seat back. Releasing again with the same token succeeds quietly."""
    if not lease_token:
        raise_if_invalid([FieldViolation("lease_token", "a lease token is required")])
    lease = read_lease(ctx.keyring, ctx.issuer, lease_token)
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


def signing_keys(ctx: AppContext) -> dict[str, Any]:
    """The public JWKS of every key whose leases may still be valid."""
    return ctx.keyring.jwks()
