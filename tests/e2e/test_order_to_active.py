"""Paid to active: a signed Stripe webhook ends in a verified lease on the customer's device."""

from __future__ import annotations

import asyncio

from keyturn.server.app.context import AppContext
from keyturn.server.domain.messages import OutboundMessage

from conftest import settings_for
from support.order_to_active import LOOKUP_KEY, pipeline

WAIT_S = 30.0
POLLS = 600


async def recorded_as_sent(app: AppContext, source: str, order_id: str) -> list[OutboundMessage]:
    """The order's emails once none is queued any more: the dispatcher records a send just
    after the SMTP server accepted it, so the mail can be read (and the key used) first."""
    for _ in range(POLLS):
        async with app.store.read() as tx:
            messages = await tx.outbox.for_order(source, order_id)
        if messages and all(m.state.value != "queued" for m in messages):
            return messages
        await asyncio.sleep(WAIT_S / POLLS)
    return messages


async def test_a_paid_invoice_becomes_a_verified_lease_through_the_mailed_key(
    app: AppContext, database_url: str
) -> None:
    async with pipeline(settings_for(database_url)) as run:
        lease, seconds = await run.order_to_active(1)
        messages = await recorded_as_sent(app, "stripe", "in_000001")
        async with app.store.read() as tx:
            entitlement = await tx.entitlements.find_by_reference("stripe:sub_000001")
            stored = await tx.orders.get("stripe", "in_000001")
    assert entitlement is not None
    assert stored is not None
    assert [line.sku_id for line in stored.request.lines] == [LOOKUP_KEY]
    # The lease the client verified offline is for the entitlement the invoice created.
    assert lease.entitlement_id == entitlement.entitlement_id
    assert lease.claims["aud"] == entitlement.product_id
    assert lease.claims["fingerprint"] == "device-000001"
    assert entitlement.customer.email == "buyer-1@example.com"
    # Exactly one email, recorded as sent.
    assert [(m.kind.value, m.state.value, m.attempts) for m in messages] == [
        ("license_key", "sent", 1)
    ]
    assert len(run.smtp.mailbox.messages) == 1
    assert seconds > 0
