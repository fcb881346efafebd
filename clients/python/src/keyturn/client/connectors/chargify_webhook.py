"""The Chargify / Maxio webhook endpoint: verify the signature, map the webhook, fulfil it.

Chargify signs each webhook with the site's shared key: the hex HMAC-SHA256 of the
raw body, in the `X-Chargify-Webhook-Signature-Hmac-Sha-256` header (or in the
`signature_hmac_sha_256` query parameter of an endpoint URL that asks for it).

Chargify counts a webhook as accepted only on "200 OK" within about 15 seconds;
anything else is retried (5 attempts over about 5 minutes), recorded as failed
with its status in the site's webhook log, where the merchant can replay it
(Webhooks panel or API) once the cause is fixed; the webhook keeps its id, so a
replay of a fulfilled one changes nothing. Answers:
- 401: no signature or a wrong one; nothing is done.
- 200: fulfilled (or replayed), or a webhook that needs no order.
- 422: refused (a product the map lacks, a SKU the catalog lacks, a subscription
  Keyturn does not know): failed in Chargify's log, sent again once fixed.
- 503: Keyturn (or Chargify's API, asked for a signup's seats) is unreachable or
  busy; Chargify retries.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Collection, Mapping
from http import HTTPStatus

from .chargify_api import ChargifyUnavailable
from .chargify_mapping import (
    SOURCE,
    Ignored,
    SignupSeats,
    Unmapped,
    UnusableWebhook,
    order_for_webhook,
    parse_form,
)
from .product_map import ProductMap
from .webhook_server import (
    ConnectorServer,
    Fulfil,
    Reply,
    Request,
    fulfil_order,
    json_reply,
    order_reply,
)

log = logging.getLogger("keyturn.connect.chargify")
SIGNATURE_HEADER = "X-Chargify-Webhook-Signature-Hmac-Sha-256"
SIGNATURE_PARAMETER = "signature_hmac_sha_256"


def signature(body: bytes, site_key: str) -> str:
    """The signature Chargify sends with `body`."""
    return hmac.new(site_key.encode(), body, hashlib.sha256).hexdigest()


def signed(body: bytes, given: str | None, site_key: str) -> bool:
    """Whether `given` is the body's signature (compared in constant time)."""
    if not given:
        return False
    return hmac.compare_digest(given.strip().lower().encode(), signature(body, site_key).encode())


def handle_webhook(
    body: bytes,
    given: str | None,
    site_key: str,
    fulfil: Fulfil,
    products: ProductMap,
    seat_components: Collection[str] = (),
    signup_seats: SignupSeats | None = None,
) -> Reply:
    """One delivery of a webhook: what to answer Chargify."""
    if not signed(body, given, site_key):
        return json_reply(HTTPStatus.UNAUTHORIZED, {"error": "signature check failed"})
    try:
        form = parse_form(body)
    except (UnicodeDecodeError, ValueError) as exc:
        return json_reply(HTTPStatus.BAD_REQUEST, {"error": f"not a form-encoded body: {exc}"})
    webhook_id = form.get("id", "")
    try:
        mapped = order_for_webhook(
            form, lambda product: products.sku(SOURCE, product), seat_components, signup_seats
        )
    except ChargifyUnavailable as exc:
        log.warning("chargify webhook %s: its API failed, Chargify will retry: %s", webhook_id, exc)
        return json_reply(
            HTTPStatus.SERVICE_UNAVAILABLE, {"webhook": webhook_id, "error": str(exc)}
        )
    except (Unmapped, UnusableWebhook) as exc:
        log.error("chargify webhook %s cannot become an order: %s", webhook_id, exc)
        return json_reply(
            HTTPStatus.UNPROCESSABLE_ENTITY, {"webhook": webhook_id, "error": str(exc)}
        )
    if isinstance(mapped, Ignored):
        return json_reply(HTTPStatus.OK, {"webhook": webhook_id, "ignored": mapped.reason})
    return order_reply(mapped, fulfil_order(fulfil, mapped), webhook=webhook_id)


def given_signature(header: str | None, query: Mapping[str, list[str]]) -> str | None:
    """The signature of a delivery: the header, else the query parameter."""
    if header:
        return header
    values = query.get(SIGNATURE_PARAMETER) or []
    return values[-1] if values else None


class ChargifyWebhookServer(ConnectorServer):
    """The connector's HTTP server with its one route: POST {path}."""

    def __init__(
        self,
        listen: tuple[str, int],
        site_key: str,
        fulfil: Fulfil,
        products: ProductMap,
        path: str = "/chargify/webhook",
        seat_components: Collection[str] = (),
        signup_seats: SignupSeats | None = None,
    ) -> None:
        if not site_key:
            raise ValueError("the Chargify site's shared key is required")
        components = frozenset(seat_components)

        def route(request: Request) -> Reply:
            given = given_signature(request.headers.get(SIGNATURE_HEADER), request.query)
            return handle_webhook(
                request.body, given, site_key, fulfil, products, components, signup_seats
            )

        super().__init__(listen, {path: route})
