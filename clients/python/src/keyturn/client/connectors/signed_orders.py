"""Orders from any system a vendor runs (its own shop, a back office): the JSON form of
FulfillOrderRequest, POSTed to `/orders/SOURCE` and signed per the Standard Webhooks
scheme with that source's own secret.

The signature is checked with the `standardwebhooks` library (HMAC-SHA256 over
`webhook-id.webhook-timestamp.body`, five minutes of tolerance). Each source has its
own secrets (more than one while a secret is rotated), and a source may only place
orders as itself: an order naming another `source` is refused, so one system's
secret cannot replay or forge another's orders. FulfillOrder's idempotency on
(source, order id) makes the sender's retries replay.

HTTP answers, as every connector answers (webhook_server):
- 401: unknown source, or a missing, wrong or stale signature; nothing is done.
- 400: signed, but not a FulfillOrderRequest in JSON form; 403: it names another source.
- 200: fulfilled or replayed, with FulfillOrder's answer in JSON form (license keys
  included: the sender is the vendor's own system); 422: Keyturn refused the order;
  503: Keyturn unreachable or busy.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus

from google.protobuf import json_format
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

from .webhook_server import (
    ConnectorServer,
    Fulfil,
    Refused,
    Reply,
    Request,
    fulfil_order,
    json_reply,
    order_reply,
)

log = logging.getLogger("keyturn.connect.orders")
DEFAULT_PREFIX = "/orders/"


def parse_source_secrets(text: str) -> dict[str, tuple[str, ...]]:
    """`SOURCE=whsec_...` pairs separated by commas or spaces; a source named twice has
    two secrets (during a rotation). ValueError naming the fault, never the secret."""
    secrets: dict[str, list[str]] = {}
    for number, pair in enumerate(text.replace(",", " ").split(), start=1):
        source, equals, secret = pair.partition("=")
        if not equals or not source or not secret:
            raise ValueError(f"entry {number} is not SOURCE=whsec_...")
        try:
            Webhook(secret)
        except Exception:  # the library raises binascii.Error, its own errors, ValueError
            raise ValueError(
                f"the secret of {source} (entry {number}) is not whsec_ and base64"
            ) from None
        secrets.setdefault(source, []).append(secret)
    return {source: tuple(values) for source, values in secrets.items()}


def verified(body: bytes, headers: Mapping[str, str], secrets: Sequence[str]) -> bool:
    """Whether one of `secrets` signed `body` with these headers, recently."""
    for secret in secrets:
        try:
            Webhook(secret).verify(body, dict(headers), json_parse=False)
        except (WebhookVerificationError, ValueError):
            continue  # ValueError: a malformed signature list or undecodable body
        return True
    return False


def handle_signed_order(
    request: Request, source: str, secrets: Sequence[str], fulfil: Fulfil
) -> Reply:
    """One delivery for `source`: what to answer the sending system."""
    webhook_id = request.headers.get("webhook-id", "")
    headers = {name: value for name, value in request.headers.items()}
    if not secrets or not verified(request.body, headers, secrets):
        log.warning("orders/%s: delivery %r refused: signature check failed", source, webhook_id)
        return json_reply(
            HTTPStatus.UNAUTHORIZED,
            {"reason": "SIGNATURE_INVALID", "error": "unknown source or signature check failed"},
        )
    order = ful.FulfillOrderRequest()
    try:
        json_format.Parse(request.body, order)
    except (json_format.ParseError, ValueError) as exc:
        return json_reply(
            HTTPStatus.BAD_REQUEST,
            {"webhook_id": webhook_id, "reason": "MALFORMED", "error": str(exc)},
        )
    if order.source and order.source != source:
        return json_reply(
            HTTPStatus.FORBIDDEN,
            {
                "webhook_id": webhook_id,
                "reason": "SOURCE_MISMATCH",
                "error": f"an order of source {order.source!r} posted as {source!r}",
            },
        )
    order.source = source
    outcome = fulfil_order(fulfil, order)
    if isinstance(outcome, Refused):
        return order_reply(order, outcome, webhook_id=webhook_id)
    # The sender is the vendor's own system: it gets what the HTTP API's FulfillOrder
    # answers, license keys included, to show its buyer.
    answer = json_format.MessageToDict(outcome.response)
    return json_reply(HTTPStatus.OK, {"webhookId": webhook_id, **answer})


class SignedOrderServer(ConnectorServer):
    """The endpoint `{prefix}SOURCE` for every configured source."""

    def __init__(
        self,
        listen: tuple[str, int],
        secrets: Mapping[str, Sequence[str]],
        fulfil: Fulfil,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        if not secrets:
            raise ValueError("at least one source and its secret (SOURCE=whsec_...) is required")
        if not prefix.endswith("/"):
            raise ValueError(f"the path prefix {prefix!r} must end with /")

        def route(request: Request) -> Reply:
            source = request.path[len(prefix) :]
            return handle_signed_order(request, source, secrets.get(source, ()), fulfil)

        super().__init__(listen, {prefix: route})
