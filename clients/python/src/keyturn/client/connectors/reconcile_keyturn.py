"""Keyturn's side of a reconciliation: the entitlements of one billing system, each with
what the order that created it said (base SKU, seats per unit, term).

Read with a `read` token: ListEntitlements (every page), then for each entitlement
of the system its first event (the creation, naming its order) and that order
(GetOrder, once per order), whose `create` line gives the SKU and the quantity.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC
from typing import Protocol

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

from .reconcile import Held

PAGE_SIZE = 500


class Reader(Protocol):
    """What is read of FulfillmentClient."""

    def list_entitlements(
        self, *, page_size: int = 0, **filters: str | int
    ) -> Iterator[ful.Entitlement]: ...

    def list_entitlement_events(
        self, entitlement_id: str, *, page_size: int = 0
    ) -> Iterator[ful.EntitlementEvent]: ...

    def get_order(self, source: str, order_id: str) -> ful.Order: ...


def system_of(reference: str) -> str:
    """`stripe` of `stripe:sub_123`: the system an external reference belongs to."""
    return reference.partition(":")[0] if ":" in reference else ""


def held_entitlements(client: Reader, systems: Iterable[str]) -> list[Held]:
    """Every entitlement with a reference of one of the systems (any status), by reference."""
    wanted = set(systems)
    orders: dict[tuple[str, str], ful.Order] = {}
    held = []
    for ent in client.list_entitlements(page_size=PAGE_SIZE):
        for reference in ent.external_references:
            if system_of(reference) in wanted:
                held.append(_origin(client, ent, reference, orders))
    return held


def _origin(
    client: Reader,
    ent: ful.Entitlement,
    reference: str,
    orders: dict[tuple[str, str], ful.Order],
) -> Held:
    first = next(iter(client.list_entitlement_events(ent.entitlement_id, page_size=1)), None)
    if first is None or not first.order_id:
        return Held(ent, reference)
    key = (first.order_source, first.order_id)
    if key not in orders:
        orders[key] = client.get_order(*key)
    order = orders[key]
    for result in order.results:
        if result.entitlement_id == ent.entitlement_id and "create" in result.operations:
            line = order.lines[result.line_index]
            created = first.entitlement
            per_unit = max(1, created.seats // max(1, line.quantity))
            term = None
            if created.HasField("end_time") and not created.perpetual:
                term = created.end_time.ToDatetime(UTC) - created.start_time.ToDatetime(UTC)
            return Held(ent, reference, line.sku_id, per_unit, term)
    return Held(ent, reference)
