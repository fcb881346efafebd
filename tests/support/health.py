"""Waiting, bounded, for a server's health to say what a test expects."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


async def health_reaches(channel: grpc.aio.Channel, wanted: int, within_s: float = 60.0) -> float:
    """Follow the health Watch stream until it reports `wanted`; the seconds it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
    try:
        async with asyncio.timeout(within_s):
            async for response in call:
                if response.status == wanted:
                    return loop.time() - started
    finally:
        call.cancel()
    raise AssertionError(f"the health stream ended before reporting {wanted}")
