"""Named users: seats of an entitlement assigned to people by email.

Each assignment comes with a single-use invitation code; redeeming it gives
the user an identity token, a credential for ActivateSeat in place of the
license key. Assignments never outnumber the entitlement's seats.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from .credential_expiry import expire_time
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
    # Its last use (at most RECORD_INTERVAL old); None: not since the upgrade that
    # started recording, so its idle period starts at its next use.
    identity_used_time: datetime | None = None


def identity_expire_time(user: NamedUser, idle_limit: timedelta | None) -> datetime | None:
    """When the user's identity token ends unless used before (None: it does not): a
    sliding expiry, `idle_limit` after its last use (domain.credential_expiry)."""
    if user.identity_used_time is None:
        return None
    return expire_time(user.identity_used_time, idle_limit)


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
