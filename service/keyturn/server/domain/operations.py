"""The SKU operations that change an existing entitlement, and the rules each one keeps.

Every function here is pure: it takes the entitlement as it stands, returns it
as it should be, or raises a DomainError that rolls the whole order back.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

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
    RemoveFeatures,
    RemoveSeats,
    Renew,
    RenewalAnchor,
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
    expired = ent.status(line.now) is Status.EXPIRED
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


def apply_operation(ent: Entitlement, op: Operation, line: LineContext) -> Entitlement:
    """The entitlement after one operation of an order line (never `create`)."""
    if ent.status(line.now) is Status.CANCELLED:
        raise entitlement_cancelled(ent.entitlement_id, line.line_index)
    changed: Entitlement
    if isinstance(op, Renew):
        changed = renew(ent, op, line)
    elif isinstance(op, AddSeats):
        changed = add_seats(ent, op, line)
    elif isinstance(op, RemoveSeats):
        changed = remove_seats(ent, op, line)
    elif isinstance(op, ChangeEdition):
        changed = change_edition(ent, op, line)
    elif isinstance(op, AddFeatures):
        changed = add_features(ent, op, line)
    elif isinstance(op, RemoveFeatures):
        changed = remove_features(ent, op, line)
    elif isinstance(op, ConvertTrial):
        changed = convert_trial(ent, op, line)
    elif isinstance(op, Cancel):
        changed = cancel(ent, op, line)
    else:
        raise TypeError(f"{op.name} does not change an existing entitlement")
    return replace(changed, update_time=line.now)
