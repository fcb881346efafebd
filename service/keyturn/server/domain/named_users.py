"""Named users: seats of an entitlement assigned to people by email.

Each assignment comes with a single-use invitation code; redeeming it gives
the user an identity token, a credential for ActivateSeat in place of the
license key. Assignments never outnumber the entitlement's seats.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .entitlement import Entitlement
from .errors import named_users_exceed_seats


@dataclass(frozen=True)
class NamedUser:
    user_id: str
    entitlement_id: str
    email: str
    create_time: datetime
    redeem_time: datetime | None = None
    identity_jti: str | None = None  # the one identity token that is valid


def canonical_email(email: str) -> str:
    return email.strip().lower()


def new_emails(assigned: set[str], requested: tuple[str, ...]) -> list[str]:
    """The requested emails not yet assigned, canonical, each once, in order."""
    seen = set(assigned)
    fresh: list[str] = []
    for email in map(canonical_email, requested):
        if email not in seen:
            seen.add(email)
            fresh.append(email)
    return fresh


def check_fits_seats(entitlement: Entitlement, named: int, line_index: int) -> None:
    """Named users are each assigned a seat: never more of them than seats."""
    if named > entitlement.seats:
        raise named_users_exceed_seats(
            entitlement.entitlement_id, entitlement.seats, named, line_index
        )
