"""AsyncLicensingClient: the LicensingClient API over grpc.aio, heartbeats as asyncio tasks."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import timedelta
from types import TracebackType
from typing import Any

import grpc

from keyturn.licensing.v1 import licensing_pb2, licensing_pb2_grpc

from .calls import Req, Resp, invoke_async, open_aio_channel
from .conversion import (
    EntitlementInfo,
    activate_request,
    check_request,
    entitlement_info,
    lease_grant,
)
from .errors import KeyturnError, LeaseSupersededError
from .fingerprint import default_fingerprint
from .heartbeat import AsyncHeartbeat, Clock, utc_now
from .lease import AsyncLease
from .retry import DEFAULT_RETRY, NO_RETRY, RetryPolicy
from .verification import DEFAULT_ISSUER, DEFAULT_LEEWAY, LeaseVerifier

log = logging.getLogger("keyturn.client")


class AsyncLicensingClient:
    """Activates seats, verifies leases offline and keeps them renewed, on asyncio.

    Same behaviour as LicensingClient; callbacks may be plain or async
    functions and run on the event loop. Use it from one event loop.
    """

    def __init__(
        self,
        target: str,
        product_id: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        channel: grpc.aio.Channel | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        leeway: timedelta = DEFAULT_LEEWAY,
        timeout: float | None = 10.0,
        issuer: str = DEFAULT_ISSUER,
        jwks: str | Mapping[str, Any] | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.product_id = product_id
        self.retry = retry
        self.timeout = timeout
        self.clock = clock
        self._target = target
        self._credentials = credentials
        self._own_channel = channel is None
        # grpc.aio binds a channel to the event loop it is created on, so ours is
        # opened at the first call (on the loop that makes it), not here.
        self._channel = channel
        self._stub_instance: licensing_pb2_grpc.LicensingServiceAsyncStub | None = None
        self._verifier = LeaseVerifier(product_id, issuer, leeway)
        if jwks is not None:
            self._verifier.load(jwks)
        self._heartbeats: set[AsyncHeartbeat] = set()

    # Seats

    async def activate(
        self,
        license_key: str | None = None,
        *,
        identity_token: str | None = None,
        fingerprint: str | None = None,
        label: str = "",
        heartbeat: bool = True,
        on_lost: Callable[[AsyncLease, KeyturnError], object] | None = None,
        on_renewed: Callable[[AsyncLease], object] | None = None,
        heartbeat_interval: float | None = None,
    ) -> AsyncLease:
        """Take a seat and return its verified lease; see LicensingClient.activate."""
        request = activate_request(
            self.product_id,
            fingerprint or default_fingerprint(self.product_id),
            label,
            license_key,
            identity_token,
        )
        response = await self._call(self._stub.ActivateSeat, request)
        claims = await self.verify_lease(response.lease.token)
        lease = AsyncLease(
            lease_grant(response.lease, claims, response.entitlement, response.activation_id),
            self,
        )
        lease.activation = request
        if heartbeat:
            self._start_heartbeat(lease, on_lost, on_renewed, heartbeat_interval)
        return lease

    async def renew(self, lease: AsyncLease) -> AsyncLease:
        """Exchange the lease for a newer one; the same object is updated and returned."""
        return await self._renew(lease, self.retry)

    async def release(self, lease: AsyncLease | str) -> None:
        """Stop the lease's heartbeat and give its seat back (a lease or a stored token)."""
        if isinstance(lease, str):
            await self._release_token(lease)
            return
        if lease.heartbeat is not None:
            await lease.heartbeat.stop()
            self._heartbeats.discard(lease.heartbeat)
        async with lease.lock:
            if lease.released:
                return
            await self._release_token(lease.token)
            lease.released = True

    async def check(
        self, license_key: str | None = None, *, identity_token: str | None = None
    ) -> EntitlementInfo:
        """The entitlement behind a credential, without taking a seat."""
        request = check_request(self.product_id, license_key, identity_token)
        return entitlement_info((await self._call(self._stub.CheckLicense, request)).entitlement)

    async def redeem_invitation(self, invitation_code: str) -> str:
        """Exchange an emailed invitation code for an identity token (for activate)."""
        request = licensing_pb2.RedeemInvitationRequest(invitation_code=invitation_code)
        return (await self._call(self._stub.RedeemInvitation, request)).identity_token

    # Keys and offline verification

    async def signing_keys(self) -> dict[str, Any]:
        """The JWKS from the server (also refreshes the cache verify_lease uses)."""
        request = licensing_pb2.GetSigningKeysRequest()
        response = await self._call(self._stub.GetSigningKeys, request)
        jwks: dict[str, Any] = json.loads(response.jwks_json)
        self._verifier.load(jwks)
        return jwks

    async def verify_lease(self, token: str) -> dict[str, Any]:
        """The claims of a lease, checked offline; see LicensingClient.verify_lease."""
        kid = self._verifier.kid_of(token)
        if self._verifier.needs_keys(kid):
            await self.signing_keys()
        return self._verifier.verify(token, self.clock())

    # Lifecycle

    async def close(self) -> None:
        """Stop every heartbeat, then close the channel if this client opened it."""
        heartbeats = list(self._heartbeats)
        self._heartbeats.clear()
        for beat in heartbeats:
            await beat.stop()
        if self._own_channel and self._channel is not None:
            await self._channel.close(None)
            self._channel = None
            self._stub_instance = None

    async def __aenter__(self) -> AsyncLicensingClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # Internals

    @property
    def _stub(self) -> licensing_pb2_grpc.LicensingServiceAsyncStub:
        if self._stub_instance is None:
            if self._channel is None:
                self._channel = open_aio_channel(self._target, self._credentials)
            self._stub_instance = licensing_pb2_grpc.LicensingServiceStub(self._channel)
        return self._stub_instance

    async def _call(
        self, method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp], request: Req
    ) -> Resp:
        return await invoke_async(method, request, retry=self.retry, call_timeout=self.timeout)

    async def _renew(self, lease: AsyncLease, retry: RetryPolicy) -> AsyncLease:
        async with lease.lock:
            request = licensing_pb2.RenewLeaseRequest(lease_token=lease.token)
            response = await invoke_async(
                self._stub.RenewLease, request, retry=retry, call_timeout=self.timeout
            )
            claims = await self.verify_lease(response.lease.token)
            lease._apply(lease_grant(response.lease, claims, response.entitlement))
        return lease

    async def _beat(self, lease: AsyncLease, retrying: bool) -> AsyncLease:
        """One heartbeat renewal. `retrying`: an earlier attempt went unanswered and may
        have renewed unseen; a LEASE_SUPERSEDED then takes the device's seat again."""
        try:
            return await self._renew(lease, NO_RETRY)
        except LeaseSupersededError:
            if not retrying or lease.activation is None:
                raise
        log.info(
            "renewal of %s may have been answered unseen; activating again", lease.activation_id
        )
        async with lease.lock:
            response = await invoke_async(
                self._stub.ActivateSeat, lease.activation, retry=NO_RETRY, call_timeout=self.timeout
            )
            claims = await self.verify_lease(response.lease.token)
            lease._apply(
                lease_grant(response.lease, claims, response.entitlement, response.activation_id)
            )
        return lease

    async def _release_token(self, token: str) -> None:
        request = licensing_pb2.ReleaseSeatRequest(lease_token=token)
        await self._call(self._stub.ReleaseSeat, request)

    def _start_heartbeat(
        self,
        lease: AsyncLease,
        on_lost: Callable[[AsyncLease, KeyturnError], object] | None,
        on_renewed: Callable[[AsyncLease], object] | None,
        interval: float | None,
    ) -> None:
        def lost(error: KeyturnError) -> object:
            self._heartbeats.discard(beat)
            return None if on_lost is None else on_lost(lease, error)

        beat = AsyncHeartbeat(
            lease,
            # One attempt per renewal: the heartbeat itself retries until expiry.
            lambda retrying: self._beat(lease, retrying),
            policy=self.retry,
            clock=self.clock,
            interval=interval,
            on_renewed=None if on_renewed is None else (lambda: on_renewed(lease)),
            on_lost=lost,
        )
        lease.heartbeat = beat
        self._heartbeats.add(beat)
        beat.start()
