"""Seats are never oversold, whatever the number of server processes.

500 devices activate at once, through the Python client, against a 10-seat
floating entitlement served by three `keyturn serve` replicas on one
PostgreSQL database (one replica on SQLite, which has a single writer), each
replica one process or a supervisor of two workers on one port. A monitor
counts live seats with plain SQL, over and over, for as long as the storm lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc
import pytest

from keyturn.client import AsyncLease, AsyncLicensingClient, RetryPolicy, SeatsExhaustedError
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.server.app.context import AppContext

from conftest import Tokens, server_settings
from support.catalog import new_license
from support.rpc import PRODUCT_ID
from support.seats import Monitor, live_seats
from support.subprocess_server import ServerProcess, replicas
from support.workers import channel_to, discover_workers

THROUGH_PGBOUNCER = True  # conftest: also through PgBouncer in transaction mode
SEATS = 10
DEVICES = 500
CALL_TIMEOUT_S = 120.0
# Deadlock or lock timeouts answer UNAVAILABLE; the client retries those.
RETRY = RetryPolicy(attempts=8, initial=0.05, maximum=1.0)


def servers(
    cwd: Path, database_url: str, count: int, workers: int
) -> contextlib.AbstractAsyncContextManager[list[ServerProcess]]:
    """`count` servers of `workers` processes each on one (already migrated) database."""
    return replicas(cwd, server_settings(database_url, KEYTURN_LOG_LEVEL="WARNING"), count, workers)


async def worker_channels(
    server: ServerProcess, workers: int
) -> list[tuple[str, grpc.aio.Channel | None]]:
    """One channel to each worker of `server` (None: the client opens its own to a lone
    process), so that the storm reaches every process, not just the one a channel picks."""
    if workers == 1:
        return [(server.address, None)]
    pids = await discover_workers(server.address, workers)
    return [(server.address, await channel_to(server.address, pid)) for pid in sorted(pids)]


async def activate(
    client: AsyncLicensingClient, key: str, fingerprint: str
) -> AsyncLease | SeatsExhaustedError:
    try:
        return await client.activate(key, fingerprint=fingerprint, heartbeat=False)
    except SeatsExhaustedError as refused:
        return refused


@pytest.mark.parametrize("workers", [1, 2])
async def test_500_devices_against_10_seats_on_every_replica(
    app: AppContext,
    database_url: str,
    tokens: Tokens,
    tmp_path: Path,
    workers: int,
) -> None:
    replicas = 1 if database_url.startswith("sqlite") else 3
    async with servers(tmp_path, database_url, replicas, workers) as running:
        async with grpc.aio.insecure_channel(running[0].address) as channel:
            entitlement = await new_license(
                catalog_pb2_grpc.CatalogServiceStub(channel),
                fulfillment_pb2_grpc.FulfillmentServiceStub(channel),
                tokens("catalog"),
                tokens("fulfill"),
                SEATS,
            )
        key = entitlement.license_key
        channels = [c for server in running for c in await worker_channels(server, workers)]
        clients = [
            AsyncLicensingClient(
                address, PRODUCT_ID, channel=channel, retry=RETRY, timeout=CALL_TIMEOUT_S
            )
            for address, channel in channels
        ]
        try:
            monitor = Monitor(app, entitlement.entitlement_id)
            watching = asyncio.create_task(monitor.run())
            results = await asyncio.gather(
                *(
                    activate(clients[i % len(clients)], key, f"storm-device-{i:04d}")
                    for i in range(DEVICES)
                )
            )
            monitor.stop()
            await watching
            granted = [r for r in results if isinstance(r, AsyncLease)]
            refused = [r for r in results if isinstance(r, SeatsExhaustedError)]
            assert len(granted) == SEATS
            assert len(refused) == DEVICES - SEATS
            assert {r.reason for r in refused} == {"SEATS_EXHAUSTED"}
            assert len({lease.activation_id for lease in granted}) == SEATS
            print(f"monitor: {len(monitor.samples)} counts, highest {max(monitor.samples)}")
            assert len(monitor.samples) > 1, "the monitor hardly counted"
            assert max(monitor.samples) <= SEATS
            assert await live_seats(app, entitlement.entitlement_id, app.clock.now()) == SEATS

            # Ten releases free ten seats, which ten new devices then take, on any replica.
            await asyncio.gather(*(lease.release() for lease in granted))
            assert await live_seats(app, entitlement.entitlement_id, app.clock.now()) == 0
            again = await asyncio.gather(
                *(
                    activate(clients[i % len(clients)], key, f"second-wave-{i:04d}")
                    for i in range(SEATS + 1)
                )
            )
            assert sum(isinstance(r, AsyncLease) for r in again) == SEATS
            assert sum(isinstance(r, SeatsExhaustedError) for r in again) == 1
            assert await live_seats(app, entitlement.entitlement_id, app.clock.now()) == SEATS
        finally:
            for client in clients:
                await client.close()
            for _, channel in channels:
                if channel is not None:
                    await channel.close()
