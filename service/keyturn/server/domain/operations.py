"""The SKU operations that change an existing entitlement, and the rules each one keeps.

Every function here is pure: it takes the entitlement as it stands, returns it
as it should be, or raises a DomainError that rolls the whole order back.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import assert_never

from .catalog import (
    MAX_SEATS,
    AddFeatures,
    AddSeats,
    Cancel,
    ChangeEdition,
    ConvertTrial,
    Create,
    Operation,
    Product,
    Reinstate,
    RemoveFeatures,
    RemoveSeats,
    Renew,
    RenewalAnchor,
    Suspend,
    merge_features,
    without_features,
)
from .durations import IsoDuration, parse_iso_duration
from .entitlement import Entitlement, Status, effective_features
from .errors import (
    DomainError,
    FieldViolation,
    entitlement_cancelled,
    entitlement_perpetual,
    invalid_request,
    invalid_state,
    not_a_trial,
    seat_minimum,
)
from .events import EventType

EVENT_OF: dict[type[Operation], EventType] = {
    Create: EventType.CREATED,
    Renew: EventType.RENEWED,
    AddSeats: EventType.SEATS_CHANGED,
    RemoveSeats: EventType.SEATS_CHANGED,
    ChangeEdition: EventType.EDITION_CHANGED,
    AddFeatures: EventType.FEATURES_CHANGED,
    RemoveFeatures: EventType.FEATURES_CHANGED,
    ConvertTrial: EventType.TRIAL_CONVERTED,
    Cancel: EventType.CANCELLED,
    Suspend: EventType.SUSPENDED,
    Reinstate: EventType.REINSTATED,
}


@dataclass(frozen=True)
class LineContext:
    """What an operation needs besides the entitlement: the order line and the clock."""

    line_index: int
    quantity: int
    product: Product
    now: datetime

    def too_large(self, what: str) -> DomainError:
        path = f"lines[{self.line_index}].quantity"
        return invalid_request([FieldViolation(path, f"would make {what}")])


def scaled_term(term: str, line: LineContext) -> IsoDuration:
    return parse_iso_duration(term).times(line.quantity)


def _end_after(term: IsoDuration, start: datetime, line: LineContext) -> datetime:
    try:
        return term.after(start)
    except (ValueError, OverflowError):
        raise line.too_large("a term that ends beyond the year 9000") from None


def renew(ent: Entitlement, op: Renew, line: LineContext) -> Entitlement:
    """Extend the end date; it never moves backwards."""
    if ent.end_time is None:
        raise entitlement_perpetual(ent.entitlement_id, line.line_index)
    expired = ent.ended(line.now)  # by the dates: a suspended one may have ended too
    from_now = op.anchor is RenewalAnchor.FROM_NOW or (
        op.anchor is RenewalAnchor.FROM_NOW_IF_EXPIRED and expired
    )
    base = line.now if from_now else ent.end_time
    end = max(ent.end_time, _end_after(scaled_term(op.term, line), base, line))
    start = line.now if from_now and expired else ent.start_time
    return replace(ent, start_time=start, end_time=end)


def add_seats(ent: Entitlement, op: AddSeats, line: LineContext) -> Entitlement:
    seats = ent.seats + op.seats_per_unit * line.quantity
    if seats > MAX_SEATS:
        raise line.too_large(f"more than {MAX_SEATS} seats on one entitlement")
    return replace(ent, seats=seats)


def remove_seats(ent: Entitlement, op: RemoveSeats, line: LineContext) -> Entitlement:
    """Fewer seats; seats in use beyond the count are refused at their next renewal."""
    seats = ent.seats - op.seats_per_unit * line.quantity
    if seats < 1:
        raise seat_minimum(ent.entitlement_id, ent.seats, line.line_index)
    return replace(ent, seats=seats)


def change_edition(ent: Entitlement, op: ChangeEdition, line: LineContext) -> Entitlement:
    edition = line.product.edition(op.edition_id)
    if edition is None:
        raise invalid_state(line.product.product_id, op.edition_id, op.name)
    features = effective_features(edition, ent.addons, ent.removed_features)
    return replace(ent, edition_id=edition.edition_id, features=features)


def add_features(ent: Entitlement, op: AddFeatures, line: LineContext) -> Entitlement:
    names = tuple(f.name for f in op.features)
    return replace(
        ent,
        features=merge_features(ent.features, op.features),
        addons=merge_features(ent.addons, op.features),
        removed_features=tuple(n for n in ent.removed_features if n not in names),
    )


def remove_features(ent: Entitlement, op: RemoveFeatures, line: LineContext) -> Entitlement:
    return replace(
        ent,
        features=without_features(ent.features, op.feature_names),
        addons=without_features(ent.addons, op.feature_names),
        removed_features=tuple(sorted(set(ent.removed_features) | set(op.feature_names))),
    )


def convert_trial(ent: Entitlement, op: ConvertTrial, line: LineContext) -> Entitlement:
    """Trial to paid, the paid term counted from now (also after the trial ran out)."""
    if not ent.trial:
        raise not_a_trial(ent.entitlement_id, line.line_index)
    end = None if op.term is None else _end_after(scaled_term(op.term, line), line.now, line)
    return replace(ent, trial=False, start_time=line.now, end_time=end)


def cancel(ent: Entitlement, op: Cancel, line: LineContext) -> Entitlement:
    return replace(ent, cancel_time=line.now)


def suspend(ent: Entitlement, now: datetime) -> Entitlement:
    """Suspended from `now`; an entitlement suspended already keeps its first instant."""
    return ent if ent.suspended else replace(ent, suspend_time=now)


def reinstate(ent: Entitlement) -> Entitlement:
    return replace(ent, suspend_time=None) if ent.suspended else ent


def hold(ent: Entitlement, op: Suspend | Reinstate, now: datetime) -> Entitlement:
    """Put on or lift the hold, for an order line or for Suspend/ReinstateEntitlement."""
    match op:
        case Suspend():
            return suspend(ent, now)
        case Reinstate():
            return reinstate(ent)
        case unreachable:
            assert_never(unreachable)


def leaves_unchanged(ent: Entitlement, op: Operation) -> bool:
    """True for an operation that would change nothing: suspending a suspended
    entitlement, reinstating one that is not suspended. Such a step is a no-op that
    records no event (a billing connector may send the same state twice)."""
    match op:
        case Suspend():
            return ent.suspended
        case Reinstate():
            return not ent.suspended
        case (
            Create()
            | Renew()
            | AddSeats()
            | RemoveSeats()
            | ChangeEdition()
            | AddFeatures()
            | RemoveFeatures()
            | ConvertTrial()
            | Cancel()
        ):
            return False
        case unreachable:
            assert_never(unreachable)


def apply_operation(ent: Entitlement, op: Operation, line: LineContext) -> Entitlement:
    """The entitlement after one operation of an order line (never `create`); itself,
    unchanged, when the operation `leaves_unchanged` it."""
    if ent.status(line.now) is Status.CANCELLED:
        raise entitlement_cancelled(ent.entitlement_id, line.line_index)
    if leaves_unchanged(ent, op):
        return ent
    changed: Entitlement
    match op:
        case Renew():
            changed = renew(ent, op, line)
        case AddSeats():
            changed = add_seats(ent, op, line)
        case RemoveSeats():
            changed = remove_seats(ent, op, line)
        case ChangeEdition():
            changed = change_edition(ent, op, line)
        case AddFeatures():
            changed = add_features(ent, op, line)
        case RemoveFeatures():
            changed = remove_features(ent, op, line)
        case ConvertTrial():
            changed = convert_trial(ent, op, line)
        case Cancel():
            changed = cancel(ent, op, line)
        case Suspend() | Reinstate():
            changed = hold(ent, op, line.now)
        case Create():
            raise TypeError(f"{op.name} does not change an existing entitlement")
        case unreachable:
            assert_never(unreachable)
    return replace(changed, update_time=line.now)
