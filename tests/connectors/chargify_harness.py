"""Chargify / Maxio webhooks as Chargify sends them, for the connector tests: the documented
payloads (docs.chargify.com "Webhooks", Example Payloads), form-encoded in square-bracket
notation, signed with the site's shared key (hex HMAC-SHA256 of the raw body in
X-Chargify-Webhook-Signature-Hmac-Sha-256); and a stand-in for the one call of
Chargify's API the connector makes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import re
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import quote

from connector_harness import Answer, post

from support.stand_in import JsonHandler, StandInServer

Json = dict[str, Any]

SITE_KEY = "Kx9mQ2vR7tY4wZ1aB6cD3eF8gH5jL0nP"  # a site's shared key (Chargify makes 40 chars)
PRODUCT_MAP = Path(__file__).resolve().parents[2] / "examples" / "product-map.yaml"
# The products of examples/product-map.yaml's chargify section.
STANDARD = {"handle": "acme-cad-standard", "id": "5123401", "name": "Acme CAD Standard"}
PRO = {"handle": "acme-cad-pro", "id": "5123402", "name": "Acme CAD Pro"}
SEATS = {"id": "985092", "name": "Seats", "unit_name": "seat", "kind": "quantity_based_component"}
SITE = {"id": "31615", "subdomain": "acme-cad"}

_ids = itertools.count(712441715)


def webhook_id() -> str:
    """A fresh webhook id (numeric, as Chargify's)."""
    return str(next(_ids))


def subscription_id() -> str:
    return str(next(_ids) + 30_000_000)


def product(of: dict[str, str]) -> Json:
    """A product as webhook payloads carry it (subscription[product], previous_product)."""
    return {
        "id": of["id"],
        "name": of["name"],
        "handle": of["handle"],
        "description": "",
        "accounting_code": "",
        "request_credit_card": "true",
        "expiration_interval": "",
        "expiration_interval_unit": "never",
        "created_at": "2026-01-05 10:09:35 -0500",
        "updated_at": "2026-01-05 10:09:35 -0500",
        "price_in_cents": "9900",
        "interval": "12",
        "interval_unit": "month",
        "initial_charge_in_cents": "",
        "trial_price_in_cents": "",
        "trial_interval": "",
        "trial_interval_unit": "month",
        "archived_at": "",
        "require_credit_card": "true",
        "return_params": "",
        "taxable": "false",
        "update_return_url": "",
        "product_family": {
            "id": "1260579",
            "name": "Acme CAD",
            "description": "",
            "handle": "acme-cad",
            "accounting_code": "",
        },
    }


def customer() -> Json:
    return {
        "id": "15826583",
        "first_name": "Doris",
        "last_name": "Tester",
        "organization": "Initech",
        "email": "billing@initech.example",
        "reference": "initech-0042",
        "address": "123 Anywhere Street",
        "address_2": "",
        "city": "Boston",
        "state": "MA",
        "zip": "02120",
        "country": "US",
        "phone": "555-555-1212",
        "created_at": "2026-01-05 11:50:55 -0500",
        "updated_at": "2026-01-05 11:50:58 -0500",
    }


def subscription(
    sub: str, of: dict[str, str], state: str = "active", previous_state: str = "active"
) -> Json:
    """A subscription as the signup, renewal, product and state webhooks carry it."""
    return {
        "id": sub,
        "state": state,
        "previous_state": previous_state,
        "balance_in_cents": "0",
        "total_revenue_in_cents": "9900",
        "product_price_in_cents": "9900",
        "product_version_number": "1",
        "current_period_ends_at": "2027-01-05 11:50:55 -0500",
        "next_assessment_at": "2027-01-05 11:50:55 -0500",
        "trial_started_at": "",
        "trial_ended_at": "",
        "activated_at": "2026-01-05 11:50:57 -0500",
        "expires_at": "",
        "created_at": "2026-01-05 11:50:55 -0500",
        "updated_at": "2026-01-05 13:39:20 -0500",
        "cancellation_message": "",
        "cancel_at_end_of_period": "false",
        "canceled_at": "",
        "current_period_started_at": "2026-01-05 11:50:55 -0500",
        "signup_payment_id": "173961106",
        "signup_revenue": "99.00",
        "delayed_cancel_at": "",
        "coupon_code": "",
        "payment_collection_method": "automatic",
        "customer": customer(),
        "product": product(of),
        "credit_card": {
            "id": "14",
            "first_name": "Doris",
            "last_name": "Tester",
            "masked_card_number": "XXXX-XXXX-XXXX-1",
            "card_type": "bogus",
            "expiration_month": "4",
            "expiration_year": "2030",
            "customer_id": "15826583",
            "current_vault": "bogus",
            "vault_token": "1",
            "billing_address": "987 Commerce St",
            "billing_city": "Greenberg",
            "billing_state": "NC",
            "billing_zip": "67890",
            "billing_country": "US",
            "customer_vault_token": "",
            "billing_address_2": "Suite 789",
        },
    }


def webhook(event: str, body: Json, hook_id: str | None = None) -> Json:
    """A webhook: its id, event and payload (which always names the site)."""
    return {"id": hook_id or webhook_id(), "event": event, "payload": {"site": SITE, **body}}


def signup_success(sub: str, of: dict[str, str], hook_id: str | None = None) -> Json:
    return webhook("signup_success", {"subscription": subscription(sub, of)}, hook_id)


def renewal_success(sub: str, of: dict[str, str]) -> Json:
    return webhook("renewal_success", {"subscription": subscription(sub, of)})


def product_change(sub: str, before: dict[str, str], after: dict[str, str]) -> Json:
    body = {"subscription": subscription(sub, after), "previous_product": product(before)}
    return webhook("subscription_product_change", body)


def state_change(sub: str, of: dict[str, str], previous_state: str, state: str) -> Json:
    body = {"subscription": subscription(sub, of, state=state, previous_state=previous_state)}
    return webhook("subscription_state_change", body)


def allocation_change(
    sub: str, of: dict[str, str], previous: int | str, new: int | str, component: Json = SEATS
) -> Json:
    """component_allocation_change as documented: the product by id and name only."""
    body = {
        "subscription": {"id": sub, "name": "Doris Tester"},
        "product": {"id": of["id"], "name": of["name"]},
        "component": component,
        "previous_allocation": str(previous),
        "new_allocation": str(new),
        "memo": "Customer changed the seat count.",
        "timestamp": "2026-03-19T16:59:13Z",
    }
    return webhook("component_allocation_change", body)


def _pairs(prefix: str, value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _pairs(f"{prefix}[{key}]" if prefix else str(key), inner)
    else:
        yield prefix, str(value)


def form_body(hook: Json) -> bytes:
    """The body Chargify posts (application/x-www-form-urlencoded, square brackets as is)."""
    return "&".join(
        f"{quote(key, safe='[]_')}={quote(value, safe='')}" for key, value in _pairs("", hook)
    ).encode()


def sign(body: bytes, site_key: str = SITE_KEY) -> str:
    """The X-Chargify-Webhook-Signature-Hmac-Sha-256 header, computed as Chargify does."""
    return hmac.new(site_key.encode(), body, hashlib.sha256).hexdigest()


async def deliver(
    url: str, hook: Json | bytes, *, site_key: str = SITE_KEY, signature: str | None = None
) -> Answer:
    """One delivery as Chargify makes it: the form body, signed (unless `signature` given)."""
    body = hook if isinstance(hook, bytes) else form_body(hook)
    header = sign(body, site_key) if signature is None else signature
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if header:
        headers["X-Chargify-Webhook-Signature-Hmac-Sha-256"] = header
    return await asyncio.to_thread(post, url, body, headers)


# --- a stand-in for Chargify's API (the one call the connector makes) -----------------------

API_KEY = "chargify_api_key_5f1c0a9e2b7d4c3a"


class ChargifyApi:
    """`GET /subscriptions/ID/components.json` as Chargify answers it (HTTP Basic, the API
    key and `x`), from the allocations set here; `failing` answers 500."""

    def __init__(self) -> None:
        self.components: dict[str, list[Json]] = {}
        self.failing = False
        self.requests: list[str] = []
        self._server = StandInServer(self._handler())

    @property
    def base(self) -> str:
        return self._server.url

    def __enter__(self) -> ChargifyApi:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self
        path = re.compile(r"^/subscriptions/(?P<sub>\d+)/components\.json$")
        expected = "Basic " + base64.b64encode(f"{API_KEY}:x".encode()).decode()

        class Handler(JsonHandler):
            content_type = "application/json; charset=utf-8"

            def do_GET(self) -> None:
                api.requests.append(self.path)
                found = path.match(self.path)
                if self.headers.get("Authorization") != expected:
                    self.send_json(401, {"errors": ["HTTP Basic: Access denied."]})
                elif api.failing:
                    self.send_json(500, {"errors": ["Internal Server Error"]})
                elif found is None or found["sub"] not in api.components:
                    self.send_json(404, {"errors": ["Not Found"]})
                else:
                    self.send_json(200, [{"component": c} for c in api.components[found["sub"]]])

        return Handler


def subscription_component(sub: str, component: Json, allocated: int) -> Json:
    """One component of a subscription as the API lists it."""
    return {
        "component_id": int(component["id"]),
        "subscription_id": int(sub),
        "component_handle": component.get("handle"),
        "name": component["name"],
        "kind": component["kind"],
        "unit_name": component["unit_name"],
        "enabled": allocated > 0,
        "allocated_quantity": allocated,
        "pricing_scheme": "per_unit",
        "price_point_id": 867444,
    }
