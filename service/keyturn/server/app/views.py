"""What use cases hand back to the API: an entitlement with the figures computed for it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from keyturn.server.domain.entitlement import Entitlement, Status


@dataclass(frozen=True)
class EntitlementView:
    entitlement: Entitlement
    status: Status
    seats_in_use: int
    license_key: str = ""


def snapshot(entitlement: Entitlement, now: datetime) -> dict[str, object]:
    """The entitlement as an event records it (JSON-ready; never the license key)."""
    end = entitlement.end_time
    return {
        "edition_id": entitlement.edition_id,
        "seats": entitlement.seats,
        "features": {f.name: f.limit for f in entitlement.features},
        "start_time": entitlement.start_time.isoformat(),
        "end_time": None if end is None else end.isoformat(),
        "trial": entitlement.trial,
        "status": entitlement.status(now).value,
    }
