"""Views and sync: list entitlements, read one's history, follow every change as it commits."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import datetime

from keyturn.server.domain.entitlement import Entitlement
from keyturn.server.domain.errors import (
    FieldViolation,
    entitlement_not_found,
    raise_if_invalid,
    sequence_out_of_range,
    server_stopping,
)
from keyturn.server.domain.orders import check_email, check_reference, check_text
from keyturn.server.domain.validation import check_slug
from keyturn.server.store.entitlement_repository import EntitlementFilter
from keyturn.server.store.unit_of_work import ReadStore, Transaction

from .context import AppContext
from .event_views import EventView, event_views
from .fulfillment import check_entitlement_id
from .paging import next_page_token, number_after, page_of, page_request
from .standby_reads import found_on_standby_or_primary
from .views import EntitlementView

WATCH_BATCH = 500


def filter_violations(where: EntitlementFilter) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    if where.customer_id:
        violations += check_text("customer_id", where.customer_id, 128, "customer id")
    if where.email:
        violations += check_email("email", where.email, required=False)
    if where.product_id:
        violations += check_slug("product_id", where.product_id, "product id")
    if where.external_reference:
        violations += check_reference("external_reference", where.external_reference)
    return violations


def _filter_scope(where: EntitlementFilter) -> str:
    """Ties a page token to its filters: a token of another query is refused."""
    status = where.status.value if where.status else ""
    parts = (where.customer_id, where.email, where.product_id, status, where.external_reference)
    return "entitlements:" + "\x1f".join(parts)


async def list_entitlements(
    ctx: AppContext, where: EntitlementFilter, page_size: int, page_token: str
) -> tuple[list[EntitlementView], str]:
    raise_if_invalid(filter_violations(where))

    async def find(tx: Transaction, now: datetime, after: str, limit: int) -> list[Entitlement]:
        return await tx.entitlements.list(where, now, after, limit)

    return await page_of_views(ctx, _filter_scope(where), page_size, page_token, find)


Find = Callable[[Transaction, datetime, str, int], Awaitable[list[Entitlement]]]


async def page_of_views(
    ctx: AppContext, scope: str, page_size: int, page_token: str, find: Find
) -> tuple[list[EntitlementView], str]:
    """One AIP-158 page of the entitlements `find` returns (after an id, at most a limit),
    each with its seats in use and named users, read in one transaction of the read store."""
    page = page_request(page_size, page_token, scope)
    now = ctx.clock.now()
    async with ctx.read_store.read() as tx:
        found = await find(tx, now, page.after, page.size + 1)
        items, more = page_of(found, page.size)
        in_use = await tx.activations.count_live_many(items, now, ctx.lapse_grace)
        users = await tx.named_users.list_for([e.entitlement_id for e in items])
    views = [
        EntitlementView(
            e, e.status(now), in_use[e.entitlement_id], named_users=tuple(users[e.entitlement_id])
        )
        for e in items
    ]
    return views, next_page_token(items[-1].entitlement_id if more else None, scope)


async def list_entitlement_events(
    ctx: AppContext, entitlement_id: str, page_size: int, page_token: str
) -> tuple[list[EventView], str]:
    check_entitlement_id(entitlement_id)
    scope = f"events:{entitlement_id}"
    page = page_request(page_size, page_token, scope)
    after = number_after(page) or 0

    async def read(store: ReadStore) -> tuple[list[EventView], bool] | None:
        async with store.read() as tx:
            if await tx.entitlements.get(entitlement_id) is None:
                return None
            found = await tx.events.after(after, page.size + 1, entitlement_id)
            items, more = page_of(found, page.size)
            return await event_views(tx, items), more

    page_read = await found_on_standby_or_primary(ctx, read)
    if page_read is None:
        raise entitlement_not_found(entitlement_id)
    views, more = page_read
    return views, next_page_token(str(views[-1].event.sequence) if more else None, scope)


async def watch_events(ctx: AppContext, after_sequence: int) -> AsyncGenerator[EventView, None]:
    """Every event after `after_sequence` in sequence order, then new ones as they commit.

    Events come from the process's feed (see event_feed) while the stream's cursor is
    inside its tail, and from the read store (a standby, if one is set) in batches
    while the cursor is behind it.
    Waiting for new events costs the stream nothing: the feed wakes it.
    """
    if after_sequence < 0:
        raise_if_invalid([FieldViolation("after_sequence", "must not be negative")])
    await _check_in_range(ctx, after_sequence)
    feed = ctx.feed
    with feed.stream_slot():
        cursor = after_sequence
        while True:
            if ctx.stopping.is_set():
                raise server_stopping(last_sequence=cursor)
            grown = feed.armed()
            batch = feed.after(cursor, WATCH_BATCH)
            if batch is None:  # behind the feed's tail, or the feed has none yet
                batch = await _read_after(ctx, cursor)
                if not batch:  # the feed is not reading: look again after a poll period
                    await ctx.store.bell.wait(grown, feed.poll_seconds)
            elif not batch:
                await grown.wait()
            for view in batch:
                yield view
                cursor = view.event.sequence


async def _check_in_range(ctx: AppContext, after_sequence: int) -> None:
    """Refuse a sequence beyond the last event; the database is read only when the feed
    has not seen that far. The primary's, not the standby's: a cursor another server
    handed out may be ahead of this standby, and the stream then waits for it."""
    known = ctx.feed.last_sequence
    if known is not None and after_sequence <= known:
        return
    async with ctx.store.read() as tx:
        last = await tx.events.last_sequence()
    if after_sequence > last:
        raise sequence_out_of_range(last_sequence=last)


async def _read_after(ctx: AppContext, cursor: int) -> list[EventView]:
    async with ctx.read_store.read() as tx:
        return await event_views(tx, await tx.events.after(cursor, WATCH_BATCH))
