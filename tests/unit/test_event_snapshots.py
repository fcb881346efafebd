"""An event's snapshot read back: a status this version does not know (a newer replica's,
during a rolling upgrade) does not fail the read."""

from __future__ import annotations

from test_entitlement import ENTITLEMENT

from keyturn.server.app.views import from_snapshot
from keyturn.server.domain.entitlement import Status


def test_a_known_status_is_read_as_recorded() -> None:
    view = from_snapshot(ENTITLEMENT, {"status": "cancelled", "seats_in_use": 2})
    assert view.status is Status.CANCELLED
    assert view.seats_in_use == 2


def test_an_unknown_status_is_the_entitlements_status_at_the_snapshot() -> None:
    recorded = {
        "status": "frozen",
        "end_time": "2026-01-31T00:00:00+00:00",
        "update_time": "2025-06-01T00:00:00+00:00",
    }
    view = from_snapshot(ENTITLEMENT, recorded)
    assert view.status is Status.ACTIVE  # before its end, not a trial
    ended = from_snapshot(ENTITLEMENT, {**recorded, "update_time": "2026-03-01T00:00:00+00:00"})
    assert ended.status is Status.EXPIRED  # past its end plus grace
