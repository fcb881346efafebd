"""Seat rules: which activations hold a seat at a given instant.

A node-locked activation holds its seat until released. A floating one holds
it only while its lease (plus the lapse grace) runs, so a lapsed lease frees
its seat without any sweep having run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from .catalog import LicenseModel


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


def holds_seat(
    activation: Activation, model: LicenseModel, now: datetime, lapse_grace: timedelta
) -> bool:
    """True when the activation counts against the seat limit at `now`."""
    if activation.released_time is not None:
        return False
    if model is LicenseModel.NODE_LOCKED:
        return True
    return activation.lease_expire_time + lapse_grace > now


def renew_time(issued: datetime, expires: datetime) -> datetime:
    """When a client should renew: half way through the lease."""
    return issued + (expires - issued) / 2
