"""The Stripe webhook endpoint: verify the signature, map the event, fulfil the order.

HTTP answers, chosen so that no order silently vanishes:
- 400: the `Stripe-Signature` header is missing, wrong or stale; nothing is done.
- 200: the order was fulfilled (or replayed: Stripe retried), or the event
  needs no order.
- 422: Keyturn refused the order (unknown SKU for a lookup key, a target not
  found, a state that does not allow it). Stripe keeps retrying for days and
  shows the failure in its dashboard; once the catalog is fixed, the next
  retry fulfils the order.
- 503: Keyturn is unreachable or busy; Stripe retries.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from typing import Any

import stripe

from .stripe_mapping import PriceLookup, UnusableEvent, order_for_event
from .webhook_server import (
    ConnectorServer,
    Fulfil,
    Ignored,
    Reply,
    Request,
    fulfil_order,
    json_reply,
    order_reply,
)

log = logging.getLogger("keyturn.connect.stripe")
TOLERANCE_SECONDS = 300


class PriceLookupUnavailable(Exception):
    """Stripe's API could not be asked for a price now; Stripe will deliver again."""


class StripePriceLookup:
    """Price id -> lookup key through Stripe's API (a restricted key that reads prices
    is enough), remembered for the life of the process."""

    def __init__(self, api_key: str, api_base: str | None = None) -> None:
        addresses: Any = {"api": api_base} if api_base else None
        self._client = stripe.StripeClient(api_key, base_addresses=addresses)
        self._known: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def __call__(self, price_id: str) -> str | None:
        with self._lock:
            if price_id in self._known:
                return self._known[price_id]
        try:
            price = self._client.v1.prices.retrieve(price_id)
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404:
                return None  # not a price of this account: the order is refused (422)
            raise PriceLookupUnavailable(str(exc)) from exc
        except stripe.StripeError as exc:
            raise PriceLookupUnavailable(str(exc)) from exc
        key = price.lookup_key or None
        with self._lock:
            self._known[price_id] = key
        return key


def handle_webhook(
    payload: bytes,
    signature: str | None,
    secret: str,
    fulfil: Fulfil,
    prices: PriceLookup | None = None,
) -> Reply:
    """One delivery of a webhook: what to answer Stripe."""
    try:
        stripe.WebhookSignature.verify_header(
            payload.decode("utf-8"), signature, secret, TOLERANCE_SECONDS
        )
        event = json.loads(payload)
    except (stripe.SignatureVerificationError, UnicodeDecodeError, ValueError) as exc:
        return json_reply(HTTPStatus.BAD_REQUEST, {"error": f"signature check failed: {exc}"})
    if not isinstance(event, dict):
        return json_reply(HTTPStatus.BAD_REQUEST, {"error": "the payload is not a JSON object"})
    event_id = str(event.get("id", ""))
    try:
        mapped = order_for_event(event, prices)
    except PriceLookupUnavailable as exc:
        log.warning("stripe event %s: price lookup failed, Stripe will retry: %s", event_id, exc)
        return json_reply(HTTPStatus.SERVICE_UNAVAILABLE, {"event": event_id, "error": str(exc)})
    except (UnusableEvent, KeyError, TypeError, ValueError) as exc:
        log.error("stripe event %s cannot become an order: %s", event_id, exc)
        return json_reply(HTTPStatus.UNPROCESSABLE_ENTITY, {"event": event_id, "error": str(exc)})
    if isinstance(mapped, Ignored):
        return json_reply(HTTPStatus.OK, {"event": event_id, "ignored": mapped.reason})
    return order_reply(mapped, fulfil_order(fulfil, mapped), event=event_id)


class StripeWebhookServer(ConnectorServer):
    """The connector's HTTP server with its one route: POST {path}."""

    def __init__(
        self,
        listen: tuple[str, int],
        secret: str,
        fulfil: Fulfil,
        path: str = "/stripe/webhook",
        prices: PriceLookup | None = None,
    ) -> None:
        if not secret:
            raise ValueError("a Stripe webhook signing secret (whsec_...) is required")

        def route(request: Request) -> Reply:
            signature = request.headers.get("Stripe-Signature")
            return handle_webhook(request.body, signature, secret, fulfil, prices)

        super().__init__(listen, {path: route})
