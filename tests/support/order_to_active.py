"""The whole path from a paid Stripe invoice to a verified lease, on real components.

Stripe webhook (signed with a test secret, as Stripe signs) -> the connector's
HTTP endpoint -> FulfillOrder -> outbox -> dispatcher -> SMTP server
(aiosmtpd on loopback) -> the license key read from the received mail ->
ActivateSeat through the Python client -> lease verified offline. Shared by
the end-to-end test and bench/order_to_active.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from keyturn.client import AsyncLease, AsyncLicensingClient, FulfillmentClient
from keyturn.client.connectors.stripe_webhook import StripeWebhookServer
from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.server.api.catalog_convert import product_in, sku_in
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.catalog import put_product, put_sku
from keyturn.server.app.context import AppContext
from keyturn.server.app.tokens import create_token
from keyturn.server.bootstrap import build_context, build_dispatcher
from keyturn.server.config import Settings

from .rpc import PRODUCT_ID, create_sku, product
from .smtp import SmtpServer, body_text

WEBHOOK_SECRET = "whsec_test_order_to_active_0123456789"
LOOKUP_KEY = "CAD-STD-1Y"
LICENSE_KEY = re.compile(r"License key: ([0-9A-Z]{5}(?:-[0-9A-Z]{5}){5})")


def sign(payload: str, secret: str = WEBHOOK_SECRET, at: int | None = None) -> str:
    """A `Stripe-Signature` header as Stripe computes it."""
    stamp = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{stamp}.{payload}".encode(), hashlib.sha256)
    return f"t={stamp},v1={mac.hexdigest()}"


def invoice_paid(number: int, seats: int = 1) -> dict[str, Any]:
    """A first invoice of a new subscription."""
    return {
        "id": f"evt_{number:06d}",
        "object": "event",
        "type": "invoice.paid",
        "data": {
            "object": {
                "id": f"in_{number:06d}",
                "object": "invoice",
                "billing_reason": "subscription_create",
                "customer": f"cus_{number:06d}",
                "customer_email": f"buyer-{number}@example.com",
                "customer_name": f"Buyer {number}",
                "subscription": f"sub_{number:06d}",
                "lines": {
                    "data": [
                        {"price": {"id": "price_1", "lookup_key": LOOKUP_KEY}, "quantity": seats}
                    ]
                },
            }
        },
    }


def post_webhook(
    url: str, event: dict[str, Any], signature: str | None = None
) -> tuple[int, dict[str, Any]]:
    payload = json.dumps(event)
    request = urllib.request.Request(
        url,
        data=payload.encode(),
        headers={
            "Stripe-Signature": signature or sign(payload),
            "Content-Type": "application/json",
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as failure:
        return failure.code, json.loads(failure.read())


@dataclass
class Pipeline:
    ctx: AppContext
    smtp: SmtpServer
    webhook_url: str
    licensing: AsyncLicensingClient

    async def order_to_active(self, number: int) -> tuple[AsyncLease, float]:
        """One run; the lease and the seconds from the webhook to the verified lease."""
        started = time.perf_counter()
        status, body = await asyncio.to_thread(post_webhook, self.webhook_url, invoice_paid(number))
        if status != 200:
            raise AssertionError(f"webhook answered {status}: {body}")
        to = f"buyer-{number}@example.com"
        messages = await self.smtp.mailbox.wait_for(lambda got: bool(self.smtp.mailbox.to(to)))
        (mail,) = [m for m in messages if str(m["To"]) == to]
        found = LICENSE_KEY.search(body_text(mail))
        if found is None:
            raise AssertionError(f"no license key in the mail:\n{body_text(mail)}")
        lease = await self.licensing.activate(
            found.group(1), fingerprint=f"device-{number:06d}", heartbeat=False
        )
        return lease, time.perf_counter() - started


@contextlib.asynccontextmanager
async def pipeline(settings: Settings) -> AsyncIterator[Pipeline]:
    """Keyturn (with its dispatcher), SMTP server and Stripe endpoint, all on loopback.

    `settings` names the database (migrated) and the secret; SMTP settings are
    filled in here. Everything else keeps its default."""
    smtp = SmtpServer()
    smtp.start()
    settings = settings.model_copy(
        update={"smtp_host": "127.0.0.1", "smtp_port": smtp.port, "smtp_security": "none"}
    )
    ctx = await build_context(settings)
    await put_product(ctx, product_in(product()))
    await put_sku(ctx, sku_in(_sku()))
    _, token = await create_token(ctx, {"fulfill"}, "stripe connector")
    server = KeyturnServer(ctx, "127.0.0.1:0", build_dispatcher(ctx, settings))
    await server.start()
    fulfillment = FulfillmentClient(server.address, token)
    webhook = StripeWebhookServer(("127.0.0.1", 0), WEBHOOK_SECRET, fulfillment.fulfill_order)
    webhook.start()
    host, port = webhook.address
    licensing = AsyncLicensingClient(server.address, PRODUCT_ID)
    try:
        yield Pipeline(ctx, smtp, f"http://{host}:{port}/stripe/webhook", licensing)
    finally:
        await licensing.close()
        await asyncio.to_thread(webhook.stop)
        fulfillment.close()
        await server.stop(grace=1.0)
        smtp.stop()


def _sku() -> cat.Sku:
    return create_sku(LOOKUP_KEY)
