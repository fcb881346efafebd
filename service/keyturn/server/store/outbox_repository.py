"""The outbox: emails written with the change they announce, claimed by dispatchers.

A dispatcher claims due messages for a while (`claimed_until`); on PostgreSQL
with FOR UPDATE SKIP LOCKED, so replicas claim different rows without waiting
on each other. A claim that runs out (the dispatcher died) lets another take
the message over.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import case, func, insert, or_, select, type_coerce, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from keyturn.server.domain.messages import MessageKind, MessageState, OutboundMessage

from .tables import UtcDateTime, outbox


def _message(row: RowMapping) -> OutboundMessage:
    return OutboundMessage(
        message_id=row["message_id"],
        kind=MessageKind(row["kind"]),
        entitlement_id=row["entitlement_id"],
        to_email=row["to_email"],
        order_source=row["order_source"],
        order_id=row["order_id"],
        create_time=row["create_time"],
        user_id=row["user_id"],
        state=MessageState(row["state"]),
        attempts=row["attempts"],
        next_attempt_time=row["next_attempt_time"],
        last_error=row["last_error"],
        sent_time=row["sent_time"],
    )


class OutboxRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._db = connection
        self.queued = 0  # messages added in this transaction

    async def add(self, message: OutboundMessage) -> None:
        self.queued += 1
        await self._db.execute(
            insert(outbox).values(
                message_id=message.message_id,
                kind=message.kind.value,
                entitlement_id=message.entitlement_id,
                user_id=message.user_id,
                to_email=message.to_email,
                order_source=message.order_source,
                order_id=message.order_id,
                state=message.state.value,
                attempts=message.attempts,
                next_attempt_time=message.next_attempt_time,
                last_error=message.last_error,
                create_time=message.create_time,
                sent_time=message.sent_time,
            )
        )

    async def for_order(self, order_source: str, order_id: str) -> list[OutboundMessage]:
        query = (
            select(outbox)
            .where(outbox.c.order_source == order_source, outbox.c.order_id == order_id)
            .order_by(outbox.c.create_time, outbox.c.message_id)
        )
        return [_message(row) for row in (await self._db.execute(query)).mappings()]

    async def claim_due(self, now: datetime, hold: timedelta, limit: int) -> list[OutboundMessage]:
        """Queued messages due now and claimed by no one, claimed for `hold`."""
        query = (
            select(outbox)
            .where(
                outbox.c.state == MessageState.QUEUED.value,
                outbox.c.next_attempt_time <= now,
                or_(outbox.c.claimed_until.is_(None), outbox.c.claimed_until <= now),
            )
            .order_by(outbox.c.next_attempt_time, outbox.c.message_id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        claimed = [_message(row) for row in (await self._db.execute(query)).mappings()]
        if claimed:
            await self._db.execute(
                update(outbox)
                .where(outbox.c.message_id.in_([m.message_id for m in claimed]))
                .values(claimed_until=now + hold)
            )
        return claimed

    async def next_due_time(self) -> datetime | None:
        """When the earliest queued message can be claimed: due, and its claim (if another
        dispatcher holds one) run out. None: nothing queued."""
        free_at = case(
            (outbox.c.claimed_until > outbox.c.next_attempt_time, outbox.c.claimed_until),
            else_=outbox.c.next_attempt_time,
        )
        # Typed as the column, so SQLite's text comes back as an aware datetime too.
        earliest = type_coerce(func.min(free_at), UtcDateTime)
        query = select(earliest).where(outbox.c.state == MessageState.QUEUED.value)
        return (await self._db.execute(query)).scalar_one_or_none()

    async def settle(
        self,
        message_id: str,
        state: MessageState,
        attempts: int,
        now: datetime,
        error: str = "",
        next_attempt_time: datetime | None = None,
    ) -> None:
        """Record an attempt's outcome and let go of the claim."""
        await self._db.execute(
            update(outbox)
            .where(outbox.c.message_id == message_id)
            .values(
                state=state.value,
                attempts=attempts,
                last_error=error,
                next_attempt_time=next_attempt_time,
                claimed_until=None,
                sent_time=now if state is MessageState.SENT else None,
            )
        )

    async def withdraw_invitations(self, user_id: str, reason: str) -> int:
        """Queued invitations of a user that must not go out any more (their code is void),
        marked failed with `reason`; how many were."""
        result = await self._db.execute(
            update(outbox)
            .where(
                outbox.c.user_id == user_id,
                outbox.c.kind == MessageKind.INVITATION.value,
                outbox.c.state == MessageState.QUEUED.value,
            )
            .values(
                state=MessageState.FAILED.value,
                last_error=reason,
                next_attempt_time=None,
                claimed_until=None,
            )
        )
        return int(result.rowcount)
