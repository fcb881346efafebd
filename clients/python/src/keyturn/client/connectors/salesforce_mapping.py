"""Salesforce Orders (and Closed Won Opportunities) as Keyturn orders: the SOQL that reads
one back, and the pure mapping of its answer. No network here.

What a record does is its standard `Type` picklist, with the values CPQ-style orgs use
(a New order starts a Contract, Renewal and Amendment orders reference it):

| Type | order lines |
|---|---|
| New, New Customer, none | `BASE` x quantity, attaches `salesforce:CONTRACT_ID` |
| Renewal | `BASE:renew` x 1 |
| Amendment (Existing Customer - Upgrade / Downgrade / Replacement) | the quantity changes: |
|   one product, +n / -n | `BASE:add-seats` / `BASE:remove-seats` x n |
|   one product -n, another +m | `NEW:switch` x 1, then `NEW:add-seats` / `:remove-seats` x abs(m-n) |
| Cancellation | `BASE:cancel` x 1 |

`BASE` is the product map's SKU for the line's `Product2.ProductCode`. Amendment lines
carry the change of quantity, as CPQ's amendment orders do (negative: removed). The
subscription is the record's `ContractId`; a New order without one is its own
(`salesforce:ORDER_ID`), which later orders then name as `OriginalOrderId`. The order id
is the record's 18-character Id, so Salesforce's retries (and a re-fired workflow)
replay. A record not yet Activated (Order) or won (Opportunity), or an amendment that
changes no quantity, needs no order.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, assert_never

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

from .lifecycle import CANCEL, RENEW, SWITCH, lifecycle_sku, seat_change_sku
from .salesforce_message import is_salesforce_id

SOURCE = "salesforce"
Json = dict[str, Any]
SkuOf = Callable[[str], "str | None"]  # Product2.ProductCode -> base SKU


class Purpose(enum.Enum):
    """What a record does to its subscription."""

    CREATE = "create"
    RENEWAL = "renewal"
    AMENDMENT = "amendment"
    CANCELLATION = "cancellation"


ORDER_TYPES = {  # the Type picklist value, lower-cased
    "": Purpose.CREATE,
    "new": Purpose.CREATE,
    "new customer": Purpose.CREATE,
    "renewal": Purpose.RENEWAL,
    "amendment": Purpose.AMENDMENT,
    "existing customer - upgrade": Purpose.AMENDMENT,
    "existing customer - downgrade": Purpose.AMENDMENT,
    "existing customer - replacement": Purpose.AMENDMENT,
    "cancellation": Purpose.CANCELLATION,
}


@dataclass(frozen=True)
class Ignored:
    """A record that needs no order, and why."""

    reason: str


class UnusableOrder(ValueError):
    """A record that cannot become an order as it stands (the fix is in Salesforce)."""


class UnmappedProduct(UnusableOrder):
    """A product code the product map lacks (the fix is in the map)."""


@dataclass(frozen=True)
class ObjectKind:
    """How one sObject type is read back: its fields, line items and contacts."""

    name: str
    lines: str  # the child relationship of its products
    bill_to: str  # the contact whose Email is the customer's
    ship_to: str | None  # the contact whose Email gets the license keys (else bill_to's)
    extra: tuple[str, ...]  # more fields the mapping reads

    @property
    def contacts(self) -> tuple[str, ...]:
        return (self.bill_to,) if self.ship_to is None else (self.bill_to, self.ship_to)

    def soql(self, object_id: str) -> str:
        if not is_salesforce_id(object_id):  # ids are quoted into the query
            raise UnusableOrder(f"{object_id!r} is not a Salesforce id")
        fields = [
            "Id",
            "Type",
            "AccountId",
            "Account.Name",
            "ContractId",
            *self.extra,
            *(f"{contact}.Email" for contact in self.contacts),
            f"(SELECT Id, Quantity, Product2.ProductCode FROM {self.lines})",
        ]
        return f"SELECT {', '.join(fields)} FROM {self.name} WHERE Id = '{object_id}'"


ORDER = ObjectKind(
    "Order", "OrderItems", "BillToContact", "ShipToContact", ("StatusCode", "OriginalOrderId")
)
OPPORTUNITY = ObjectKind("Opportunity", "OpportunityLineItems", "Contact", None, ("IsWon",))
KINDS = {kind.name: kind for kind in (ORDER, OPPORTUNITY)}


def reference(record_id: str) -> str:
    return f"{SOURCE}:{record_id}"


def order_for_record(
    kind: ObjectKind, record: Json, sku_of: SkuOf
) -> ful.FulfillOrderRequest | Ignored:
    """The order a record read back by `kind.soql` calls for, or why none; UnusableOrder
    (UnmappedProduct) when it cannot be fulfilled as it stands."""
    record_id = str(record.get("Id") or "")
    if kind is ORDER and record.get("StatusCode") != "Activated":
        return Ignored(f"order {record_id} is {record.get('StatusCode')}, not Activated")
    if kind is OPPORTUNITY and record.get("IsWon") is not True:
        return Ignored(f"opportunity {record_id} is not won")
    order_type = str(record.get("Type") or "").strip()
    purpose = ORDER_TYPES.get(order_type.lower())
    if purpose is None:
        known = ", ".join(sorted(t.title() for t in ORDER_TYPES if t))
        raise UnusableOrder(f"{kind.name} {record_id}: Type {order_type!r} is none of {known}")
    changes = _quantities(kind, record, sku_of)
    if purpose is Purpose.AMENDMENT and not changes:  # a price or a date amended: no seat moved
        return Ignored(f"amendment {record_id} changes no quantity")
    contract = str(record.get("ContractId") or "")
    if purpose is Purpose.CREATE:
        lines = [_create_line(record_id, changes, contract or record_id)]
    else:
        target = contract or str(record.get("OriginalOrderId") or "")
        if not target:
            raise UnusableOrder(
                f"{kind.name} {record_id} ({order_type}) names no ContractId (or OriginalOrderId)"
            )
        lines = [
            ful.OrderLine(sku_id=sku, quantity=quantity, external_reference=reference(target))
            for sku, quantity in _change_lines(purpose, record_id, changes)
        ]
    return ful.FulfillOrderRequest(
        source=SOURCE,
        order_id=record_id,
        customer=_customer(kind, record),
        ship_to_email=_email(record, kind.ship_to) if kind.ship_to else "",
        lines=lines,
    )


def _quantities(kind: ObjectKind, record: Json, sku_of: SkuOf) -> dict[str, int]:
    """Quantity by base SKU over the record's lines (a product on several lines summed)."""
    items = (record.get(kind.lines) or {}).get("records") or []
    if not items:
        raise UnusableOrder(f"{kind.name} {record.get('Id')} has no {kind.lines}")
    totals: dict[str, int] = {}
    for item in items:
        code = str((item.get("Product2") or {}).get("ProductCode") or "")
        sku = sku_of(code)
        if sku is None:
            raise UnmappedProduct(
                f"product code {code!r} is not in the salesforce section of the product map"
            )
        quantity = item.get("Quantity")
        if not isinstance(quantity, int | float) or quantity != int(quantity):
            raise UnusableOrder(f"line {item.get('Id')}: Quantity {quantity!r} is not whole")
        totals[sku] = totals.get(sku, 0) + int(quantity)
    return {sku: quantity for sku, quantity in totals.items() if quantity}


def _create_line(record_id: str, changes: Mapping[str, int], subscription: str) -> ful.OrderLine:
    if len(changes) != 1 or min(changes.values()) < 1:
        raise UnusableOrder(
            f"new order {record_id}: one subscription product with a positive quantity "
            f"per order, not {dict(changes)}"
        )
    [(sku, quantity)] = changes.items()
    return ful.OrderLine(sku_id=sku, quantity=quantity, external_reference=reference(subscription))


def _change_lines(
    purpose: Purpose, record_id: str, changes: Mapping[str, int]
) -> list[tuple[str, int]]:
    """The (SKU, quantity) lines of a Renewal, Amendment or Cancellation."""
    match purpose:
        case Purpose.RENEWAL:
            return [(lifecycle_sku(_one(record_id, changes), RENEW), 1)]
        case Purpose.CANCELLATION:
            return [(lifecycle_sku(_one(record_id, changes), CANCEL), 1)]
        case Purpose.AMENDMENT:
            return _amendment_lines(record_id, changes)
        case Purpose.CREATE:
            raise AssertionError("a create orders its base SKU")
        case _:
            assert_never(purpose)


def _one(record_id: str, changes: Mapping[str, int]) -> str:
    if len(changes) != 1:
        raise UnusableOrder(f"order {record_id}: one subscription product, not {dict(changes)}")
    [sku] = changes
    return sku


def _amendment_lines(record_id: str, changes: Mapping[str, int]) -> list[tuple[str, int]]:
    """One product's quantity changed: its seats; one product replaced by another: the
    new one's edition, then the difference in seats."""
    if len(changes) == 1:
        [(sku, delta)] = changes.items()
        return [seat_change_sku(sku, delta)]
    removed = [sku for sku, delta in changes.items() if delta < 0]
    added = [sku for sku, delta in changes.items() if delta > 0]
    if len(removed) != 1 or len(added) != 1:
        raise UnusableOrder(
            f"amendment {record_id}: change one product's quantity, or replace one product "
            f"by another; not {dict(changes)}"
        )
    old, new = removed[0], added[0]
    lines = [(lifecycle_sku(new, SWITCH), 1)]
    if changes[new] + changes[old]:
        lines.append(seat_change_sku(new, changes[new] + changes[old]))
    return lines


def _email(record: Json, contact: str) -> str:
    return str((record.get(contact) or {}).get("Email") or "")


def _customer(kind: ObjectKind, record: Json) -> ful.Customer:
    emails = (_email(record, contact) for contact in kind.contacts)
    return ful.Customer(
        customer_id=str(record.get("AccountId") or "") or "unknown",
        name=str((record.get("Account") or {}).get("Name") or ""),
        email=next((email for email in emails if email), ""),
    )
