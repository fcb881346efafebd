"""Whether a server just (re)started serves: health SERVING, then an activation answered
the first time it is asked (no retry), so that a restart is seen to serve at once."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keyturn.client import AsyncLease, AsyncLicensingClient
from keyturn.client.retry import NO_RETRY

from .rpc import PRODUCT_ID

WAIT_S = 60.0


async def serves(
    address: str,
    license_key: str,
    fingerprint: str,
    channel: grpc.aio.Channel | None = None,
    clock_offset: timedelta = timedelta(0),
) -> AsyncLease:
    """The lease of that one activation (on `channel`, else on a new connection), checked
    by a client whose clock is the server's (KEYTURN_CLOCK_OFFSET_SECONDS: `clock_offset`)."""
    async with contextlib.AsyncExitStack() as stack:
        if channel is None:
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(address))
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=WAIT_S
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        client = AsyncLicensingClient(
            address,
            PRODUCT_ID,
            channel=channel,
            retry=NO_RETRY,
            timeout=WAIT_S,
            clock=lambda: datetime.now(UTC) + clock_offset,
        )
        try:
            return await client.activate(license_key, fingerprint=fingerprint, heartbeat=False)
        finally:
            await client.close()
