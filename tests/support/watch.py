"""Calling the change stream in tests: open one, read its next event, or its failure."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TypeAlias

import grpc
import pytest

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.fulfillment.v1 import fulfillment_pb2_grpc

from .catalog import Metadata
from .rpc import RpcFailure, failure_of

Fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub
WatchCall: TypeAlias = "grpc.aio.UnaryStreamCall[ful.WatchEntitlementEventsRequest, ful.WatchEntitlementEventsResponse]"

WAIT_S = 60.0  # only so that a broken stream fails the test instead of hanging it


def watch(stub: Fulfillment, auth: Metadata, after_sequence: int) -> WatchCall:
    return stub.WatchEntitlementEvents(
        ful.WatchEntitlementEventsRequest(after_sequence=after_sequence), metadata=auth
    )


async def next_event(call: WatchCall) -> ful.EntitlementEvent:
    response = await asyncio.wait_for(call.read(), WAIT_S)
    assert isinstance(response, ful.WatchEntitlementEventsResponse), "the stream ended"
    return response.event


async def watch_failure(stub: Fulfillment, auth: Metadata, after_sequence: int) -> RpcFailure:
    call = watch(stub, auth, after_sequence)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(call.read(), WAIT_S)
    finally:
        call.cancel()
    return failure_of(caught.value)


class Follower:
    """Reads a change stream in the background, event by event, until it fails (its
    server died) or is closed; waiters are woken at every event and at the end."""

    def __init__(self, call: WatchCall) -> None:
        self._call = call
        self.seen: list[ful.EntitlementEvent] = []
        self.ended: grpc.StatusCode | None = None  # the code the stream ended with
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._read(), name="change-stream-follower")

    async def _read(self) -> None:
        try:
            async for response in self._call:
                async with self._changed:
                    self.seen.append(response.event)
                    self._changed.notify_all()
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            code = error.code()
        async with self._changed:
            self.ended = code
            self._changed.notify_all()

    async def until(self, count: int, within_s: float = WAIT_S) -> list[ful.EntitlementEvent]:
        """Once `count` events were read, or the stream ended (bounded)."""
        async with asyncio.timeout(within_s), self._changed:
            await self._changed.wait_for(lambda: len(self.seen) >= count or self.ended is not None)
        return self.seen

    async def ended_with(self, within_s: float = WAIT_S) -> grpc.StatusCode:
        """The code the stream ended with, once it has (bounded)."""
        async with asyncio.timeout(within_s), self._changed:
            await self._changed.wait_for(lambda: self.ended is not None)
        assert self.ended is not None
        return self.ended

    async def close(self) -> None:
        self._call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def read_events(
    stub: Fulfillment, auth: Metadata, after_sequence: int, count: int
) -> list[ful.EntitlementEvent]:
    """The `count` events after `after_sequence`, from a new stream."""
    call = watch(stub, auth, after_sequence)
    try:
        return [await next_event(call) for _ in range(count)]
    finally:
        call.cancel()
