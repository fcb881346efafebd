"""Entitlements: what a customer may use, for how long, on how many seats."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import assert_never

from .catalog import (
    Create,
    Dispatch,
    Edition,
    Feature,
    LicenseModel,
    Overage,
    Product,
    merge_features,
    without_features,
)
from .deactivation_limits import DeactivationLimit
from .durations import parse_iso_duration
from .errors import (
    entitlement_cancelled,
    entitlement_expired,
    entitlement_suspended,
    invalid_state,
)


class Status(StrEnum):
    """An entitlement's status, computed from its times. Precedence when several hold:
    cancelled > suspended > expired > trial / active (see `Entitlement.status`)."""

    TRIAL = "trial"
    ACTIVE = "active"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    SUSPENDED = "suspended"


@dataclass(frozen=True)
class Customer:
    customer_id: str
    name: str = ""
    email: str = ""


@dataclass(frozen=True)
class Entitlement:
    """An entitlement as stored; its status is computed from the clock, never stored."""

    entitlement_id: str
    product_id: str
    edition_id: str
    customer: Customer
    ship_to_email: str
    seats: int
    features: tuple[Feature, ...]
    start_time: datetime
    end_time: datetime | None
    trial: bool
    license_model: LicenseModel
    lease_duration: timedelta
    dispatch: Dispatch
    create_time: datetime
    update_time: datetime
    cancel_time: datetime | None = None
    grace: timedelta = timedelta(0)
    external_references: tuple[str, ...] = ()
    addons: tuple[Feature, ...] = ()  # added by orders on top of the edition's features
    removed_features: tuple[str, ...] = ()  # taken away by orders; stays away on edition change
    overage: Overage = Overage.NONE
    suspend_time: datetime | None = None  # None: not suspended (reinstated, or never)

    @property
    def suspended(self) -> bool:
        return self.suspend_time is not None

    deactivation_limit: DeactivationLimit | None = None  # copied from the SKU's create

    @property
    def seat_limit(self) -> int:
        """Seats that may be in use at once: the paid ones raised by the overage policy."""
        return self.overage.seat_limit(self.seats)

    @property
    def perpetual(self) -> bool:
        return self.end_time is None

    def usable_until(self) -> datetime | None:
        """The last instant leases may run to: end date plus grace (None: never ends)."""
        return None if self.end_time is None else self.end_time + self.grace

    def ended(self, now: datetime) -> bool:
        """The term (plus grace) is over, whatever else holds (cancelled, suspended)."""
        until = self.usable_until()
        return until is not None and now >= until

    def status(self, now: datetime) -> Status:
        """Cancelled (final) before suspended before expired: a suspension is an explicit
        hold that only a reinstatement lifts, so it shows (and ListEntitlements finds it
        under SUSPENDED) whatever the dates say; a renewal alone does not make a suspended
        entitlement usable. store/entitlement_repository.status_condition repeats this."""
        if self.cancel_time is not None:
            return Status.CANCELLED
        if self.suspend_time is not None:
            return Status.SUSPENDED
        if self.ended(now):
            return Status.EXPIRED
        return Status.TRIAL if self.trial else Status.ACTIVE

    def ensure_usable(self, now: datetime) -> None:
        """Raise unless seats can be taken or leases renewed now."""
        match self.status(now):
            case Status.CANCELLED:
                raise entitlement_cancelled(self.entitlement_id)
            case Status.SUSPENDED:
                assert self.suspend_time is not None
                raise entitlement_suspended(self.entitlement_id, self.suspend_time)
            case Status.EXPIRED:
                assert self.end_time is not None
                raise entitlement_expired(self.entitlement_id, self.end_time)
            case Status.TRIAL | Status.ACTIVE:
                return
            case unreachable:
                assert_never(unreachable)

    def lease_expiry(self, now: datetime) -> datetime:
        """A new lease's expiry: one lease duration, never past the usable end."""
        expiry = now + self.lease_duration
        until = self.usable_until()
        return expiry if until is None else min(expiry, until)


def effective_features(
    edition: Edition, addons: tuple[Feature, ...], removed: tuple[str, ...]
) -> tuple[Feature, ...]:
    """An entitlement's features: its edition's, plus add-ons, minus removals."""
    return without_features(merge_features(edition.features, addons), removed)


def create_entitlement(
    op: Create,
    product: Product,
    quantity: int,
    customer: Customer,
    ship_to_email: str,
    now: datetime,
    entitlement_id: str,
    external_reference: str = "",
) -> Entitlement:
    """The entitlement a `create` operation makes for an order line of `quantity` units."""
    edition = product.edition(op.edition_id)
    if edition is None:
        raise invalid_state(product.product_id, op.edition_id, op.name)
    end_time = None if op.term is None else parse_iso_duration(op.term).after(now)
    return Entitlement(
        entitlement_id=entitlement_id,
        product_id=product.product_id,
        edition_id=edition.edition_id,
        customer=customer,
        ship_to_email=ship_to_email,
        seats=op.seats_per_unit * quantity,
        features=effective_features(edition, op.features, ()),
        start_time=now,
        end_time=end_time,
        trial=op.trial,
        license_model=op.license_model,
        lease_duration=op.lease_duration,
        dispatch=op.dispatch,
        create_time=now,
        update_time=now,
        grace=op.grace,
        external_references=(external_reference,) if external_reference else (),
        addons=op.features,
        overage=op.overage,
        deactivation_limit=op.deactivation_limit,
    )
