"""Chargify / Maxio Advanced Billing webhooks as Keyturn orders: pure functions, no network.

A webhook is a form-encoded body (`id`, `event`, and `payload[...]` keys in
square-bracket notation, `payload[subscription][product][handle]=...`). The
subscription's product handle names the base SKU through the `chargify` section
of the product map (KEYTURN_PRODUCT_MAP); every later change orders a SKU derived
from it (keyturn.client.connectors.lifecycle):

| Chargify event | order line (all of `chargify:SUBSCRIPTION_ID`) |
|---|---|
| `signup_success` | `BASE` x the seats bought (at least 1), attaches the reference |
| `renewal_success` | `BASE:renew` x 1 |
| `subscription_product_change` | `NEW_BASE:switch` x 1 |
| `component_allocation_change` of a seat component | `BASE:add-seats` / `:remove-seats` x the difference of `new_allocation` and `previous_allocation` |
| `subscription_state_change` to `canceled` / `expired` | `BASE:cancel` |
| `subscription_state_change` to `past_due` / `soft_failure` / `unpaid` / `on_hold` | `BASE:suspend` |
| `subscription_state_change` from one of those back to `active` / `trialing` | `BASE:reinstate` |

The seats a subscription is created with come from Chargify's API
(chargify_api.ChargifySeats, when the connector has an API key): the signup
webhook does not carry them. Without a key a signup orders one unit.

A seat component is a quantity-based component (`payload[component][kind]`
`quantity_based_component`); when the vendor names components (by id or handle,
KEYTURN_CHARGIFY_SEAT_COMPONENTS), only those. Chargify's component webhook names
the subscription's product by id only (no handle), so the `chargify` section may
map a product's numeric id as well as its handle; the handle is looked up first.

The webhook `id` is the order id: Chargify keeps it on every retry and replay, so
those replay the order instead of fulfilling it twice. Every other event (and
`test`) needs no order. A product the map lacks is refused (Unmapped), so that
Chargify records the webhook as failed and sends it again.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from urllib.parse import parse_qsl

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

from .lifecycle import CANCEL, REINSTATE, RENEW, SUSPEND, SWITCH, lifecycle_sku, seat_change_sku

SOURCE = "chargify"
SEAT_KIND = "quantity_based_component"
MAX_FIELDS = 5000  # a webhook carries a few hundred keys
CANCELLED_STATES = frozenset({"canceled", "expired"})
SUSPENDED_STATES = frozenset({"past_due", "soft_failure", "unpaid", "on_hold"})
LIVE_STATES = frozenset({"active", "trialing"})
MAX_QUANTITY = 100_000  # OrderLine.quantity's bound

Form = Mapping[str, str]
BaseSku = Callable[[str], "str | None"]  # product handle or id -> base SKU
SignupSeats = Callable[[str, str], int]  # subscription id, site subdomain -> seats bought


@dataclass(frozen=True)
class Ignored:
    """A webhook that needs no order, and why."""

    reason: str


class UnusableWebhook(ValueError):
    """A relevant webhook that lacks what an order needs (no subscription id, a
    fractional seat count)."""


class Unmapped(ValueError):
    """The subscription's product is not in the product map: refused until it is."""


Mapped = ful.FulfillOrderRequest | Ignored


def parse_form(body: bytes) -> dict[str, str]:
    """The webhook's keys and values (the last one of a repeated key)."""
    text = body.decode("utf-8")
    return dict(parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FIELDS))


def payload(form: Form, *path: str) -> str:
    """`payload[a][b]...` of the form, stripped; "" when absent."""
    key = "payload" + "".join(f"[{part}]" for part in path)
    return form.get(key, "").strip()


def reference(subscription_id: str) -> str:
    return f"{SOURCE}:{subscription_id}"


def order_for_webhook(
    form: Form,
    products: BaseSku,
    seat_components: Collection[str] = (),
    signup_seats: SignupSeats | None = None,
) -> Mapped:
    """The order a webhook calls for, or why none; `signup_seats` says how many units a
    new subscription bought (without it: one)."""
    event = form.get("event", "")
    webhook_id = form.get("id", "").strip()
    if event == "signup_success":
        return _signup(webhook_id, form, products, signup_seats)
    if event == "renewal_success":
        return _change(webhook_id, form, products, RENEW)
    if event == "subscription_product_change":
        return _change(webhook_id, form, products, SWITCH)
    if event == "component_allocation_change":
        return _allocation(webhook_id, form, products, seat_components)
    if event == "subscription_state_change":
        return _state_change(webhook_id, form, products)
    return Ignored(f"event {event!r} is not mapped to orders")


def _subscription_id(form: Form) -> str:
    subscription = payload(form, "subscription", "id")
    if not subscription:
        raise UnusableWebhook("payload[subscription][id] is missing")
    return subscription


def _product_sku(products: BaseSku, handle: str, product_id: str, name: str) -> str:
    """The base SKU of a product, by its handle, else by its id."""
    for key in (handle, product_id):
        sku = products(key) if key else None
        if sku:
            return sku
    shown = f"handle {handle!r}" if handle else f"id {product_id!r}"
    if not handle and not product_id:
        raise UnusableWebhook("the webhook names no product (handle or id)")
    raise Unmapped(
        f"product {shown} ({name or 'no name'}) is not in the chargify section of the "
        "product map (KEYTURN_PRODUCT_MAP)"
    )


def _subscription_sku(form: Form, products: BaseSku) -> str:
    return _product_sku(
        products,
        payload(form, "subscription", "product", "handle"),
        payload(form, "subscription", "product", "id"),
        payload(form, "subscription", "product", "name"),
    )


def _customer(form: Form) -> ful.Customer:
    """The subscription's customer: Chargify's customer id, the organization or the
    person's name, the email."""

    def field(name: str) -> str:
        return payload(form, "subscription", "customer", name)

    person = " ".join(part for part in (field("first_name"), field("last_name")) if part)
    return ful.Customer(
        customer_id=field("id") or field("reference") or "unknown",
        name=field("organization") or person,
        email=field("email"),
    )


def _order(webhook_id: str, form: Form, line: ful.OrderLine) -> ful.FulfillOrderRequest:
    if not webhook_id:
        raise UnusableWebhook("the webhook has no id")
    return ful.FulfillOrderRequest(
        source=SOURCE, order_id=webhook_id, customer=_customer(form), lines=[line]
    )


def _signup(
    webhook_id: str, form: Form, products: BaseSku, signup_seats: SignupSeats | None
) -> Mapped:
    subscription = _subscription_id(form)
    sku = _subscription_sku(form, products)
    seats = signup_seats(subscription, payload(form, "site", "subdomain")) if signup_seats else 1
    if seats > MAX_QUANTITY:
        raise UnusableWebhook(f"{seats} seats are more than {MAX_QUANTITY}")
    line = ful.OrderLine(
        sku_id=sku,
        quantity=max(seats, 1),  # a plan without seat components: one unit
        external_reference=reference(subscription),
    )
    return _order(webhook_id, form, line)


def _change(webhook_id: str, form: Form, products: BaseSku, suffix: str) -> Mapped:
    """A change of the subscription's current product (for a product change: the new one)."""
    subscription = _subscription_id(form)
    line = ful.OrderLine(
        sku_id=lifecycle_sku(_subscription_sku(form, products), suffix),
        quantity=1,
        external_reference=reference(subscription),
    )
    return _order(webhook_id, form, line)


def _state_change(webhook_id: str, form: Form, products: BaseSku) -> Mapped:
    before = payload(form, "subscription", "previous_state")
    after = payload(form, "subscription", "state")
    if after in CANCELLED_STATES and before not in CANCELLED_STATES:
        suffix = CANCEL
    elif after in SUSPENDED_STATES and before not in SUSPENDED_STATES:
        suffix = SUSPEND
    elif after in LIVE_STATES and before in SUSPENDED_STATES:
        suffix = REINSTATE
    else:
        return Ignored(f"the state change {before or '?'} -> {after or '?'} needs no order")
    return _change(webhook_id, form, products, suffix)


def _allocation(
    webhook_id: str, form: Form, products: BaseSku, seat_components: Collection[str]
) -> Mapped:
    keys = (payload(form, "component", "id"), payload(form, "component", "handle"))
    kind = payload(form, "component", "kind")
    if not counts_seats(keys, kind, seat_components):
        shown = keys[1] or keys[0]
        if seat_components:
            return Ignored(f"component {shown} is not a seat component")
        return Ignored(f"a component of kind {kind!r} does not count seats")
    delta = _units(form, "new_allocation") - _units(form, "previous_allocation")
    if delta == 0:
        return Ignored("the allocation did not change")
    if abs(delta) > MAX_QUANTITY:
        raise UnusableWebhook(f"a change of {delta} seats is more than {MAX_QUANTITY}")
    subscription = _subscription_id(form)
    base = _product_sku(
        products,
        payload(form, "product", "handle") or payload(form, "subscription", "product", "handle"),
        payload(form, "product", "id") or payload(form, "subscription", "product", "id"),
        payload(form, "product", "name"),
    )
    sku, quantity = seat_change_sku(base, delta)
    line = ful.OrderLine(sku_id=sku, quantity=quantity, external_reference=reference(subscription))
    return _order(webhook_id, form, line)


def _units(form: Form, name: str) -> int:
    return whole_units(payload(form, name) or "0", f"payload[{name}]")


def whole_units(text: str, what: str) -> int:
    """A whole allocation (Chargify sends decimals for fractional components)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise UnusableWebhook(f"{what} is not a number: {text!r}") from None
    if not value.is_finite() or value != value.to_integral_value():
        raise UnusableWebhook(f"{what} is not a whole number of seats: {text!r}")
    return int(value)


def counts_seats(keys: Collection[str], kind: str, seat_components: Collection[str]) -> bool:
    """Whether a component's allocation is the seat count: one of the named components
    (by id or handle), else any quantity-based component."""
    if seat_components:
        return any(key and key in seat_components for key in keys)
    return kind == SEAT_KIND
