"""Outbound webhooks from several replicas to a receiver that is down for a while and
answers 500 at random: every event arrives, in order per subscription, none lost, every
repeat with the same webhook id, every signature good by the `standardwebhooks` library.

Three `keyturn serve` replicas on one PostgreSQL database (on SQLite, which has one
writer, one replica of two workers) take 300 orders and seat changes, spread over
them, while every process runs a webhook sender. The receiver is a real HTTP server
on loopback: closed (connections refused) for the first third of the load, then
answering 500 to a quarter of the POSTs, chosen at random. Retry delays are set short
(KEYTURN_WEBHOOKS_RETRY_*) so that the run waits for no real backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path

import grpc

from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.app.context import AppContext

from conftest import Tokens, server_settings
from support.catalog import put_catalog
from support.rpc import PRODUCT_ID, create_sku, order
from support.subprocess_server import ServerProcess, replicas
from support.webhook_receiver import Received, Receiver, verified

ORDERS = 150  # each followed by one seat change: 300 in all
IN_FLIGHT = 12
DOWN_FOR = 100  # operations done while the receiver is down
FAILURE_RATE = 0.25


def webhook_replicas(
    cwd: Path, database_url: str, count: int, workers: int
) -> contextlib.AbstractAsyncContextManager[list[ServerProcess]]:
    settings = server_settings(
        database_url,
        KEYTURN_LOG_LEVEL="WARNING",
        KEYTURN_WEBHOOKS_POLL_SECONDS="0.2",
        KEYTURN_WEBHOOKS_RETRY_INITIAL_SECONDS="0.05",
        KEYTURN_WEBHOOKS_RETRY_MAX_SECONDS="0.5",
        KEYTURN_WEBHOOKS_TIMEOUT_SECONDS="5",
    )
    return replicas(cwd, settings, count, workers)


def first_deliveries(posts: list[Received]) -> list[int]:
    """The sequence of each webhook id's first 2xx, in arrival order."""
    seen: set[str] = set()
    firsts = []
    for post in posts:
        if 200 <= post.status < 300 and post.webhook_id not in seen:
            seen.add(post.webhook_id)
            firsts.append(post.sequence)
    return firsts


def check_subscription(
    posts: list[Received], secret: str, expected: list[int], subscription_id: str
) -> None:
    firsts = first_deliveries(posts)
    assert firsts == expected, "lost, repeated or out of order"
    # In order: no event was posted before every event ahead of it had been taken (2xx).
    position = {sequence: i for i, sequence in enumerate(expected)}
    taken = 0
    acknowledged: set[int] = set()
    for post in posts:
        assert position[post.sequence] <= taken, f"{post.webhook_id} overtook an event"
        if 200 <= post.status < 300:
            acknowledged.add(post.sequence)
            while taken < len(expected) and expected[taken] in acknowledged:
                taken += 1
    bodies: dict[str, bytes] = {}
    for post in posts:
        payload = verified(secret, post)
        assert post.webhook_id == f"{subscription_id}.{payload['data']['sequence']}"
        assert bodies.setdefault(post.webhook_id, post.body) == post.body  # repeats: same
    assert len(posts) > len(expected), "no repeat was needed: the failures did not happen"


async def test_three_replicas_deliver_every_event_in_order_through_outage_and_500s(
    app: AppContext, database_url: str, tokens: Tokens, tmp_path: Path
) -> None:
    pick = random.Random(15)
    receiver = Receiver(lambda _: 500 if pick.random() < FAILURE_RATE else 200)
    receiver.start()
    count, workers = (1, 2) if database_url.startswith("sqlite") else (3, 1)
    async with webhook_replicas(tmp_path, database_url, count, workers) as running:
        channels = [grpc.aio.insecure_channel(server.address) for server in running]
        try:
            fulfilment = [fulfillment_pb2_grpc.FulfillmentServiceStub(c) for c in channels]
            licensing = [licensing_pb2_grpc.LicensingServiceStub(c) for c in channels]
            await put_catalog(
                catalog_pb2_grpc.CatalogServiceStub(channels[0]),
                tokens("catalog"),
                create_sku("STD", seats=5),
            )
            subscriptions = []
            for fields in (
                {},
                {"event_types": [ful.ENTITLEMENT_EVENT_TYPE_SEAT_ACTIVATED]},
            ):
                created = await fulfilment[-1].CreateWebhookSubscription(
                    ful.CreateWebhookSubscriptionRequest(
                        subscription=ful.WebhookSubscription(url=receiver.url, **fields)  # type: ignore[arg-type]
                    ),
                    metadata=tokens("webhooks"),
                )
                subscriptions.append((created.subscription, created.secret))
            receiver.stop()  # down: connections refused
            done = 0
            gate = asyncio.Semaphore(IN_FLIGHT)

            async def one(i: int) -> None:
                nonlocal done
                async with gate:
                    answer = await fulfilment[i % count].FulfillOrder(
                        order(f"load-{i}", "STD"), metadata=tokens("fulfill"), timeout=60
                    )
                    done += 1
                    await licensing[(i + 1) % count].ActivateSeat(
                        lic.ActivateSeatRequest(
                            license_key=answer.entitlements[0].license_key,
                            product_id=PRODUCT_ID,
                            fingerprint=f"device-{i}",
                        ),
                        timeout=60,
                    )
                    done += 1
                    if done >= DOWN_FOR and receiver.port and not receiver.listening:
                        receiver.start()  # back on the same port

            await asyncio.gather(*(one(i) for i in range(ORDERS)))
            if not receiver.listening:
                receiver.start()
            async with app.store.read() as tx:
                log = await tx.events.after(0, 10 * ORDERS)
            expected = {
                sub.subscription_id: [
                    e.sequence
                    for e in log
                    if e.sequence > sub.cursor
                    and (not sub.event_types or e.type == "seat_activated")
                ]
                for sub, _ in subscriptions
            }
            assert len(expected[subscriptions[0][0].subscription_id]) == 2 * ORDERS
            assert len(expected[subscriptions[1][0].subscription_id]) == ORDERS

            def complete(posts: list[Received]) -> bool:
                for sub_id, wanted in expected.items():
                    mine = [p for p in posts if p.webhook_id.startswith(sub_id + ".")]
                    if len(first_deliveries(mine)) < len(wanted):
                        return False
                return True

            await receiver.wait_for(complete, within=240)
            posts = receiver.snapshot()
            for sub, secret in subscriptions:
                mine = [p for p in posts if p.webhook_id.startswith(sub.subscription_id + ".")]
                check_subscription(mine, secret, expected[sub.subscription_id], sub.subscription_id)
            refused = await fulfilment[0].ListWebhookDeliveries(
                ful.ListWebhookDeliveriesRequest(
                    subscription_id=subscriptions[0][0].subscription_id, page_size=500
                ),
                metadata=tokens("webhooks"),
            )
            statuses = {d.http_status for d in refused.deliveries}
            assert 500 in statuses
            print(
                f"webhooks: {len(posts)} POSTs for "
                f"{sum(len(v) for v in expected.values())} events; statuses {sorted(statuses)}"
            )
        finally:
            for channel in channels:
                await channel.close()
            receiver.stop()
