"""A NetSuite Sales Order, as examples/netsuite/keyturn_post.js posts it, as a Keyturn
order: pure functions, no network.

Each Sales Order is one Keyturn order, `INTERNAL_ID:REVISION` (the order's internal id
and its `custbody_keyturn_revision`, default 0): a re-post of the same order (saved
again, approved then billed, retried) replays; a deliberate later change of the same
order raises the revision and is a new order; a changed order posted without a new
revision is refused (ORDER_CONFLICT), never applied twice.

What each item line does is its action: the line's `custcol_keyturn_action`, else the
order's `custbody_keyturn_action`, else the Contract Renewals order type
(`custbody_order_type`: 1 Contract-New, 2 Contract-Renewal, 3 Contract-Upsell,
13 Contract-Downsell), else `create`. The item's internal id names the base SKU through
the product map (section `netsuite`):

| action | order line |
|---|---|
| `create` | `BASE` x quantity, attaching `netsuite:SUBSCRIPTION` |
| `renew` | `BASE:renew` x 1 |
| `add-seats` / `remove-seats` (upsell / downsell) | `BASE:add-seats` / `BASE:remove-seats` x the quantity (a negative upsell quantity removes) |
| `switch` | `NEW_BASE:switch` x 1 (the line names the new edition's item) |
| `cancel`, `suspend`, `reinstate` | `BASE:cancel` (`:suspend`, `:reinstate`) x 1 |
| `none` | nothing (an item Keyturn does not license) |

SUBSCRIPTION is the line's `custcol_keyturn_subscription`, else the order's
`custbody_keyturn_subscription`; a create without one names the entitlement after the
order's own internal id, so the later orders of that subscription carry that id (an
order creating several subscriptions gives each line its own).
Lines of NetSuite's non-item types (description, discount, subtotal, markup, payment,
group markers) are skipped. An item the map lacks refuses the whole order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

from .lifecycle import (
    ADD_SEATS,
    CANCEL,
    REINSTATE,
    REMOVE_SEATS,
    RENEW,
    SUSPEND,
    SWITCH,
    lifecycle_sku,
    seat_change_sku,
)
from .product_map import ProductMap
from .webhook_server import Ignored

SOURCE = "netsuite"
CREATE = "create"
NONE = "none"
ACTIONS = (CREATE, RENEW, ADD_SEATS, REMOVE_SEATS, SWITCH, CANCEL, SUSPEND, REINSTATE, NONE)
# custbody_order_type of the Contract Renewals SuiteApp, by internal id of its list value.
CONTRACT_ORDER_TYPES = {"1": CREATE, "2": RENEW, "3": ADD_SEATS, "13": REMOVE_SEATS}
NOT_ITEMS = frozenset(
    {"Description", "Discount", "EndGroup", "Group", "Markup", "Payment", "Subtotal"}
)
Json = Mapping[str, Any]


class UnusableOrder(ValueError):
    """A posted order that cannot become a Keyturn order as it stands; `reason` says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def reference(subscription: str) -> str:
    return f"{SOURCE}:{subscription}"


def order_id(payload: Json) -> str:
    """The order id of a posted Sales Order: its internal id and change marker."""
    return f"{_text(payload.get('id'))}:{_text(payload.get('revision')) or '0'}"


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def order_for_sales_order(payload: Json, products: ProductMap) -> ful.FulfillOrderRequest | Ignored:
    """The order a posted Sales Order calls for; UnusableOrder when it cannot be one."""
    if payload.get("recordType") != "salesorder" or not _text(payload.get("id")):
        raise UnusableOrder("NOT_A_SALES_ORDER", "the payload is not a posted Sales Order")
    customer = payload.get("customer")
    if not isinstance(customer, Mapping) or not _text(customer.get("id")):
        raise UnusableOrder("NO_CUSTOMER", "the Sales Order names no customer (entity)")
    raw_lines = payload.get("lines")
    if not isinstance(raw_lines, list):
        raise UnusableOrder("NO_LINES", "the Sales Order has no item lines")
    lines: list[ful.OrderLine] = []
    created: list[str] = []  # the subscriptions the order's create lines name
    unmapped: list[str] = []
    for position, raw in enumerate(raw_lines, start=1):
        if not isinstance(raw, Mapping):
            raise UnusableOrder("BAD_LINE", f"line {position} is not an object")
        if _text(raw.get("itemType")) in NOT_ITEMS:
            continue
        action = _action(payload, raw, position)
        if action == NONE:
            continue
        item = _text(raw.get("item"))
        base = products.sku(SOURCE, item)
        if base is None:
            unmapped.append(item or f"(line {position} has no item)")
            continue
        lines.append(_line(payload, raw, position, action, base))
        if action == CREATE:
            created.append(lines[-1].external_reference)
    if unmapped:
        raise UnusableOrder(
            "ITEM_NOT_MAPPED",
            f"items {', '.join(unmapped)} are not in the product map (section netsuite): "
            "add them to KEYTURN_PRODUCT_MAP and restart the connector",
        )
    if not lines:
        return Ignored("no item line for Keyturn")
    _check_one_create_per_subscription(created)
    return ful.FulfillOrderRequest(
        source=SOURCE,
        order_id=order_id(payload),
        customer=ful.Customer(
            customer_id=_text(customer.get("id")),
            name=_text(customer.get("name")),
            email=_text(customer.get("email")),
        ),
        lines=lines,
    )


def _check_one_create_per_subscription(created: list[str]) -> None:
    """Two lines creating the same subscription would be refused by Keyturn for the
    second; say which field tells them apart instead."""
    repeated = sorted({ref for ref in created if created.count(ref) > 1})
    if repeated:
        raise UnusableOrder(
            "SUBSCRIPTION_CREATED_TWICE",
            f"several lines create {', '.join(repeated)}: give each its own "
            "custcol_keyturn_subscription",
        )


def _action(payload: Json, line: Json, position: int) -> str:
    action = (
        _text(line.get("action"))
        or _text(payload.get("action"))
        or CONTRACT_ORDER_TYPES.get(_text(payload.get("orderType")), "")
        or CREATE
    ).lower()
    if action not in ACTIONS:
        raise UnusableOrder(
            "UNKNOWN_ACTION", f"line {position}: action {action!r}; use one of {', '.join(ACTIONS)}"
        )
    return action


def _line(payload: Json, line: Json, position: int, action: str, base: str) -> ful.OrderLine:
    subscription = _text(line.get("subscription")) or _text(payload.get("subscription"))
    if not subscription and action != CREATE:
        raise UnusableOrder(
            "NO_SUBSCRIPTION",
            f"line {position}: {action} names no subscription (custcol_keyturn_subscription "
            "or custbody_keyturn_subscription: the internal id of the order that created it)",
        )
    target = reference(subscription or _text(payload.get("id")))
    quantity = _quantity(line, position)
    if action == CREATE:
        if quantity <= 0:
            raise UnusableOrder("BAD_QUANTITY", f"line {position}: a create needs a quantity")
        return ful.OrderLine(sku_id=base, quantity=quantity, external_reference=target)
    if action in (ADD_SEATS, REMOVE_SEATS):
        delta = quantity if action == ADD_SEATS else -abs(quantity)
        if delta == 0:
            raise UnusableOrder("BAD_QUANTITY", f"line {position}: a seat change of 0")
        sku, units = seat_change_sku(base, delta)
        return ful.OrderLine(sku_id=sku, quantity=units, external_reference=target)
    return ful.OrderLine(sku_id=lifecycle_sku(base, action), quantity=1, external_reference=target)


def _quantity(line: Json, position: int) -> int:
    value = line.get("quantity")
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise UnusableOrder("BAD_QUANTITY", f"line {position}: quantity {value!r} is not whole")
    return int(value)
