"""Stripe events as Keyturn orders: pure functions, no network.

The SKU of an order line is the Stripe price's lookup key, with a suffix for
what happened to the subscription:

| Stripe event | order line |
|---|---|
| `invoice.paid`, billing reason `subscription_create` | `LOOKUP_KEY` x quantity, attaches `stripe:SUB_ID` |
| `invoice.paid`, billing reason `subscription_cycle` | `LOOKUP_KEY:renew` x 1 |
| `customer.subscription.updated`, quantity up / down | `LOOKUP_KEY:add-seats` / `:remove-seats` x difference |
| `customer.subscription.updated`, another price | `NEW_LOOKUP_KEY:switch` x 1 |
| `customer.subscription.deleted` | `LOOKUP_KEY:cancel` x 1 |
| `checkout.session.completed`, mode `payment`, paid | metadata `keyturn_sku` x `keyturn_quantity` |
| `checkout.session.async_payment_succeeded`, mode `payment` | the same |

The derived SKUs (`LOOKUP_KEY:renew` and the rest) are ordinary catalog SKUs:
the catalog, not this module, says what each event does to the entitlement
(examples/catalog.yaml carries them for its Stripe lookup keys). A lookup key
without them gets its later events refused (HTTP 422, retried by Stripe) until
the catalog has them; nothing is guessed from the base SKU.

Every other event (and `checkout.session.completed` of a subscription,
whose first invoice does the work, or of a payment still pending, which
`checkout.session.async_payment_succeeded` fulfils once it succeeds) is
acknowledged and ignored. Invoice lines of one-off invoice items (a setup
fee) and prorations name no SKU and are skipped. The invoice id is the
order id of `invoice.paid`, the event id that of the others, so Stripe's
retries replay instead of fulfilling twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

from .lifecycle import ADD_SEATS, CANCEL, REMOVE_SEATS, RENEW, SWITCH, lifecycle_sku
from .webhook_server import Ignored

SOURCE = "stripe"


class UnusableEvent(ValueError):
    """A relevant event that lacks what an order needs (e.g. a price without lookup key)."""


Mapped = ful.FulfillOrderRequest | Ignored
Json = dict[str, Any]
PriceLookup = Callable[[str], "str | None"]  # price id -> its lookup key


def order_for_event(event: Json, prices: PriceLookup | None = None) -> Mapped:
    """The order an event calls for, or why none."""
    kind = str(event.get("type", ""))
    obj = event.get("data", {}).get("object", {})
    if kind == "invoice.paid":
        return _invoice_paid(obj, prices)
    if kind == "customer.subscription.updated":
        previous = event.get("data", {}).get("previous_attributes", {}) or {}
        return _subscription_updated(str(event["id"]), obj, previous, prices)
    if kind == "customer.subscription.deleted":
        return _subscription_deleted(str(event["id"]), obj, prices)
    if kind in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
        return _checkout_completed(str(event["id"]), obj)
    return Ignored(f"event type {kind!r} is not mapped to orders")


def reference(subscription_id: str) -> str:
    return f"{SOURCE}:{subscription_id}"


def _id(value: Any) -> str:
    """An id field, whether Stripe sent the id or the expanded object."""
    if isinstance(value, dict):
        return str(value.get("id", ""))
    return "" if value is None else str(value)


def _invoice_subscription(invoice: Json) -> str:
    direct = _id(invoice.get("subscription"))
    if direct:
        return direct
    parent = invoice.get("parent") or {}
    return _id((parent.get("subscription_details") or {}).get("subscription"))


def _lookup_key(price: Any, where: str, prices: PriceLookup | None) -> str:
    """The price's lookup key: in the event, or looked up by the price id (API versions
    from 2025-03-31 name only the id on invoice lines)."""
    key = price.get("lookup_key") if isinstance(price, dict) else None
    if key:
        return str(key)
    price_id = _id(price)
    if price_id and prices is not None:
        found = prices(price_id)
        if found:
            return found
        raise UnusableEvent(f"{where}: price {price_id} has no lookup_key (it names the SKU)")
    hint = "" if prices is not None else "; set a Stripe API key to look prices up"
    raise UnusableEvent(f"{where}: the price has no lookup_key (it names the SKU){hint}")


def _line_price(line: Json) -> Any:
    """An invoice line's price: an object (older API versions) or an id under `pricing`."""
    return line.get("price") or ((line.get("pricing") or {}).get("price_details") or {}).get(
        "price"
    )


def _customer(obj: Json) -> ful.Customer:
    return ful.Customer(
        customer_id=_id(obj.get("customer")) or "unknown",
        name=str(obj.get("customer_name") or (obj.get("customer_details") or {}).get("name") or ""),
        email=str(
            obj.get("customer_email") or (obj.get("customer_details") or {}).get("email") or ""
        ),
    )


def _order(order_id: str, customer: ful.Customer, lines: list[ful.OrderLine]) -> Mapped:
    if not lines:
        return Ignored("nothing to fulfil")
    return ful.FulfillOrderRequest(source=SOURCE, order_id=order_id, customer=customer, lines=lines)


def _invoice_paid(invoice: Json, prices: PriceLookup | None) -> Mapped:
    reason = invoice.get("billing_reason")
    subscription = _invoice_subscription(invoice)
    if not subscription:
        return Ignored("invoice of no subscription")
    lines_data = _subscription_lines((invoice.get("lines") or {}).get("data") or [])
    if reason == "subscription_create":
        lines = []
        for index, item in enumerate(lines_data):
            key = _lookup_key(_line_price(item), f"invoice line {index}", prices)
            lines.append(
                ful.OrderLine(
                    sku_id=key,
                    quantity=int(item.get("quantity") or 1),
                    # The first line creates the entitlement and names it; the others
                    # (add-ons) find it by that name.
                    external_reference=reference(subscription),
                )
            )
        return _order(str(invoice["id"]), _customer(invoice), lines)
    if reason == "subscription_cycle":
        keys = [
            _lookup_key(_line_price(item), f"invoice line {index}", prices)
            for index, item in enumerate(lines_data)
        ]
        lines = (
            [
                ful.OrderLine(
                    sku_id=lifecycle_sku(keys[0], RENEW),
                    quantity=1,
                    external_reference=reference(subscription),
                )
            ]
            if keys
            else []
        )
        return _order(str(invoice["id"]), _customer(invoice), lines)
    return Ignored(f"invoice billing reason {reason!r} needs no order")


def _subscription_lines(lines_data: list[Json]) -> list[Json]:
    """The invoice lines that bill the subscription's items: not one-off invoice items
    (a setup fee, which needs no lookup key) nor prorations carried over from changes."""
    kept = []
    for item in lines_data:
        parent_type = (item.get("parent") or {}).get("type")  # API 2025-03-31 and later
        if item.get("type") == "invoiceitem" or parent_type == "invoice_item_details":
            continue
        if item.get("proration"):
            continue
        kept.append(item)
    return kept


def _items(subscription: Json) -> list[Json]:
    return list((subscription.get("items") or {}).get("data") or [])


def _subscription_updated(
    event_id: str, subscription: Json, previous: Json, prices: PriceLookup | None
) -> Mapped:
    if "items" not in previous:
        return Ignored("no change of price or quantity")
    before = {
        _id(i.get("id")) or str(index): i
        for index, i in enumerate(_items({"items": previous["items"]}))
    }
    ref = reference(str(subscription["id"]))
    lines: list[ful.OrderLine] = []
    for index, item in enumerate(_items(subscription)):
        key = _lookup_key(item.get("price"), f"subscription item {index}", prices)
        old = before.get(_id(item.get("id")) or str(index))
        if old is None:
            continue
        old_price = old.get("price") or {}
        if (
            isinstance(old_price, dict)
            and old_price.get("id")
            and old_price.get("id") != _id(item.get("price"))
        ):
            lines.append(
                ful.OrderLine(sku_id=lifecycle_sku(key, SWITCH), quantity=1, external_reference=ref)
            )
        delta = int(item.get("quantity") or 0) - int(
            old.get("quantity") or item.get("quantity") or 0
        )
        if delta > 0:
            lines.append(
                ful.OrderLine(
                    sku_id=lifecycle_sku(key, ADD_SEATS), quantity=delta, external_reference=ref
                )
            )
        elif delta < 0:
            lines.append(
                ful.OrderLine(
                    sku_id=lifecycle_sku(key, REMOVE_SEATS),
                    quantity=-delta,
                    external_reference=ref,
                )
            )
    return _order(event_id, _customer(subscription), lines)


def _subscription_deleted(event_id: str, subscription: Json, prices: PriceLookup | None) -> Mapped:
    items = _items(subscription)
    if not items:
        raise UnusableEvent("the deleted subscription has no items")
    key = _lookup_key(items[0].get("price"), "subscription item 0", prices)
    line = ful.OrderLine(
        sku_id=lifecycle_sku(key, CANCEL),
        quantity=1,
        external_reference=reference(str(subscription["id"])),
    )
    return _order(event_id, _customer(subscription), [line])


def _checkout_completed(event_id: str, session: Json) -> Mapped:
    if session.get("mode") != "payment":
        return Ignored("a subscription checkout: its first invoice.paid fulfils it")
    if session.get("payment_status") == "unpaid":
        return Ignored(
            "the payment is pending: checkout.session.async_payment_succeeded fulfils it"
        )
    metadata = session.get("metadata") or {}
    sku = metadata.get("keyturn_sku")
    if not sku:
        return Ignored("a payment checkout without metadata keyturn_sku")
    line = ful.OrderLine(sku_id=str(sku), quantity=int(metadata.get("keyturn_quantity") or 1))
    return _order(event_id, _customer(session), [line])
