"""The billing side of a reconciliation: current subscriptions read from Stripe's API, a
Chargify / Maxio subscriptions export, or any CSV.

- Stripe: `GET /v1/subscriptions` page after page (the `stripe` library's
  auto-paging), statuses active, trialing and past_due. The SKU is the first
  item's price lookup key, as `keyturn connect stripe` orders it; the quantity
  that item's; the period end the subscription's `current_period_end`, or on
  API versions from 2025-03-31 (where it moved) the first item's.
- Chargify / Maxio: the subscriptions export (CSV), columns `id`, `state`,
  `product_handle`, `current_period_ends_at`, `customer_id`, `customer_email`,
  `customer_organization` (others ignored); states active, trialing, past_due,
  soft_failure and assessing count as current. The product handle is mapped to
  the base SKU by the product map's `chargify` section, as `keyturn connect
  chargify` maps it (a handle it lacks is reported, not guessed); the quantity
  is a `quantity` column, else 1.
- Any CSV: columns `subscription_id` (the external reference, `SYSTEM:ID`),
  `sku`, `quantity`, `period_end` (ISO 8601 date or time, UTC unless given;
  empty: not compared), and optionally `customer_id` (default: the
  subscription id), `customer_name`, `customer_email`.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import stripe

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

from .product_map import ProductMap
from .reconcile import Subscription
from .stripe_mapping import reference as stripe_reference

STRIPE_CURRENT = frozenset({"active", "trialing", "past_due"})
CHARGIFY_CURRENT = frozenset({"active", "trialing", "past_due", "soft_failure", "assessing"})
CHARGIFY = "chargify"
GENERIC_COLUMNS = ("subscription_id", "sku", "quantity", "period_end")
CHARGIFY_COLUMNS = ("id", "state", "product_handle", "current_period_ends_at")
Json = dict[str, Any]


class SourceError(ValueError):
    """A billing export that cannot be read as documented (a missing column, a bad value)."""


# --- Stripe -----------------------------------------------------------------------------------


def stripe_subscriptions(api_key: str, api_base: str | None = None) -> Iterator[Subscription]:
    """The current subscriptions of the Stripe account (restricted key: read subscriptions)."""
    addresses: Any = {"api": api_base} if api_base else None
    client = stripe.StripeClient(api_key, base_addresses=addresses)
    listing = client.v1.subscriptions.list(params={"limit": 100})
    for found in listing.auto_paging_iter():
        data = found.to_dict()
        if data.get("status") in STRIPE_CURRENT:
            yield stripe_subscription(data)


def stripe_subscription(data: Json) -> Subscription:
    """One subscription object (its JSON form) as billing's side of the comparison."""
    items = list((data.get("items") or {}).get("data") or [])
    first: Json = items[0] if items else {}
    price = first.get("price") or {}
    key = price.get("lookup_key") if isinstance(price, dict) else None
    end = data.get("current_period_end") or first.get("current_period_end")
    customer = data.get("customer")
    customer_id = customer.get("id") if isinstance(customer, dict) else customer
    return Subscription(
        reference=stripe_reference(str(data["id"])),
        sku=str(key or ""),
        quantity=int(first.get("quantity") or 1),
        period_end=datetime.fromtimestamp(int(end), UTC) if end else None,
        customer=ful.Customer(customer_id=str(customer_id or data["id"])),
        note="" if key else "the price has no lookup_key (it names the SKU)",
    )


# --- CSV --------------------------------------------------------------------------------------


def _rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in required if name not in header]
        if missing:
            raise SourceError(f"{path}: no column {', '.join(missing)}")
        reader.fieldnames = header
        for row in reader:
            if any(value for value in row.values()):
                yield reader.line_num, {k: (v or "").strip() for k, v in row.items() if k}


def _quantity(text: str, where: str) -> int:
    if not text:
        return 1
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise SourceError(f"{where}: quantity {text!r} is not a whole number of 1 or more")
    return int(text)


# `2016-06-03 12:43:50 -0400` as Chargify writes times: the offset after a space, no colon.
_OFFSET = re.compile(r"\s+([+-]\d{2}):?(\d{2})$")


def parse_time(text: str, where: str) -> datetime | None:
    """An ISO 8601 date or time (UTC without an offset), or Chargify's; empty: none."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(_OFFSET.sub(r"\1:\2", text))
    except ValueError:
        raise SourceError(f"{where}: {text!r} is not an ISO 8601 date or time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def csv_subscriptions(path: Path) -> Iterator[Subscription]:
    """Every row of a CSV of subscription_id, sku, quantity, period_end."""
    for line, row in _rows(path, GENERIC_COLUMNS):
        where = f"{path} line {line}"
        reference = row["subscription_id"]
        if not reference:
            raise SourceError(f"{where}: subscription_id is empty")
        yield Subscription(
            reference=reference,
            sku=row["sku"],
            quantity=_quantity(row["quantity"], where),
            period_end=parse_time(row["period_end"], where),
            customer=ful.Customer(
                customer_id=row.get("customer_id") or reference,
                name=row.get("customer_name", ""),
                email=row.get("customer_email", ""),
            ),
            note="" if row["sku"] else "the sku column is empty",
        )


def chargify_subscriptions(path: Path, products: ProductMap) -> Iterator[Subscription]:
    """The current subscriptions of a Chargify / Maxio subscriptions export."""
    for line, row in _rows(path, CHARGIFY_COLUMNS):
        if row["state"] not in CHARGIFY_CURRENT:
            continue
        where = f"{path} line {line}"
        handle = row["product_handle"]
        sku = products.sku(CHARGIFY, handle) or ""
        yield Subscription(
            reference=f"{CHARGIFY}:{row['id']}",
            sku=sku,
            quantity=_quantity(row.get("quantity", ""), where),
            period_end=parse_time(row["current_period_ends_at"], where),
            customer=ful.Customer(
                customer_id=row.get("customer_id") or row["id"],
                name=row.get("customer_organization", ""),
                email=row.get("customer_email", ""),
            ),
            note="" if sku else f"product handle {handle!r} is not in the product map",
        )
