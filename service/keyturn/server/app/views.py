"""What use cases hand back to the API: an entitlement with the figures computed for it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from keyturn.server.domain.catalog import Feature
from keyturn.server.domain.entitlement import Entitlement, Status
from keyturn.server.domain.events import EventType
from keyturn.server.domain.named_users import NamedUser
from keyturn.server.store.event_repository import NewEvent


@dataclass(frozen=True)
class EntitlementView:
    entitlement: Entitlement
    status: Status
    seats_in_use: int
    license_key: str = ""
    named_users: tuple[NamedUser, ...] = ()
    invitation_codes: dict[str, str] = field(default_factory=dict)  # by user id; new ones only

    @property
    def seats_over(self) -> int:
        """Seats in use beyond the seat limit (seats plus overage): refused at their next
        renewal."""
        return max(0, self.seats_in_use - self.entitlement.seat_limit)


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def snapshot(entitlement: Entitlement, now: datetime, seats_in_use: int) -> dict[str, object]:
    """What an event records of the entitlement right after the change (never the key).

    Only what can change is kept; the rest is read from the entitlement itself.
    """
    return {
        "edition_id": entitlement.edition_id,
        "seats": entitlement.seats,
        "seats_in_use": seats_in_use,
        "features": {f.name: f.limit for f in entitlement.features},
        "start_time": _time(entitlement.start_time),
        "end_time": _time(entitlement.end_time),
        "cancel_time": _time(entitlement.cancel_time),
        "suspend_time": _time(entitlement.suspend_time),
        "trial": entitlement.trial,
        "status": entitlement.status(now).value,
        "external_references": list(entitlement.external_references),
        "update_time": entitlement.update_time.isoformat(),
    }


def named_users_snapshot(users: list[NamedUser]) -> list[dict[str, object]]:
    """Named users as an event about one of them records them (never their code)."""
    return [
        {
            "user_id": u.user_id,
            "email": u.email,
            "create_time": u.create_time.isoformat(),
            "redeem_time": _time(u.redeem_time),
        }
        for u in users
    ]


def _named_users_of(current: Entitlement, recorded: list[dict[str, Any]]) -> tuple[NamedUser, ...]:
    return tuple(
        NamedUser(
            user_id=u["user_id"],
            entitlement_id=current.entitlement_id,
            email=u["email"],
            create_time=datetime.fromisoformat(u["create_time"]),
            redeem_time=_parse_time(u.get("redeem_time")),
        )
        for u in recorded
    )


def new_event(
    kind: EventType,
    entitlement: Entitlement,
    now: datetime,
    seats_in_use: int,
    *,
    actor: str,
    order_source: str = "",
    order_id: str = "",
    activation_id: str = "",
    effective_time: datetime | None = None,
) -> NewEvent:
    """The event of one change, caused by an order or by an activation, made by `actor`
    (app/audit.py names them); `effective_time` when it took effect before now (a lapse
    recorded late)."""
    return NewEvent(
        entitlement_id=entitlement.entitlement_id,
        type=kind.value,
        create_time=now,
        snapshot=snapshot(entitlement, now, seats_in_use),
        order_source=order_source,
        order_id=order_id,
        activation_id=activation_id,
        effective_time=effective_time,
        actor=actor,
    )


def from_snapshot(current: Entitlement, recorded: dict[str, Any]) -> EntitlementView:
    """The entitlement as an event recorded it, on top of what never changes."""
    start = _parse_time(recorded.get("start_time"))
    as_then = replace(
        current,
        edition_id=recorded.get("edition_id", current.edition_id),
        seats=recorded.get("seats", current.seats),
        features=tuple(
            Feature(name, limit) for name, limit in recorded.get("features", {}).items()
        ),
        start_time=current.start_time if start is None else start,
        end_time=_parse_time(recorded.get("end_time")),
        cancel_time=_parse_time(recorded.get("cancel_time")),
        suspend_time=_parse_time(recorded.get("suspend_time")),
        trial=recorded.get("trial", current.trial),
        update_time=_parse_time(recorded.get("update_time")) or current.update_time,
        external_references=tuple(recorded.get("external_references", current.external_references)),
    )
    status = Status(recorded.get("status", Status.ACTIVE.value))
    # Only the events about named users record them (app/named_user_admin.py).
    users = _named_users_of(current, recorded.get("named_users", []))
    return EntitlementView(as_then, status, recorded.get("seats_in_use", 0), named_users=users)
