"""What the connector clients share: a channel, a bearer token on every call, retries."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

import grpc

from .calls import Metadata, Req, Resp, invoke, open_channel
from .retry import DEFAULT_RETRY, RetryPolicy


def bearer_metadata(token: str) -> Metadata:
    """`authorization: Bearer <token>` as call metadata.

    Plain metadata rather than call credentials: gRPC refuses call
    credentials on insecure channels, and connectors often talk to a
    loopback or sidecar address without TLS.
    """
    if not token or any(c in token for c in "\r\n"):
        raise ValueError("a bearer token is required")
    return (("authorization", f"Bearer {token}"),)


class BearerClient:
    """A sync client of a service that wants a bearer token (Catalog, Fulfillment)."""

    def __init__(
        self,
        target: str,
        token: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        channel: grpc.Channel | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        timeout: float | None = 30.0,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        """`channel` replaces target/credentials and is then not closed by close().
        `sleep` waits between reconnections of a change stream."""
        self.retry = retry
        self.timeout = timeout
        self._sleep = sleep
        self._metadata = bearer_metadata(token)
        self._own_channel = channel is None
        self._channel = channel if channel is not None else open_channel(target, credentials)

    def _call(self, method: grpc.UnaryUnaryMultiCallable[Req, Resp], request: Req) -> Resp:
        return invoke(
            method, request, retry=self.retry, timeout=self.timeout, metadata=self._metadata
        )

    def close(self) -> None:
        if self._own_channel:
            self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
