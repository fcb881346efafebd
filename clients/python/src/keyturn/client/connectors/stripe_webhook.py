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
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import stripe

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

from ..errors import KeyturnError
from .stripe_mapping import Ignored, PriceLookup, UnusableEvent, order_for_event

log = logging.getLogger("keyturn.connect.stripe")
MAX_BODY = 1 << 20
TOLERANCE_SECONDS = 300
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}

Fulfil = Callable[[ful.FulfillOrderRequest], ful.FulfillOrderResponse]


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


@dataclass(frozen=True)
class Outcome:
    status: HTTPStatus
    body: dict[str, Any]


def handle_webhook(
    payload: bytes,
    signature: str | None,
    secret: str,
    fulfil: Fulfil,
    prices: PriceLookup | None = None,
) -> Outcome:
    """One delivery of a webhook: what to answer Stripe."""
    try:
        stripe.WebhookSignature.verify_header(
            payload.decode("utf-8"), signature, secret, TOLERANCE_SECONDS
        )
        event = json.loads(payload)
    except (stripe.SignatureVerificationError, UnicodeDecodeError, ValueError) as exc:
        return Outcome(HTTPStatus.BAD_REQUEST, {"error": f"signature check failed: {exc}"})
    if not isinstance(event, dict):
        return Outcome(HTTPStatus.BAD_REQUEST, {"error": "the payload is not a JSON object"})
    event_id = str(event.get("id", ""))
    try:
        mapped = order_for_event(event, prices)
    except PriceLookupUnavailable as exc:
        log.warning("stripe event %s: price lookup failed, Stripe will retry: %s", event_id, exc)
        return Outcome(HTTPStatus.SERVICE_UNAVAILABLE, {"event": event_id, "error": str(exc)})
    except (UnusableEvent, KeyError, TypeError, ValueError) as exc:
        log.error("stripe event %s cannot become an order: %s", event_id, exc)
        return Outcome(HTTPStatus.UNPROCESSABLE_ENTITY, {"event": event_id, "error": str(exc)})
    if isinstance(mapped, Ignored):
        return Outcome(HTTPStatus.OK, {"event": event_id, "ignored": mapped.reason})
    try:
        response = fulfil(mapped)
    except KeyturnError as exc:
        status = (
            HTTPStatus.SERVICE_UNAVAILABLE
            if exc.code in RETRYABLE
            else HTTPStatus.UNPROCESSABLE_ENTITY
        )
        log.error("stripe event %s: order %s refused: %s", event_id, mapped.order_id, exc)
        body = {"event": event_id, "order_id": mapped.order_id, "reason": exc.reason}
        return Outcome(status, {**body, "error": exc.message})
    return Outcome(
        HTTPStatus.OK,
        {
            "event": event_id,
            "order_id": mapped.order_id,
            "replayed": response.replayed,
            "entitlements": [e.entitlement_id for e in response.entitlements],
        },
    )


class StripeWebhookServer:
    """A small threaded HTTP server with one route: POST {path}."""

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
        handler = _handler(secret, fulfil, path, prices)
        self._http = ThreadingHTTPServer(listen, handler)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._http.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()

    def serve_forever(self) -> None:
        self._http.serve_forever()

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        if self._thread is not None:
            self._thread.join()


def _handler(
    secret: str, fulfil: Fulfil, path: str, prices: PriceLookup | None
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path.split("?")[0] != path:
                self._answer(Outcome(HTTPStatus.NOT_FOUND, {"error": "no such endpoint"}))
                return
            length_text = self.headers.get("Content-Length") or "0"
            if not length_text.isascii() or not length_text.isdigit():
                self._answer(Outcome(HTTPStatus.BAD_REQUEST, {"error": "bad Content-Length"}))
                return
            length = int(length_text)
            if length > MAX_BODY:
                self._answer(Outcome(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "too large"}))
                return
            payload = self.rfile.read(length)
            signature = self.headers.get("Stripe-Signature")
            outcome = handle_webhook(payload, signature, secret, fulfil, prices)
            self._answer(outcome)

        def _answer(self, outcome: Outcome) -> None:
            body = json.dumps(outcome.body).encode()
            self.send_response(outcome.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.info("%s %s", self.address_string(), format % args)

    return Handler
