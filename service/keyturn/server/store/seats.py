"""The seat transactions every backend offers: what they take and what they give back.

Each method is one transaction that locks the entitlement, counts, asks
`domain.seats.admit` and writes what it decided. `SqlSeats` (SQLAlchemy; the
SQLite default) and `PgSeats` (asyncpg, few round trips) implement it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, TypeGuard

from keyturn.server.domain.entitlement import Entitlement
from keyturn.server.domain.ids import same_secret_id
from keyturn.server.domain.named_users import NamedUser
from keyturn.server.domain.seats import Activation, Lapse, SeatOutcome

from .event_repository import NewEvent


@dataclass(frozen=True)
class ActivationClaim:
    """A device asking for a seat with a credential: the entitlement is found by key hash
    (a license key) or by id (an identity token's named user)."""

    product_id: str
    fingerprint: str
    label: str
    new_activation_id: str
    new_jti: str
    key_hash: str = ""
    entitlement_id: str = ""
    user_id: str | None = None


@dataclass(frozen=True)
class LeaseRef:
    """A lease as its (verified) token names it."""

    entitlement_id: str
    activation_id: str
    jti: str

    def is_current_for(self, activation: Activation | None) -> TypeGuard[Activation]:
        """Whether this is `activation`'s newest lease (a renewal voids the older ones)."""
        return (
            activation is not None
            and activation.entitlement_id == self.entitlement_id
            and same_secret_id(activation.lease_jti, self.jti)
        )


@dataclass(frozen=True)
class RenewalClaim(LeaseRef):
    """A device presenting its newest lease for another one."""

    new_jti: str


@dataclass(frozen=True)
class SeatResult:
    outcome: SeatOutcome
    activation: Activation
    entitlement: Entitlement
    seats_in_use: int
    now: datetime  # the instant the decision was taken at (the lease's issue time)
    user: NamedUser | None = None  # the named user of a renewed activation
    lapsed: tuple[Lapse, ...] = ()  # lapses noticed now (to record)


@dataclass(frozen=True)
class Release:
    """A seat given back; `entitlement` is None when it no longer exists."""

    entitlement: Entitlement | None
    seats_in_use: int
    now: datetime
    released_now: bool  # False: it was already released (a repeated release)
    lapsed: tuple[Lapse, ...] = ()


@dataclass(frozen=True)
class LicenseCount:
    entitlement: Entitlement
    seats_in_use: int
    now: datetime


# The events a seat change records, built by the use case from what happened.
ClaimEvents = Callable[[SeatResult], list[NewEvent]]
ReleaseEvents = Callable[[Release, str], list[NewEvent]]


class SeatCheck(Protocol):
    """The one seat read, CheckLicense's: it writes nothing, so it may run on a standby."""

    async def check(self, key_hash: str, entitlement_id: str) -> LicenseCount | None:
        """The entitlement of a key hash (or id) and its seats in use; None: no such one."""
        ...


class SeatStore(SeatCheck, Protocol):
    async def now(self) -> datetime:
        """The instant seat decisions are taken at (the database's clock on PostgreSQL, so
        that replicas whose clocks differ agree on which leases are live)."""
        ...

    async def activate(self, claim: ActivationClaim, events: ClaimEvents) -> SeatResult:
        """Take or keep the device's seat. Raises INVALID_LICENSE_KEY, PRODUCT_MISMATCH,
        ENTITLEMENT_EXPIRED/CANCELLED or SEATS_EXHAUSTED."""
        ...

    async def renew(self, claim: RenewalClaim, events: ClaimEvents) -> SeatResult:
        """Extend the lease of a held seat, or take the seat again after a lapse. Raises
        LEASE_SUPERSEDED besides the activation errors."""
        ...

    async def release(self, lease: LeaseRef, events: ReleaseEvents, released_by: str) -> Release:
        """Free the seat held under the lease (`released_by`: the device's actor). Raises
        LEASE_SUPERSEDED when it is not the activation's newest lease, and
        DEACTIVATION_LIMIT_REACHED when the SKU counts releases and that many happened."""
        ...


def fresh_activation(claim: ActivationClaim, entitlement: Entitlement, now: datetime) -> Activation:
    """The activation a new device gets when its claim is granted at `now`."""
    return Activation(
        activation_id=claim.new_activation_id,
        entitlement_id=entitlement.entitlement_id,
        fingerprint=claim.fingerprint,
        label=claim.label,
        lease_jti=claim.new_jti,
        lease_expire_time=entitlement.lease_expiry(now),
        create_time=now,
        seat_time=now,
        user_id=claim.user_id,
    )


def lapse_cutoff(now: datetime, lapse_grace: timedelta) -> datetime:
    """A floating lease that expired at or before this instant no longer holds its seat."""
    return now - lapse_grace
