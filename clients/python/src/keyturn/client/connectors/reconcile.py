"""`keyturn reconcile`: where a billing system and Keyturn disagree, and the orders that fix it.

Pure functions, no network: the billing system's current subscriptions and
Keyturn's entitlements (with where each came from) in, mismatches and
corrective orders out. The readers are in `reconcile_sources` (billing side)
and `reconcile_keyturn` (Keyturn side).

Subscriptions and entitlements are matched by external reference
(`stripe:SUB_ID`, `chargify:SUBSCRIPTION_ID`, or a CSV's subscription id). The
kinds of mismatch, and the order line that corrects each (the lifecycle SKUs
of the subscription's base SKU, as the connectors order them):

| kind | what | correction |
|---|---|---|
| `missing` | in billing, no entitlement in Keyturn | `BASE` x quantity, attaching the reference |
| `extra` | a live entitlement (trial, active, suspended) billing does not have | `BASE:cancel` |
| `seats` | seats differ from quantity x seats per unit | `BASE:add-seats` / `BASE:remove-seats` x the difference in units |
| `end_date` | the end dates differ by more than the tolerance | `BASE:renew` x the terms that reach billing's end, when Keyturn's is earlier; none when later (an end date never moves back) |
| `cancelled` | in billing, cancelled in Keyturn | none: nothing applies to a cancelled entitlement |
| `unmapped` | in billing without a SKU (a price without lookup key) | none |

No operation sets an end date, so a renewal extends by its SKU's term: the
count of terms is the one that lands closest to billing's period end (at least
one). The term is that of the entitlement's `create` (the lifecycle SKUs of one
base renew by the term they sell); when billing's end is not a whole number of
terms away, the row says how far the renewal overshoots or falls short, and
the next run reports that difference. A missing subscription is created
with its SKU's term from now: one that started a while ago ends later in
Keyturn than in billing, which the next run reports too.

Every corrective order has source `reconcile` and an id made of the reference
and the entitlement's last change (`REF@create` for a missing one), so applying
the file twice replays, while a later run over a changed entitlement orders
anew.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from google.protobuf import json_format

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

from .lifecycle import CANCEL, RENEW, lifecycle_sku, seat_change_sku

SOURCE = "reconcile"
MAX_ORDER_ID = 128  # FulfillOrderRequest.order_id
DEFAULT_TOLERANCE = timedelta(days=1)
LIVE = frozenset(
    {
        ful.ENTITLEMENT_STATUS_TRIAL,
        ful.ENTITLEMENT_STATUS_ACTIVE,
        ful.ENTITLEMENT_STATUS_SUSPENDED,
    }
)


class Kind(StrEnum):
    MISSING = "missing"
    EXTRA = "extra"
    SEATS = "seats"
    END_DATE = "end_date"
    CANCELLED = "cancelled"
    UNMAPPED = "unmapped"


@dataclass(frozen=True)
class Subscription:
    """A current subscription of the billing system."""

    reference: str  # the external reference of its entitlement (`stripe:sub_123`)
    sku: str  # the base SKU; empty when the billing system names none
    quantity: int
    period_end: datetime | None  # end of the current billing period, UTC
    customer: ful.Customer
    note: str = ""  # why the SKU is empty


@dataclass(frozen=True)
class Held:
    """A Keyturn entitlement carrying a reference of the reconciled system, with what its
    `create` said (from the order that created it): base SKU, seats per unit, term."""

    entitlement: ful.Entitlement
    reference: str
    base_sku: str = ""  # empty when no order created it
    seats_per_unit: int = 1
    term: timedelta | None = None  # None for a perpetual one, or when unknown


@dataclass(frozen=True)
class Mismatch:
    """One row of the report."""

    kind: Kind
    reference: str
    entitlement_id: str
    sku: str
    billing: str  # billing's value (quantity, end date), empty when it has none
    keyturn: str  # Keyturn's value, empty when it has none
    correction: str  # the corrective order line, or why there is none
    line: ful.OrderLine | None = None  # the corrective order line, when there is one


@dataclass
class Reconciliation:
    """The outcome of one comparison: its rows and the orders that correct them."""

    mismatches: list[Mismatch] = field(default_factory=list)
    orders: list[ful.FulfillOrderRequest] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.mismatches


COLUMNS = ("kind", "reference", "entitlement_id", "sku", "billing", "keyturn", "correction")


def reconcile(
    subscriptions: Iterable[Subscription],
    held: Iterable[Held],
    *,
    now: datetime,
    tolerance: timedelta = DEFAULT_TOLERANCE,
) -> Reconciliation:
    """Every difference between billing and Keyturn, by reference, and its corrective orders
    (one per reference, all its lines together)."""
    by_reference = {h.reference: h for h in held}
    result = Reconciliation()
    seen: set[str] = set()
    for sub in sorted(subscriptions, key=lambda s: s.reference):
        seen.add(sub.reference)
        found = by_reference.get(sub.reference)
        rows = _compare(sub, found, now, tolerance)
        _add(result, rows, found, sub.customer, sub.reference)
    for reference in sorted(set(by_reference) - seen):
        found = by_reference[reference]
        if found.entitlement.status in LIVE:
            _add(result, [_extra(found)], found, found.entitlement.customer, reference)
    return result


def _add(
    result: Reconciliation,
    rows: list[Mismatch],
    found: Held | None,
    customer: ful.Customer,
    reference: str,
) -> None:
    result.mismatches += rows
    lines = [row.line for row in rows if row.line is not None]
    if lines:
        result.orders.append(
            ful.FulfillOrderRequest(
                source=SOURCE,
                order_id=order_id(reference, found.entitlement if found else None),
                customer=customer,
                lines=lines,
            )
        )


def order_id(reference: str, entitlement: ful.Entitlement | None) -> str:
    """The corrective order's id: the same state of the same entitlement gives the same id
    (a second import replays); a hash stands in for a reference too long for an id."""
    stamp = "create"
    if entitlement is not None:
        changed = entitlement.update_time
        stamp = f"{changed.seconds}.{changed.nanos:09d}"
    text = f"{reference}@{stamp}"
    if len(text) <= MAX_ORDER_ID:
        return text
    digest = hashlib.sha256(reference.encode()).hexdigest()[:32]
    return f"sha256:{digest}@{stamp}"


def _row(
    kind: Kind,
    sub: Subscription | None,
    found: Held | None,
    billing: str,
    keyturn: str,
    correction: str,
    line: ful.OrderLine | None = None,
) -> Mismatch:
    reference = sub.reference if sub else found.reference if found else ""
    return Mismatch(
        kind=kind,
        reference=reference,
        entitlement_id=found.entitlement.entitlement_id if found else "",
        sku=(sub.sku if sub and sub.sku else found.base_sku if found else ""),
        billing=billing,
        keyturn=keyturn,
        correction=correction if line is None else f"{line.sku_id} x {line.quantity}",
        line=line,
    )


def _compare(
    sub: Subscription, found: Held | None, now: datetime, tolerance: timedelta
) -> list[Mismatch]:
    if not sub.sku:
        return [_row(Kind.UNMAPPED, sub, found, "", "", f"none: {sub.note or 'no SKU'}")]
    if found is None:
        line = ful.OrderLine(
            sku_id=sub.sku, quantity=sub.quantity, external_reference=sub.reference
        )
        return [_row(Kind.MISSING, sub, None, _seats_text(sub.quantity), "", "", line)]
    ent = found.entitlement
    if ent.status == ful.ENTITLEMENT_STATUS_CANCELLED:
        why = "none: a cancelled entitlement takes no more orders"
        return [_row(Kind.CANCELLED, sub, found, "current", "cancelled", why)]
    return [
        row
        for row in (_seats(sub, found), _end_date(sub, found, now, tolerance))
        if row is not None
    ]


def _seats_text(quantity: int) -> str:
    return f"quantity {quantity}"


def _count(seats: int) -> str:
    return "1 seat" if seats == 1 else f"{seats} seats"


def _seats(sub: Subscription, found: Held) -> Mismatch | None:
    want = sub.quantity * found.seats_per_unit
    have = found.entitlement.seats
    if want == have:
        return None
    billing = _count(want) + (
        f" ({sub.quantity} x {found.seats_per_unit})" if found.seats_per_unit != 1 else ""
    )
    keyturn = _count(have)
    units, rest = divmod(abs(want - have), found.seats_per_unit)
    if rest:
        why = f"none: {abs(want - have)} seats is not a whole number of units"
        return _row(Kind.SEATS, sub, found, billing, keyturn, why)
    sku, units = seat_change_sku(sub.sku, units if want > have else -units)
    line = ful.OrderLine(sku_id=sku, quantity=units, external_reference=sub.reference)
    return _row(Kind.SEATS, sub, found, billing, keyturn, "", line)


def _end_date(
    sub: Subscription, found: Held, now: datetime, tolerance: timedelta
) -> Mismatch | None:
    ent = found.entitlement
    if sub.period_end is None:
        return None
    billing = iso(sub.period_end)
    if ent.perpetual or not ent.HasField("end_time"):
        return _row(Kind.END_DATE, sub, found, billing, "perpetual", "none: it never ends")
    end = ent.end_time.ToDatetime(UTC)
    if abs(end - sub.period_end) <= tolerance:
        return None
    keyturn = iso(end)
    if end > sub.period_end:
        why = "none: an end date never moves back"
        return _row(Kind.END_DATE, sub, found, billing, keyturn, why)
    if found.term is None or found.term <= timedelta(0):
        why = "none: the renewal term is unknown (no order created the entitlement)"
        return _row(Kind.END_DATE, sub, found, billing, keyturn, why)
    # A renewal starts from the end date while the entitlement is live, from now once it
    # has expired (the default anchor, RENEWAL_ANCHOR_FROM_NOW_IF_EXPIRED).
    expired = end + ent.grace_period.ToTimedelta() < now
    base = now if expired else end
    terms = max(1, round((sub.period_end - base) / found.term))
    lands = base + terms * found.term
    line = ful.OrderLine(
        sku_id=lifecycle_sku(sub.sku, RENEW), quantity=terms, external_reference=sub.reference
    )
    row = _row(Kind.END_DATE, sub, found, billing, keyturn, "", line)
    off = lands - sub.period_end
    if abs(off) <= tolerance:
        return row
    how = (
        f"overshoots by about {off.days} days"
        if off > tolerance
        else (f"falls about {(-off).days} days short")
    )
    return replace(row, correction=f"{row.correction} ({how})")


def _extra(found: Held) -> Mismatch:
    status = ful.EntitlementStatus.Name(found.entitlement.status).removeprefix(
        "ENTITLEMENT_STATUS_"
    )
    keyturn = status.lower()
    if not found.base_sku:
        why = "none: the SKU that created it is unknown"
        return _row(Kind.EXTRA, None, found, "", keyturn, why)
    line = ful.OrderLine(
        sku_id=lifecycle_sku(found.base_sku, CANCEL), quantity=1, external_reference=found.reference
    )
    return _row(Kind.EXTRA, None, found, "", keyturn, "", line)


def iso(moment: datetime) -> str:
    """A time as the report shows it: UTC, to the second."""
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# --- output ---------------------------------------------------------------------------------


def report_csv(mismatches: Sequence[Mismatch]) -> str:
    """The report as CSV, one row per mismatch."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(_cells(m) for m in mismatches)
    return out.getvalue()


def _cells(m: Mismatch) -> tuple[str, ...]:
    return (m.kind.value, m.reference, m.entitlement_id, m.sku, m.billing, m.keyturn, m.correction)


def report_table(result: Reconciliation, compared: int) -> str:
    """The report for people: a table and a one-line summary."""
    if result.clean:
        return f"reconciled {compared} subscriptions: no differences\n"
    from rich.console import Console
    from rich.table import Table

    table = Table(*COLUMNS, box=None, pad_edge=False)
    for m in result.mismatches:
        table.add_row(*_cells(m))
    text = io.StringIO()
    Console(file=text, width=200, no_color=True, highlight=False).print(table)
    rows = "".join(line.rstrip() + "\n" for line in text.getvalue().splitlines())
    counts: dict[str, int] = {}
    for m in result.mismatches:
        counts[m.kind.value] = counts.get(m.kind.value, 0) + 1
    summary = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))
    return (
        f"{rows}{len(result.mismatches)} differences over {compared} subscriptions ({summary}); "
        f"corrective orders: {len(result.orders)}\n"
    )


def corrections_jsonl(orders: Sequence[ful.FulfillOrderRequest]) -> str:
    """The corrective orders as `keyturn orders import` reads them: one FulfillOrderRequest
    in its JSON form per line."""
    return "".join(
        json.dumps(json_format.MessageToDict(order, preserving_proto_field_name=True)) + "\n"
        for order in orders
    )
