"""Webhook subscriptions, their claims by senders, and the delivery log.

A subscription holds its own cursor into the event log: the events are read from
`entitlement_events`, never copied. A sender claims due subscriptions for a while
(`claimed_until`), on PostgreSQL with FOR UPDATE SKIP LOCKED, as the outbox's
dispatchers claim emails, so replicas and workers take different subscriptions
without waiting on each other and each subscription has one sender at a time. Every
write of the sender names its claim (`claim_id`): once the claim ran out and another
sender took it, or a call changed the subscription (which drops the claim), the old
sender's writes match no row and it stops.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from keyturn.server.domain.webhooks import (
    AfterFailure,
    Delivery,
    Subscription,
    SubscriptionSpec,
    WebhookState,
)

from .tables import events, webhook_deliveries, webhook_subscriptions

_COLUMNS = [c for c in webhook_subscriptions.c if c.name != "secret_sealed"]


def _subscription(row: RowMapping) -> Subscription:
    return Subscription(
        subscription_id=row["subscription_id"],
        spec=SubscriptionSpec(
            url=row["url"],
            event_types=tuple(row["event_types"]),
            product_ids=tuple(row["product_ids"]),
            description=row["description"],
        ),
        state=WebhookState(row["state"]),
        cursor=row["cursor"],
        create_time=row["create_time"],
        update_time=row["update_time"],
        pause_reason=row["pause_reason"],
        attempts=row["attempts"],
        next_attempt_time=row["next_attempt_time"],
        failing_since=row["failing_since"],
    )


def _values(subscription: Subscription) -> dict[str, Any]:
    """Every column a call may set, with the claim dropped."""
    spec = subscription.spec
    return {
        "url": spec.url,
        "event_types": sorted(set(spec.event_types)),
        "product_ids": sorted(set(spec.product_ids)),
        "description": spec.description,
        "state": subscription.state.value,
        "pause_reason": subscription.pause_reason,
        "cursor": subscription.cursor,
        "attempts": subscription.attempts,
        "next_attempt_time": subscription.next_attempt_time,
        "failing_since": subscription.failing_since,
        "update_time": subscription.update_time,
        "claim_id": None,
        "claimed_until": None,
    }


class WebhookRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._db = connection

    async def add(self, subscription: Subscription, secret_sealed: bytes) -> None:
        await self._db.execute(
            insert(webhook_subscriptions).values(
                subscription_id=subscription.subscription_id,
                secret_sealed=secret_sealed,
                create_time=subscription.create_time,
                **_values(subscription),
            )
        )

    async def get(self, subscription_id: str, *, lock: bool = False) -> Subscription | None:
        query = select(*_COLUMNS).where(webhook_subscriptions.c.subscription_id == subscription_id)
        if lock:
            query = query.with_for_update()
        row = (await self._db.execute(query)).mappings().first()
        return None if row is None else _subscription(row)

    async def sealed_secret(self, subscription_id: str) -> bytes | None:
        query = select(webhook_subscriptions.c.secret_sealed).where(
            webhook_subscriptions.c.subscription_id == subscription_id
        )
        sealed: bytes | None = (await self._db.execute(query)).scalar_one_or_none()
        return sealed

    async def page(self, after_id: str, limit: int) -> list[Subscription]:
        """Subscriptions by id (ids sort by creation time), after `after_id`."""
        query = (
            select(*_COLUMNS)
            .where(webhook_subscriptions.c.subscription_id > after_id)
            .order_by(webhook_subscriptions.c.subscription_id)
            .limit(limit)
        )
        return [_subscription(row) for row in (await self._db.execute(query)).mappings()]

    async def save(self, subscription: Subscription) -> None:
        """Write what a call changed; the sender at work on it (if any) loses its claim."""
        await self._db.execute(
            update(webhook_subscriptions)
            .where(webhook_subscriptions.c.subscription_id == subscription.subscription_id)
            .values(**_values(subscription))
        )

    async def delete(self, subscription_id: str) -> bool:
        """Delete it and its log; False when there was none."""
        await self._db.execute(
            delete(webhook_deliveries).where(
                webhook_deliveries.c.subscription_id == subscription_id
            )
        )
        result = await self._db.execute(
            delete(webhook_subscriptions).where(
                webhook_subscriptions.c.subscription_id == subscription_id
            )
        )
        return bool(result.rowcount)

    def _due(self, now: datetime, limit: int) -> Any:
        newest = select(func.coalesce(func.max(events.c.sequence), 0)).scalar_subquery()
        table = webhook_subscriptions
        return (
            select(*_COLUMNS)
            .where(
                table.c.state == WebhookState.ACTIVE.value,
                table.c.cursor < newest,
                or_(table.c.next_attempt_time.is_(None), table.c.next_attempt_time <= now),
                or_(table.c.claimed_until.is_(None), table.c.claimed_until <= now),
            )
            .order_by(table.c.next_attempt_time, table.c.subscription_id)
            .limit(limit)
        )

    async def any_due(self, now: datetime) -> bool:
        """Whether a round would claim anything (a read: idle rounds take no write lock)."""
        return (await self._db.execute(self._due(now, 1))).first() is not None

    async def claim_due(
        self, now: datetime, hold: timedelta, limit: int, claim_id: str
    ) -> list[Subscription]:
        """Active subscriptions behind the log's end, due now and claimed by no one,
        claimed for `hold` under `claim_id`."""
        query = self._due(now, limit).with_for_update(skip_locked=True)
        claimed = [_subscription(row) for row in (await self._db.execute(query)).mappings()]
        if claimed:
            table = webhook_subscriptions
            await self._db.execute(
                update(table)
                .where(table.c.subscription_id.in_([s.subscription_id for s in claimed]))
                .values(claim_id=claim_id, claimed_until=now + hold)
            )
        return claimed

    def _claimed(self, subscription_id: str, claim_id: str) -> Any:
        table = webhook_subscriptions
        return update(table).where(
            table.c.subscription_id == subscription_id, table.c.claim_id == claim_id
        )

    async def advance(
        self, subscription_id: str, claim_id: str, cursor: int, now: datetime
    ) -> bool:
        """Move the cursor on after a delivery (or events the filters skip), the failures
        forgotten. False: the claim is lost or the subscription no longer active, so the
        sender stops."""
        result = await self._db.execute(
            self._claimed(subscription_id, claim_id)
            .where(webhook_subscriptions.c.state == WebhookState.ACTIVE.value)
            .values(cursor=cursor, attempts=0, failing_since=None, next_attempt_time=now)
        )
        return bool(result.rowcount)

    async def failed(self, subscription_id: str, claim_id: str, outcome: AfterFailure) -> bool:
        """Record a failed attempt: the backoff, or the pause; the claim let go."""
        values: dict[str, Any] = {
            "attempts": outcome.attempts,
            "failing_since": outcome.failing_since,
            "next_attempt_time": outcome.next_attempt_time,
            "claim_id": None,
            "claimed_until": None,
        }
        if outcome.pause_reason:
            values |= {"state": WebhookState.PAUSED.value, "pause_reason": outcome.pause_reason}
        result = await self._db.execute(self._claimed(subscription_id, claim_id).values(**values))
        return bool(result.rowcount)

    async def release(self, subscription_id: str, claim_id: str) -> None:
        await self._db.execute(
            self._claimed(subscription_id, claim_id).values(claim_id=None, claimed_until=None)
        )

    async def record(self, delivery: Delivery) -> None:
        await self._db.execute(
            insert(webhook_deliveries).values(
                subscription_id=delivery.subscription_id,
                sequence=delivery.sequence,
                attempt_time=delivery.attempt_time,
                http_status=delivery.http_status,
                delivered=delivery.delivered,
                response_excerpt=delivery.response_excerpt,
                redelivery=delivery.redelivery,
            )
        )

    async def trim_log(self, subscription_id: str, keep: int) -> int:
        """Forget all but the newest `keep` attempts of a subscription; how many went."""
        table = webhook_deliveries
        newest_dropped = (
            select(table.c.delivery_id)
            .where(table.c.subscription_id == subscription_id)
            .order_by(table.c.delivery_id.desc())
            .offset(keep)
            .limit(1)
            .scalar_subquery()
        )
        result = await self._db.execute(
            delete(table).where(
                table.c.subscription_id == subscription_id, table.c.delivery_id <= newest_dropped
            )
        )
        return int(result.rowcount)

    async def deliveries(
        self, subscription_id: str, before_id: int | None, limit: int
    ) -> list[tuple[int, Delivery]]:
        """The log of one subscription, newest first, before `before_id` if given."""
        table = webhook_deliveries
        query = select(table).where(table.c.subscription_id == subscription_id)
        if before_id is not None:
            query = query.where(table.c.delivery_id < before_id)
        query = query.order_by(table.c.delivery_id.desc()).limit(limit)
        return [
            (
                row["delivery_id"],
                Delivery(
                    subscription_id=row["subscription_id"],
                    sequence=row["sequence"],
                    attempt_time=row["attempt_time"],
                    http_status=row["http_status"],
                    delivered=row["delivered"],
                    response_excerpt=row["response_excerpt"],
                    redelivery=row["redelivery"],
                ),
            )
            for row in (await self._db.execute(query)).mappings()
        ]
