"""Test harness for keyturn.client: one async face over the sync and asyncio clients,
a call-counting interceptor, a TCP proxy that can cut the network, and a signal
that callbacks on any thread can set and tests can await."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from keyturn.client import (
    AsyncLease,
    AsyncLicensingClient,
    EntitlementInfo,
    Lease,
    LeaseBase,
    LicensingClient,
)
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

OpenLicensing = Callable[..., Awaitable["Licensing"]]
LicenseOf = Callable[..., Awaitable[ful.Entitlement]]

# Reconnect quickly after the proxy comes back, instead of gRPC's default 1 s backoff.
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
]
WAIT = 15.0  # upper bound for anything a test waits for; reached only on failure


class Signal:
    """Set from any thread (heartbeat thread or event loop), awaited by the test."""

    def __init__(self, times: int = 1) -> None:
        self.times = times
        self.calls: list[tuple[Any, ...]] = []
        self._event = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, *args: Any) -> None:
        with self._lock:
            self.calls.append(args)
            if len(self.calls) >= self.times:
                self._event.set()

    async def wait(self, within: float = WAIT) -> None:
        if not await asyncio.to_thread(self._event.wait, within):
            raise AssertionError(f"not signalled within {within}s ({len(self.calls)} calls)")


@dataclass
class CallLog:
    """Method names of every attempt made through a client's channel, in order."""

    names: list[str] = field(default_factory=list)
    after: list[Callable[[str, bool], None]] = field(default_factory=list)  # (method, failed)

    def count(self, method: str) -> int:
        return self.names.count(method)

    def _record(self, full_method: str | bytes) -> str:
        text = full_method.decode() if isinstance(full_method, bytes) else full_method
        name = text.rsplit("/", 1)[-1]
        self.names.append(name)
        return name

    def _finished(self, name: str, failed: bool) -> None:
        for hook in list(self.after):
            hook(name, failed)


class SyncCounter(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, log: CallLog) -> None:
        self.log = log

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        name = self.log._record(details.method)
        outcome = continuation(details, request)
        self.log._finished(name, outcome.exception() is not None)
        return outcome


class AsyncCounter(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, log: CallLog) -> None:
        self.log = log

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        name = self.log._record(details.method)
        call = await continuation(details, request)
        failed = False
        try:
            await call
        except grpc.RpcError:
            failed = True
        self.log._finished(name, failed)
        return call


class TcpProxy:
    """A loopback TCP forwarder: `pause()` cuts every connection and refuses new ones,
    as a network outage would; `resume()` lets connections through again."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self.paused = False
        self.address = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"

    def pause(self) -> None:
        self.paused = True
        for transport in list(self._transports):
            transport.abort()

    def resume(self) -> None:
        self.paused = False

    async def close(self) -> None:
        self.pause()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.paused:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer.transport, up_writer.transport)
        self._transports.update(pair)
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
            )
        finally:
            for transport in pair:
                self._transports.discard(transport)
                transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not self.paused:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        writer.transport.abort()


class MovableClock:
    """The client's clock: real time plus an offset a test can move."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


class Licensing:
    """The LicensingClient API with async methods, over either client.

    The sync client runs in worker threads (asyncio.to_thread): the server
    under test runs on this event loop, so a blocking call here would hang.
    """

    def __init__(
        self,
        kind: str,
        client: LicensingClient | AsyncLicensingClient,
        calls: CallLog,
        close_channel: Callable[[], Awaitable[None]],
    ) -> None:
        self.kind = kind
        self.client = client
        self.calls = calls
        self._close_channel = close_channel

    async def _run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.kind == "sync":
            return await asyncio.to_thread(function, *args, **kwargs)
        return await function(*args, **kwargs)

    async def activate(self, license_key: str | None = None, **kwargs: Any) -> LeaseBase:
        kwargs.setdefault("fingerprint", "device-0001")
        kwargs.setdefault("heartbeat", False)
        lease: LeaseBase = await self._run(self.client.activate, license_key, **kwargs)
        return lease

    async def renew(self, lease: LeaseBase) -> LeaseBase:
        """Through the lease's own method."""
        assert isinstance(lease, Lease | AsyncLease)
        renewed: LeaseBase = await self._run(lease.renew)
        return renewed

    async def release(self, lease: LeaseBase | str) -> None:
        """Through the client (a lease or a bare token)."""
        await self._run(self.client.release, lease)

    async def release_lease(self, lease: LeaseBase) -> None:
        """Through the lease's own method."""
        assert isinstance(lease, Lease | AsyncLease)
        await self._run(lease.release)

    @contextlib.asynccontextmanager
    async def held(self, lease: LeaseBase) -> AsyncIterator[LeaseBase]:
        """The lease's own context manager (`with` or `async with`)."""
        if isinstance(lease, AsyncLease):
            async with lease as entered:
                yield entered
            return
        assert isinstance(lease, Lease)
        entered_sync = await asyncio.to_thread(lease.__enter__)
        try:
            yield entered_sync
        except BaseException as exc:
            await asyncio.to_thread(lease.__exit__, type(exc), exc, exc.__traceback__)
            raise
        await asyncio.to_thread(lease.__exit__, None, None, None)

    async def check(self, license_key: str | None = None, **kwargs: Any) -> EntitlementInfo:
        """CheckLicense with a license key or `identity_token=`."""
        info: EntitlementInfo = await self._run(self.client.check, license_key, **kwargs)
        return info

    async def redeem_invitation(self, invitation_code: str) -> str:
        token: str = await self._run(self.client.redeem_invitation, invitation_code)
        return token

    async def verify_lease(self, token: str) -> dict[str, Any]:
        claims: dict[str, Any] = await self._run(self.client.verify_lease, token)
        return claims

    async def wake(self, lease: LeaseBase) -> None:
        assert isinstance(lease, Lease | AsyncLease)
        assert lease.heartbeat is not None
        lease.heartbeat.wake()

    async def stop_heartbeat(self, lease: LeaseBase) -> None:
        """Stop the heartbeat and wait until its loop has ended."""
        assert isinstance(lease, Lease | AsyncLease)
        assert lease.heartbeat is not None
        await self._run(lease.heartbeat.stop)
        assert not lease.heartbeat.running

    async def close(self) -> None:
        await self._run(self.client.close)
        await self._close_channel()


async def open_licensing(kind: str, target: str, **options: Any) -> Licensing:
    """A client of `kind` ("sync" or "async") on a counted channel of the test's,
    or, with `counted=False`, on the channel the client opens itself."""
    calls = CallLog()
    product_id = options.pop("product_id")
    if not options.pop("counted", True):  # the client opens its own channel
        if kind == "sync":
            plain = LicensingClient(target, product_id, **options)
        else:
            plain = AsyncLicensingClient(target, product_id, **options)  # type: ignore[assignment]

        async def nothing() -> None:
            return None

        return Licensing(kind, plain, calls, nothing)
    if kind == "sync":
        raw = grpc.insecure_channel(target, options=FAST_RECONNECT)
        channel = grpc.intercept_channel(raw, SyncCounter(calls))
        sync_client = LicensingClient(target, product_id, channel=channel, **options)

        async def close_sync() -> None:
            await asyncio.to_thread(raw.close)

        return Licensing(kind, sync_client, calls, close_sync)
    aio_channel = grpc.aio.insecure_channel(
        target, options=FAST_RECONNECT, interceptors=[AsyncCounter(calls)]
    )
    async_client = AsyncLicensingClient(target, product_id, channel=aio_channel, **options)

    async def close_async() -> None:
        await aio_channel.close(None)

    return Licensing(kind, async_client, calls, close_async)
