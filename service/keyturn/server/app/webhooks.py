"""Webhook subscriptions: create, read, change, pause and resume, delete, the delivery log
and redelivery. Each change is one transaction with its audit record (`webhook.create`,
`webhook.update`, `webhook.delete`, `webhook.redeliver`); the secret is sealed at rest
and shown once, when the subscription is created.
"""

from __future__ import annotations

from dataclasses import replace

from keyturn.server.domain.errors import (
    FieldViolation,
    invalid_request,
    raise_if_invalid,
    sequence_out_of_range,
    webhook_not_found,
    webhook_subscription_not_found,
)
from keyturn.server.domain.ids import new_id
from keyturn.server.domain.webhooks import (
    Delivery,
    Subscription,
    SubscriptionSpec,
    WebhookState,
    check_secret,
    check_spec,
    check_state,
    new_secret,
    sequence_of,
    wants,
)
from keyturn.server.store.unit_of_work import Transaction

from . import audit
from .context import AppContext
from .event_views import event_views
from .paging import next_page_token, number_after, page_of, page_request

MAX_SUBSCRIPTION_ID = 64
MAX_WEBHOOK_ID = 100


def _resource(subscription_id: str) -> str:
    return f"webhooks/{subscription_id}"


def _id_violations(subscription_id: str, path: str) -> list[FieldViolation]:
    if not subscription_id:
        return [FieldViolation(path, "is required")]
    if len(subscription_id) > MAX_SUBSCRIPTION_ID or not subscription_id.isprintable():
        return [FieldViolation(path, "is not a subscription id (whk_...)")]
    return []


def _check_id(subscription_id: str) -> None:
    raise_if_invalid(_id_violations(subscription_id, "subscription_id"))


async def _locked(tx: Transaction, subscription_id: str) -> Subscription:
    found = await tx.webhooks.get(subscription_id, lock=True)
    if found is None:
        raise webhook_subscription_not_found(subscription_id)
    return found


async def create_subscription(
    ctx: AppContext,
    spec: SubscriptionSpec,
    *,
    state: WebhookState | None = WebhookState.ACTIVE,
    secret: str = "",
    after_sequence: int | None = None,
) -> tuple[Subscription, str]:
    """A new subscription, sent to from `after_sequence` on (None: the log's end now), and
    its secret (generated when not given)."""
    violations = check_spec(spec) + check_state("subscription.state", state)
    if secret:
        violations += check_secret("secret", secret)
    if after_sequence is not None and after_sequence < 0:
        violations.append(FieldViolation("after_sequence", "must not be negative"))
    raise_if_invalid(violations)
    secret = secret or new_secret()
    now = ctx.clock.now()
    async with ctx.store.write() as tx:
        last = await tx.events.last_sequence()
        if after_sequence is not None and after_sequence > last:
            raise sequence_out_of_range(last)
        subscription = Subscription(
            subscription_id=new_id("whk", now),
            spec=spec,
            state=state or WebhookState.ACTIVE,
            cursor=last if after_sequence is None else after_sequence,
            create_time=now,
            update_time=now,
            next_attempt_time=now,
        )
        await tx.webhooks.add(subscription, ctx.sealer.seal(secret.encode()))
        await audit.record(
            tx,
            now,
            "webhook.create",
            _resource(subscription.subscription_id),
            details={"cursor": subscription.cursor},
        )
    return subscription, secret


async def get_subscription(ctx: AppContext, subscription_id: str) -> Subscription:
    _check_id(subscription_id)
    async with ctx.store.read() as tx:
        found = await tx.webhooks.get(subscription_id)
    if found is None:
        raise webhook_subscription_not_found(subscription_id)
    return found


async def list_subscriptions(
    ctx: AppContext, page_size: int, page_token: str
) -> tuple[list[Subscription], str]:
    scope = "webhooks"
    page = page_request(page_size, page_token, scope)
    async with ctx.store.read() as tx:
        found = await tx.webhooks.page(page.after, page.size + 1)
    items, more = page_of(found, page.size)
    return items, next_page_token(items[-1].subscription_id if more else None, scope)


async def update_subscription(
    ctx: AppContext, subscription_id: str, spec: SubscriptionSpec, state: WebhookState | None
) -> Subscription:
    """New URL, filters and description, and paused or active. Resuming (or any update
    that leaves it active) tries the next event at once, the backoff forgotten."""
    raise_if_invalid(
        _id_violations(subscription_id, "subscription.subscription_id")
        + check_spec(spec)
        + check_state("subscription.state", state)
    )
    assert state is not None
    now = ctx.clock.now()
    async with ctx.store.write() as tx:
        before = await _locked(tx, subscription_id)
        after = replace(before, spec=spec, state=state, update_time=now, pause_reason="")
        if state is WebhookState.ACTIVE:
            after = replace(after, attempts=0, failing_since=None, next_attempt_time=now)
        await tx.webhooks.save(after)
        await audit.record(
            tx,
            now,
            "webhook.update",
            _resource(subscription_id),
            details={"state": state.value, "was": before.state.value},
        )
    return after


async def delete_subscription(ctx: AppContext, subscription_id: str) -> None:
    _check_id(subscription_id)
    now = ctx.clock.now()
    async with ctx.store.write() as tx:
        if not await tx.webhooks.delete(subscription_id):
            raise webhook_subscription_not_found(subscription_id)
        await audit.record(tx, now, "webhook.delete", _resource(subscription_id))


async def list_deliveries(
    ctx: AppContext, subscription_id: str, page_size: int, page_token: str
) -> tuple[list[Delivery], str]:
    _check_id(subscription_id)
    scope = f"deliveries:{subscription_id}"
    page = page_request(page_size, page_token, scope)
    before = number_after(page)
    async with ctx.store.read() as tx:
        if await tx.webhooks.get(subscription_id) is None:
            raise webhook_subscription_not_found(subscription_id)
        found = await tx.webhooks.deliveries(subscription_id, before, page.size + 1)
    items, more = page_of(found, page.size)
    token = next_page_token(str(items[-1][0]) if more else None, scope)
    return [delivery for _, delivery in items], token


def check_redelivery(subscription_id: str, has_target: bool) -> None:
    """A redelivery names its subscription and what to send again (one or the other)."""
    violations = _id_violations(subscription_id, "subscription_id")
    if not has_target:
        violations.append(FieldViolation("webhook_id", "webhook_id or from_sequence is required"))
    raise_if_invalid(violations)


async def replay_from(ctx: AppContext, subscription_id: str, from_sequence: int) -> Subscription:
    """Send every event from `from_sequence` on again: the cursor moves back before it."""
    _check_id(subscription_id)
    if from_sequence < 1:
        raise invalid_request([FieldViolation("from_sequence", "must be at least 1")])
    now = ctx.clock.now()
    async with ctx.store.write() as tx:
        before = await _locked(tx, subscription_id)
        last = await tx.events.last_sequence()
        if from_sequence > last:
            raise sequence_out_of_range(last)
        after = replace(
            before,
            cursor=from_sequence - 1,
            attempts=0,
            failing_since=None,
            next_attempt_time=now,
            update_time=now,
        )
        await tx.webhooks.save(after)
        await audit.record(
            tx,
            now,
            "webhook.redeliver",
            _resource(subscription_id),
            details={"from_sequence": from_sequence, "cursor_was": before.cursor},
        )
    return after


async def redeliver_one(
    ctx: AppContext, subscription_id: str, webhook_id: str
) -> tuple[Subscription, Delivery]:
    """Post the event of `webhook_id` again now, out of the stream's order (the receiver
    asked for it), and log the attempt."""
    _check_id(subscription_id)
    if not webhook_id or len(webhook_id) > MAX_WEBHOOK_ID:
        what = "is required" if not webhook_id else f"must be at most {MAX_WEBHOOK_ID} characters"
        raise invalid_request([FieldViolation("webhook_id", what)])
    sequence = sequence_of(subscription_id, webhook_id)
    if ctx.webhooks is None:  # build_context always sets one
        raise RuntimeError("this process has no webhook poster")
    async with ctx.store.read() as tx:
        subscription = await tx.webhooks.get(subscription_id)
        if subscription is None:
            raise webhook_subscription_not_found(subscription_id)
        if sequence is None:
            raise webhook_not_found(webhook_id)
        found = await tx.events.after(sequence - 1, 1)
        views = await event_views(tx, [e for e in found if e.sequence == sequence])
        sealed = await tx.webhooks.sealed_secret(subscription_id)
    if not views or sealed is None:
        raise webhook_not_found(webhook_id)
    view = views[0]
    if not wants(subscription.spec, view.event.type, view.entitlement.entitlement.product_id):
        raise webhook_not_found(webhook_id)
    secret = ctx.sealer.unseal(sealed).decode()
    delivery = await ctx.webhooks.post(subscription, secret, view, redelivery=True)
    async with ctx.store.write() as tx:
        if await tx.webhooks.get(subscription_id) is None:
            raise webhook_subscription_not_found(subscription_id)
        await tx.webhooks.record(delivery)
        await audit.record(
            tx,
            delivery.attempt_time,
            "webhook.redeliver",
            _resource(subscription_id),
            details={"webhook_id": webhook_id, "http_status": delivery.http_status},
        )
    return subscription, delivery
