"""Calling the change stream in tests: open one, read its next event, or its failure."""

from __future__ import annotations

import asyncio
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
