"""The endpoint the NetSuite scripts post Sales Orders to (examples/netsuite/): check
the signature, map the order, fulfil it.

The scripts sign each post with an API secret held in NetSuite: HMAC-SHA256 over
`TIMESTAMP.BODY`, sent as `X-Keyturn-Timestamp` (Unix seconds) and
`X-Keyturn-Signature: v1=HEX` (several `v1=` entries, comma-separated, while a secret
is rotated). The answer is what the script writes on the order:
- 200: fulfilled, or replayed (the same order posted again), or nothing for Keyturn;
- 401: the signature is missing, wrong or outside the tolerance; nothing is done;
- 400: the signed body is not JSON;
- 422: the order is refused (an item not in the product map, a SKU the catalog
  lacks, a subscription not found), with the reason: the script marks the order
  failed and its retry script posts it again until the map or catalog is fixed;
- 503: Keyturn is unreachable or busy; retried the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from http import HTTPStatus

from .netsuite_orders import UnusableOrder, order_for_sales_order, order_id
from .product_map import ProductMap
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

log = logging.getLogger("keyturn.connect.netsuite")
TIMESTAMP_HEADER = "X-Keyturn-Timestamp"
SIGNATURE_HEADER = "X-Keyturn-Signature"
SCHEME = "v1="
DEFAULT_TOLERANCE_SECONDS = 300


class SignatureError(ValueError):
    """The delivery is not signed with the shared secret, or not recently."""


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The hex HMAC-SHA256 the scripts send for `body` at `timestamp`."""
    message = timestamp.encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def verify_signature(
    body: bytes,
    timestamp: str | None,
    header: str | None,
    secret: str,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    now: Callable[[], float] = time.time,
) -> None:
    """Return if `header` signs `body` at `timestamp` within `tolerance` seconds of now."""
    if not timestamp or not header:
        raise SignatureError(f"{TIMESTAMP_HEADER} and {SIGNATURE_HEADER} are required")
    if not timestamp.isascii() or not timestamp.isdigit():
        raise SignatureError(f"{TIMESTAMP_HEADER} is not Unix seconds")
    if abs(now() - int(timestamp)) > tolerance:
        raise SignatureError(f"the timestamp is more than {tolerance}s from now")
    expected = signature(secret, timestamp, body)
    given = [
        p.strip()[len(SCHEME) :].lower() for p in header.split(",") if p.strip().startswith(SCHEME)
    ]
    if not any(hmac.compare_digest(expected, candidate) for candidate in given):
        raise SignatureError(f"no {SCHEME} signature matches")


def handle_order(
    request: Request,
    secret: str,
    products: ProductMap,
    fulfil: Fulfil,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
) -> Reply:
    """One post of a Sales Order: what to answer the script."""
    try:
        verify_signature(
            request.body,
            request.headers.get(TIMESTAMP_HEADER),
            request.headers.get(SIGNATURE_HEADER),
            secret,
            tolerance,
        )
    except SignatureError as exc:
        return json_reply(HTTPStatus.UNAUTHORIZED, {"error": f"signature check failed: {exc}"})
    try:
        payload = json.loads(request.body)
    except (UnicodeDecodeError, ValueError):
        return json_reply(HTTPStatus.BAD_REQUEST, {"error": "the body is not JSON"})
    if not isinstance(payload, dict):
        return json_reply(HTTPStatus.BAD_REQUEST, {"error": "the body is not a JSON object"})
    sales_order = str(payload.get("id", ""))
    try:
        order = order_for_sales_order(payload, products)
    except UnusableOrder as exc:
        log.error("netsuite sales order %s refused: %s", sales_order, exc)
        return json_reply(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            {
                "sales_order": sales_order,
                "order_id": order_id(payload),
                "reason": exc.reason,
                "error": str(exc),
            },
        )
    if isinstance(order, Ignored):
        return json_reply(HTTPStatus.OK, {"sales_order": sales_order, "ignored": order.reason})
    return order_reply(order, fulfil_order(fulfil, order), sales_order=sales_order)


class NetSuiteOrderServer(ConnectorServer):
    """The connector's HTTP server with its one route: POST {path}."""

    def __init__(
        self,
        listen: tuple[str, int],
        secret: str,
        products: ProductMap,
        fulfil: Fulfil,
        path: str = "/netsuite/orders",
        tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    ) -> None:
        if not secret:
            raise ValueError("the NetSuite API secret the scripts sign with is required")

        def route(request: Request) -> Reply:
            return handle_order(request, secret, products, fulfil, tolerance)

        super().__init__(listen, {path: route})
