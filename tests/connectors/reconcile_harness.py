"""A stand-in for Stripe's API, as far as `keyturn reconcile stripe` reads it: `GET
/v1/subscriptions` over real HTTP on loopback, in Stripe's documented list shape
(`object: list`, `data`, `has_more`, `url`) and cursor paging (`limit`,
`starting_after`), answering only the bearer API key it was given (401 with
Stripe's error body otherwise). Without a `status` parameter Stripe lists every
subscription that is not canceled; so does the stand-in.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from support.stand_in import JsonHandler, StandInServer

Json = dict[str, Any]
API_KEY = "sk_test_51ReconcileKeyturnStandIn"
PAGE_CAP = 2  # Stripe may answer fewer than `limit`: small pages make the paging show


@dataclass
class StripeApi:
    """What the stand-in serves, and the requests it was sent (for the test to look at)."""

    subscriptions: list[Json]
    requests: list[str] = field(default_factory=list)
    url: str = ""


def _error(kind: str, message: str) -> Json:
    return {"error": {"type": kind, "message": message}}


def _page(api: StripeApi, query: dict[str, list[str]]) -> Json:
    status = (query.get("status") or [""])[0]
    if status == "all":
        listed = list(api.subscriptions)
    elif status:
        listed = [s for s in api.subscriptions if s["status"] == status]
    else:
        listed = [s for s in api.subscriptions if s["status"] != "canceled"]
    after = (query.get("starting_after") or [""])[0]
    if after:
        ids = [s["id"] for s in listed]
        listed = listed[ids.index(after) + 1 :]
    limit = min(int((query.get("limit") or ["10"])[0]), PAGE_CAP)
    return {
        "object": "list",
        "data": listed[:limit],
        "has_more": len(listed) > limit,
        "url": "/v1/subscriptions",
    }


@contextmanager
def stripe_api(subscriptions: Sequence[Json]) -> Iterator[StripeApi]:
    """The stand-in on a free loopback port; `url` is what KEYTURN_STRIPE_API_BASE names."""
    api = StripeApi(list(subscriptions))

    class Handler(JsonHandler):
        answer_headers = MappingProxyType({"Request-Id": "req_standin"})

        def do_GET(self) -> None:
            api.requests.append(self.path)
            parts = urlsplit(self.path)
            if self.headers.get("Authorization") != f"Bearer {API_KEY}":
                body = _error("invalid_request_error", "Invalid API Key provided: sk_test_***")
                self.send_json(HTTPStatus.UNAUTHORIZED, body)
            elif parts.path == "/v1/subscriptions":
                self.send_json(HTTPStatus.OK, _page(api, parse_qs(parts.query)))
            else:
                self.send_json(HTTPStatus.NOT_FOUND, _error("invalid_request_error", "no such URL"))

    with StandInServer(Handler) as server:
        api.url = server.url
        yield api


def stripe_subscription(
    subscription_id: str,
    lookup_key: str,
    quantity: int,
    period_end: int,
    *,
    status: str = "active",
    customer: str = "cus_Initech",
    items_carry_period: bool = True,
) -> Json:
    """A subscription object as the API returns it; `items_carry_period`: the API versions
    from 2025-03-31 on, where `current_period_end` is on each item, not the subscription."""
    period_start = period_end - 365 * 86400
    item: Json = {
        "id": f"si_{subscription_id}",
        "object": "subscription_item",
        "created": period_start,
        "metadata": {},
        "price": {
            "id": f"price_{lookup_key}",
            "object": "price",
            "active": True,
            "currency": "usd",
            "lookup_key": lookup_key,
            "product": "prod_AcmeCad",
            "recurring": {"interval": "year", "interval_count": 1, "usage_type": "licensed"},
            "type": "recurring",
            "unit_amount": 49900,
        },
        "quantity": quantity,
        "subscription": subscription_id,
    }
    body: Json = {
        "id": subscription_id,
        "object": "subscription",
        "cancel_at_period_end": False,
        "created": period_start,
        "currency": "usd",
        "customer": customer,
        "items": {
            "object": "list",
            "data": [item],
            "has_more": False,
            "url": f"/v1/subscription_items?subscription={subscription_id}",
        },
        "livemode": False,
        "metadata": {},
        "status": status,
    }
    period = {"current_period_start": period_start, "current_period_end": period_end}
    (item if items_carry_period else body).update(period)
    return body
