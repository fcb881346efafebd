"""One place where RPCs are made: retry on UNAVAILABLE, typed errors, channels.

The sync and asyncio loops differ only in how they wait; what to retry and
how to convert errors comes from `retry` and `errors`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc

from .errors import from_rpc_error
from .retry import RetryPolicy

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Item = TypeVar("Item")

Metadata = tuple[tuple[str, str], ...]


def open_channel(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, credentials)


def open_aio_channel(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
    if credentials is None:
        return grpc.aio.insecure_channel(target)
    return grpc.aio.secure_channel(target, credentials)


def invoke(
    method: grpc.UnaryUnaryMultiCallable[Req, Resp],
    request: Req,
    *,
    retry: RetryPolicy,
    timeout: float | None,
    metadata: Metadata | None = None,
    sleep: Callable[[float], object] = time.sleep,
) -> Resp:
    """Call `method`, retrying UNAVAILABLE as `retry` says; raise KeyturnError subclasses."""
    failures = 0
    while True:
        try:
            return method(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as exc:
            failures += 1
            error = from_rpc_error(exc)
            if not retry.retries(error, failures):
                raise error from exc
        sleep(retry.backoff(failures - 1))


async def invoke_async(
    method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
    request: Req,
    *,
    retry: RetryPolicy,
    call_timeout: float | None,
    metadata: Metadata | None = None,
) -> Resp:
    """The asyncio twin of `invoke` (`call_timeout` is the deadline of each attempt)."""
    failures = 0
    while True:
        try:
            return await method(request, timeout=call_timeout, metadata=metadata)
        except grpc.RpcError as exc:
            failures += 1
            error = from_rpc_error(exc)
            if not retry.retries(error, failures):
                raise error from exc
        await asyncio.sleep(retry.backoff(failures - 1))


def paged(fetch: Callable[[str], tuple[list[Item], str]]) -> Iterator[Item]:
    """Every item of an AIP-158 list: `fetch(page_token)` returns (items, next_page_token)."""
    token = ""
    while True:
        items, token = fetch(token)
        yield from items
        if not token:
            return
