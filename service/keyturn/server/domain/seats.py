"""Seat rules: which activations hold a seat at a given instant, and who may take one.

A node-locked activation holds its seat until released. A floating one holds
it only while its lease (plus the lapse grace) runs, so a lapsed lease frees
its seat without any sweep having run.

`admit` is the whole admission rule. The stores only count and write: they
lock the entitlement, count the seats held (a kept count, see
store/seat_counts.py), call `admit` and write what it decided.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from .catalog import LicenseModel
from .entitlement import Entitlement
from .errors import lease_superseded, product_mismatch, seat_deactivated
from .ids import same_secret_id


@dataclass(frozen=True)
class Activation:
    activation_id: str
    entitlement_id: str
    fingerprint: str
    label: str
    lease_jti: str
    lease_expire_time: datetime
    create_time: datetime
    released_time: datetime | None = None
    seat_time: datetime | None = None  # when it last took its seat (None: at create_time)
    user_id: str | None = None  # the named user who activated, if any
    lapse_recorded_time: datetime | None = None  # when its lapse went into the event log
    update_time: datetime | None = None  # its last activation or renewal (None: create_time)
    released_by: str | None = None  # the actor that released it (app/audit.py)
    release_reason: str | None = None  # an administrator's reason for a deactivation
    deactivated: bool = False  # an administrator took the seat back (DeactivateSeat)


class ActivationState(StrEnum):
    """What ListActivations shows of a device: `holds_seat` tells live from lapsed."""

    LIVE = "live"  # holds its seat now
    LAPSED = "lapsed"  # a floating lease that ran out (plus the lapse grace)
    RELEASED = "released"  # the device gave its seat back
    DEACTIVATED = "deactivated"  # an administrator took it back


@dataclass(frozen=True)
class Lapse:
    """A floating lease that ran out unrenewed: its seat was free from `freed_time` on,
    however late the lapse is recorded (the next touch of the entitlement, or the sweep)."""

    activation_id: str
    freed_time: datetime


def seat_freed_time(lease_expire_time: datetime, lapse_grace: timedelta) -> datetime:
    """The instant a floating lease not renewed stops holding its seat: its expiry plus the
    lapse grace. The one definition: `holds_seat`, the recorded lapses and the usage
    reports all use it."""
    return lease_expire_time + lapse_grace


class SeatOutcome(StrEnum):
    GRANTED = "granted"  # a seat was taken by a new or released activation
    KEPT = "kept"  # the activation already held its seat; its lease is extended
    REGAINED = "regained"  # its floating lease had lapsed; the seat is taken again
    REFUSED = "refused"  # no seat is free


def holds_seat(
    activation: Activation, model: LicenseModel, now: datetime, lapse_grace: timedelta
) -> bool:
    """True when the activation counts against the seat limit at `now`.

    A floating lease whose lapse is recorded stays lapsed, also for a replica
    deciding at an instant a little earlier than the one that recorded it.
    """
    if activation.released_time is not None:
        return False
    if model is LicenseModel.NODE_LOCKED:
        return True
    if activation.lapse_recorded_time is not None:
        return False
    return seat_freed_time(activation.lease_expire_time, lapse_grace) > now


def activation_state(
    activation: Activation, model: LicenseModel, now: datetime, lapse_grace: timedelta
) -> ActivationState:
    if activation.released_time is not None:
        return ActivationState.DEACTIVATED if activation.deactivated else ActivationState.RELEASED
    if holds_seat(activation, model, now, lapse_grace):
        return ActivationState.LIVE
    return ActivationState.LAPSED


def rank_needed(holds: bool, in_use: int, seat_limit: int) -> bool:
    """A held seat is kept outright while the seats in use fit the limit; beyond it (an
    order removed seats) only the earliest taken are kept, so its rank must be known."""
    return holds and in_use > seat_limit


def admit(
    current: Activation | None, holds: bool, in_use: int, seat_limit: int, ahead: int = 0
) -> SeatOutcome:
    """Whether a claim gets its seat.

    current: the claimant's activation, if it has one; holds: whether it holds its
    seat now; in_use: the seats held now, its own included; ahead: when
    `rank_needed`, the held seats taken before its own. After seats were removed
    below the number in use, the most recently taken are refused at their next
    renewal, until the count fits.
    """
    if holds:
        if in_use <= seat_limit or ahead < seat_limit:
            return SeatOutcome.KEPT
        return SeatOutcome.REFUSED
    if in_use >= seat_limit:
        return SeatOutcome.REFUSED
    if current is not None and current.released_time is None:
        return SeatOutcome.REGAINED
    return SeatOutcome.GRANTED


def takes_seat(outcome: SeatOutcome) -> bool:
    return outcome in (SeatOutcome.GRANTED, SeatOutcome.REGAINED)


def check_product(entitlement: Entitlement, product_id: str) -> None:
    if entitlement.product_id != product_id:
        raise product_mismatch(product_id)


def check_claimable(entitlement: Entitlement, product_id: str, now: datetime) -> None:
    """A seat may be claimed: the license is for this product and usable now."""
    check_product(entitlement, product_id)
    entitlement.ensure_usable(now)


def check_renewable(activation: Activation | None, activation_id: str, jti: str) -> Activation:
    """The activation a lease names, if that lease is its newest and it is not released.
    The newest lease of a seat an administrator deactivated is told so (SEAT_DEACTIVATED),
    so that the app can tell its user why."""
    if activation is None or not same_secret_id(activation.lease_jti, jti):
        raise lease_superseded(activation_id)
    if activation.released_time is not None:
        if activation.deactivated:
            raise seat_deactivated(activation_id)
        raise lease_superseded(activation_id)
    return activation


def renew_time(issued: datetime, expires: datetime) -> datetime:
    """When a client should renew: half way through the lease."""
    return issued + (expires - issued) / 2
