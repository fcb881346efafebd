"""The webhook sender: each subscription's events, in sequence order, from its own cursor.

Nothing is queued when an event is written: the seat and order transactions write
their events as before and never wait for a webhook. The sender reads the event log
after each subscription's cursor, posts each event the filters want, and moves the
cursor on once the endpoint answered 2xx. A failure leaves the cursor where it is
(so nothing after it overtakes it), backs off exponentially, and after
`RetryPolicy.pause_after` of failures in a row pauses the subscription, with an
audit record (`webhook.pause`, actor `system:webhooks`) and a warning in the log.

At least once: a sender that dies between the endpoint's 2xx and the cursor's write
leaves the event to be sent again, with the same `webhook-id` (domain/webhooks.py).
One sender per subscription at a time: subscriptions are claimed for a while
(store/webhook_repository.py) and each write names the claim, so a sender that lost
its claim stops before sending more.

Never a skipped event: readers see only numbered events, and the numbering rounds
(store/event_numbering.py) commit one after the other, each numbering after the last
under one lock, so the log always reads as a prefix 1..N (SQLite numbers at insert,
under its one writer). The sender still takes only a run of consecutive sequences
from the cursor on: were a number ever missing, it would wait for it rather than
move past it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from keyturn.server.dispatch.webhook_http import WebhookHttp, signed_headers
from keyturn.server.domain.ids import new_id
from keyturn.server.domain.webhooks import (
    Delivery,
    RetryPolicy,
    Subscription,
    after_failure,
    excerpt,
    wants,
    webhook_id,
)
from keyturn.server.store.event_repository import StoredEvent

from . import audit
from .context import AppContext
from .event_views import EventView, event_views
from .rounds import run_rounds
from .webhook_notice import PauseNotice

log = logging.getLogger("keyturn.webhooks")

READ_BATCH = 200
ACTOR = audit.system_actor("webhooks")
# The JSON of an event, as WatchEntitlementEvents gives it (the composition root passes
# the API's encoder: app does not import the transports).
Encode = Callable[[EventView], dict[str, Any]]


@dataclass(frozen=True)
class SenderSettings:
    poll_seconds: float = 1.0
    batch: int = 8  # subscriptions claimed per round
    claim_for: timedelta = timedelta(minutes=2)  # a round works on one for half of it
    log_attempts: int = 1000  # attempts the delivery log keeps per subscription
    retry: RetryPolicy = field(default_factory=RetryPolicy)


class EventPoster:
    """Signs and posts one event to one subscription, and says how it went."""

    def __init__(self, ctx: AppContext, http: WebhookHttp, encode: Encode) -> None:
        self._ctx = ctx
        self._http = http
        self._encode = encode

    def body(self, view: EventView) -> str:
        """The Standard Webhooks payload: type, timestamp, and the event as `data`."""
        event = view.event
        payload = {
            "type": f"entitlement.{event.type}",
            "timestamp": event.create_time.isoformat().replace("+00:00", "Z"),
            "data": self._encode(view),
        }
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)

    async def post(
        self, subscription: Subscription, secret: str, view: EventView, *, redelivery: bool = False
    ) -> Delivery:
        sequence = view.event.sequence
        sent = self._ctx.clock.now()
        body = self.body(view)
        headers = signed_headers(
            secret, webhook_id(subscription.subscription_id, sequence), sent, body
        )
        answer = await self._http.post(subscription.spec.url, headers, body)
        text = (
            answer.text
            if answer.delivered or not answer.status
            else f"HTTP {answer.status}: {answer.text}"
        )
        return Delivery(
            subscription_id=subscription.subscription_id,
            sequence=sequence,
            attempt_time=sent,
            http_status=answer.status,
            delivered=answer.delivered,
            response_excerpt=excerpt(text),
            redelivery=redelivery,
        )

    async def close(self) -> None:
        await self._http.close()


class WebhookSender:
    """Runs in every serving process (KEYTURN_WEBHOOKS_IN_SERVER): claims keep each
    subscription to one sender whatever the number of workers and replicas."""

    def __init__(
        self,
        ctx: AppContext,
        poster: EventPoster,
        settings: SenderSettings,
        notice: PauseNotice | None = None,
    ) -> None:
        self._ctx = ctx
        self._poster = poster
        self._settings = settings
        self._notice = notice  # emails the operator on a pause (KEYTURN_WEBHOOKS_NOTIFY_EMAIL)

    async def run(self) -> None:
        """Send until cancelled: at once when this process commits events, else every poll."""
        await run_rounds(
            self._ctx.store.bell,
            self.send_due,
            batch=self._settings.batch,
            wait_seconds=self._poll_seconds,
            log=log,
            what="webhook",
        )

    async def _poll_seconds(self) -> float:
        return self._settings.poll_seconds

    async def send_due(self) -> int:
        """One round: claim the subscriptions due, drain each. The number claimed."""
        now = self._ctx.clock.now()
        claim_id = new_id("wcl", now)
        async with self._ctx.store.read() as tx:
            if not await tx.webhooks.any_due(now):
                return 0
        async with self._ctx.store.write() as tx:
            claimed = await tx.webhooks.claim_due(
                now, self._settings.claim_for, self._settings.batch, claim_id
            )
        await asyncio.gather(*(self._drain(s, claim_id) for s in claimed))
        return len(claimed)

    async def _drain(self, subscription: Subscription, claim_id: str) -> None:
        """Send the subscription's events in order until it is caught up, fails, is
        changed by a call, or half its claim is used; then let the claim go."""
        until = time.monotonic() + self._settings.claim_for.total_seconds() / 2
        try:
            secret = await self._secret(subscription.subscription_id)
            if secret is None:
                return
            cursor = subscription.cursor
            while time.monotonic() < until:
                views = await self._next_events(cursor)
                if not views:
                    return
                for view in views:
                    if time.monotonic() >= until:  # the claim's first half is used up
                        break
                    sequence = view.event.sequence
                    product_id = view.entitlement.entitlement.product_id
                    if not wants(subscription.spec, view.event.type, product_id):
                        cursor = sequence  # written with the next delivery, or below
                        continue
                    delivery = await self._poster.post(subscription, secret, view)
                    if not await self._settle(subscription, claim_id, delivery):
                        return
                    cursor = sequence
                async with self._ctx.store.write() as tx:  # the filtered tail of the batch
                    if not await tx.webhooks.advance(
                        subscription.subscription_id, claim_id, cursor, self._ctx.clock.now()
                    ):
                        return
        finally:
            async with self._ctx.store.write() as tx:
                await tx.webhooks.release(subscription.subscription_id, claim_id)
                await tx.webhooks.trim_log(
                    subscription.subscription_id, self._settings.log_attempts
                )

    async def _secret(self, subscription_id: str) -> str | None:
        async with self._ctx.store.read() as tx:
            sealed = await tx.webhooks.sealed_secret(subscription_id)
        return None if sealed is None else self._ctx.sealer.unseal(sealed).decode()

    async def _next_events(self, cursor: int) -> list[EventView]:
        """The events after `cursor` that follow it without a gap, oldest first."""
        async with self._ctx.store.read() as tx:
            found = await tx.events.after(cursor, READ_BATCH)
            run: list[StoredEvent] = []
            for event in found:
                if event.sequence != cursor + len(run) + 1:
                    log.warning("event %d not readable yet: waiting", cursor + len(run) + 1)
                    break
                run.append(event)
            return await event_views(tx, run)

    async def _settle(self, subscription: Subscription, claim_id: str, delivery: Delivery) -> bool:
        """Record the attempt; True when the next event may follow."""
        sub_id = subscription.subscription_id
        now = self._ctx.clock.now()
        paused: Subscription | None = None
        async with self._ctx.store.write() as tx:
            current = await tx.webhooks.get(sub_id)
            if current is None:  # deleted meanwhile, its log with it
                return False
            await tx.webhooks.record(delivery)
            if delivery.delivered:
                return await tx.webhooks.advance(sub_id, claim_id, delivery.sequence, now)
            outcome = after_failure(current, now, self._settings.retry, delivery.response_excerpt)
            if await tx.webhooks.failed(sub_id, claim_id, outcome) and outcome.pause_reason:
                with audit.acting_as(ACTOR):
                    await audit.record(
                        tx,
                        now,
                        "webhook.pause",
                        f"webhooks/{sub_id}",
                        details={"reason": outcome.pause_reason, "sequence": delivery.sequence},
                    )
                log.warning("webhook subscription %s paused: %s", sub_id, outcome.pause_reason)
                paused = await tx.webhooks.get(sub_id)
        if paused is not None and self._notice is not None:
            await self._notice.send(paused)
        log.info(
            "webhook %s to %s failed (%s): retry at %s",
            delivery.webhook_id,
            sub_id,
            delivery.http_status or "no answer",
            outcome.next_attempt_time.isoformat(),
        )
        return False
