"""`keyturn webhooks ...`: outbound webhook subscriptions on the server's database, as
`keyturn tokens` manages tokens (the same use cases as the webhook RPCs, actor
`cli:USER` in the audit trail)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from .app import webhooks
from .app.context import AppContext
from .config import Settings
from .domain.events import EventType
from .domain.webhooks import Subscription, SubscriptionSpec, WebhookState

UTC_TIME = "%Y-%m-%dT%H:%M:%SZ"
Opened = Callable[[argparse.Namespace], AbstractAsyncContextManager[AppContext]]


def _row(subscription: Subscription) -> str:
    spec = subscription.spec
    filters = ",".join(spec.event_types) or "all-types"
    products = ",".join(spec.product_ids) or "all-products"
    state = subscription.state.value
    if subscription.pause_reason:
        state += f" ({subscription.pause_reason})"
    elif subscription.attempts:
        state += f" (failing: {subscription.attempts} attempts)"
    return (
        f"{subscription.subscription_id}  {spec.url}  cursor {subscription.cursor}  "
        f"{filters}  {products}  {state}  {spec.description}"
    ).rstrip()


def add_webhook_commands(
    commands: argparse._SubParsersAction[Any],
    admin: argparse.ArgumentParser,
    opened: Callable[[Settings, argparse.Namespace], AbstractAsyncContextManager[AppContext]],
    settings_of: Callable[[argparse.Namespace], Settings],
) -> None:
    """The `webhooks` command and its subcommands."""

    def ctx_of(args: argparse.Namespace) -> AbstractAsyncContextManager[AppContext]:
        return opened(settings_of(args), args)

    parser = commands.add_parser(
        "webhooks", help="manage outbound webhook subscriptions (the change stream, pushed)"
    )
    sub = parser.add_subparsers(dest="webhooks_command", required=True)

    create = sub.add_parser(
        "create", parents=[admin], help="subscribe a URL; prints its secret (whsec_...) once"
    )
    create.add_argument("url", help="http:// or https:// URL the events are POSTed to")
    create.add_argument(
        "--event-type",
        action="append",
        default=[],
        choices=[t.value for t in EventType],
        help="only events of this type; repeat for several (default: every type)",
    )
    create.add_argument(
        "--product", action="append", default=[], help="only events of this product; repeat"
    )
    create.add_argument("--description", default="", help="what it is for")
    create.add_argument(
        "--after-sequence",
        type=int,
        metavar="N",
        help="send the events after sequence N (0: from the first); default: only new ones",
    )
    create.set_defaults(run=lambda args: _create(ctx_of, args))

    listing = sub.add_parser(
        "list", parents=[admin], help="every subscription: id, URL, cursor, filters, state"
    )
    listing.set_defaults(run=lambda args: _list(ctx_of, args))

    for name, state, what in (
        ("pause", WebhookState.PAUSED, "stop sending (the cursor stays: nothing is skipped)"),
        ("resume", WebhookState.ACTIVE, "send again from where it stopped, at once"),
    ):
        command = sub.add_parser(name, parents=[admin], help=what)
        command.add_argument("subscription_id", help="whk_...")
        command.set_defaults(run=lambda args, state=state: _set_state(ctx_of, args, state))

    remove = sub.add_parser("delete", parents=[admin], help="delete a subscription and its log")
    remove.add_argument("subscription_id", help="whk_...")
    remove.set_defaults(run=lambda args: _delete(ctx_of, args))

    log = sub.add_parser(
        "deliveries",
        parents=[admin],
        help="a subscription's delivery attempts, newest first: time, webhook id, status",
    )
    log.add_argument("subscription_id", help="whk_...")
    log.add_argument("--limit", type=int, default=50, metavar="N", help="at most N (500 max)")
    log.set_defaults(run=lambda args: _deliveries(ctx_of, args))

    again = sub.add_parser(
        "redeliver",
        parents=[admin],
        help="send one event again now (--webhook-id), or every event from a sequence on",
    )
    again.add_argument("subscription_id", help="whk_...")
    target = again.add_mutually_exclusive_group(required=True)
    target.add_argument("--webhook-id", help="the webhook-id of the event (SUBSCRIPTION.SEQUENCE)")
    target.add_argument("--from-sequence", type=int, metavar="N", help="every event from N on")
    again.set_defaults(run=lambda args: _redeliver(ctx_of, args))


async def _create(ctx_of: Opened, args: argparse.Namespace) -> int:
    spec = SubscriptionSpec(
        url=args.url,
        event_types=tuple(args.event_type),
        product_ids=tuple(args.product),
        description=args.description,
    )
    async with ctx_of(args) as ctx:
        created, secret = await webhooks.create_subscription(
            ctx, spec, after_sequence=args.after_sequence
        )
    print(secret)
    print(
        f"subscription {created.subscription_id} from sequence {created.cursor + 1}",
        file=sys.stderr,
    )
    return 0


async def _list(ctx_of: Opened, args: argparse.Namespace) -> int:
    async with ctx_of(args) as ctx:
        found: list[Subscription] = []
        token = ""
        while True:
            page, token = await webhooks.list_subscriptions(ctx, 500, token)
            found += page
            if not token:
                break
    for subscription in found:
        print(_row(subscription))
    return 0


async def _set_state(ctx_of: Opened, args: argparse.Namespace, state: WebhookState) -> int:
    async with ctx_of(args) as ctx:
        current = await webhooks.get_subscription(ctx, args.subscription_id)
        changed = await webhooks.update_subscription(
            ctx, current.subscription_id, current.spec, state
        )
    print(_row(changed))
    return 0


async def _delete(ctx_of: Opened, args: argparse.Namespace) -> int:
    async with ctx_of(args) as ctx:
        await webhooks.delete_subscription(ctx, args.subscription_id)
    print(f"deleted {args.subscription_id}")
    return 0


async def _deliveries(ctx_of: Opened, args: argparse.Namespace) -> int:
    async with ctx_of(args) as ctx:
        found, _ = await webhooks.list_deliveries(ctx, args.subscription_id, args.limit, "")
    for delivery in found:
        outcome = "delivered" if delivery.delivered else "failed"
        redelivery = "  redelivery" if delivery.redelivery else ""
        print(
            f"{delivery.attempt_time:{UTC_TIME}}  {delivery.webhook_id}  "
            f"{delivery.http_status or '-'}  {outcome}{redelivery}  {delivery.response_excerpt}"
        )
    return 0


async def _redeliver(ctx_of: Opened, args: argparse.Namespace) -> int:
    async with ctx_of(args) as ctx:
        if args.from_sequence is not None:
            moved = await webhooks.replay_from(ctx, args.subscription_id, args.from_sequence)
            print(f"{moved.subscription_id}: events from {moved.cursor + 1} go again")
            return 0
        _, delivery = await webhooks.redeliver_one(ctx, args.subscription_id, args.webhook_id)
    status = delivery.http_status or "no answer"
    print(f"{delivery.webhook_id}: {status} {delivery.response_excerpt}")
    return 0 if delivery.delivered else 1
