"""LicensingClient: the sync client a shipped app uses to take, keep and give back a seat."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import timedelta
from types import TracebackType
from typing import Any

import grpc

from keyturn.licensing.v1 import licensing_pb2, licensing_pb2_grpc

from .calls import Req, Resp, invoke, open_channel
from .conversion import (
    EntitlementInfo,
    activate_request,
    check_request,
    entitlement_info,
    lease_grant,
)
from .errors import KeyturnError, LeaseSupersededError
from .fingerprint import default_fingerprint
from .heartbeat import Clock, Heartbeat, utc_now
from .lease import Lease
from .retry import DEFAULT_RETRY, NO_RETRY, RetryPolicy
from .verification import DEFAULT_ISSUER, DEFAULT_LEEWAY, LeaseVerifier

log = logging.getLogger("keyturn.client")


class LicensingClient:
    """Activates seats, verifies leases offline and keeps them renewed.

    Thread-safe. Every call is retried on UNAVAILABLE only (see RetryPolicy)
    and raises KeyturnError subclasses. `close()` stops the heartbeats but
    gives no seat back: release leases (or use `with lease:`) for that.
    """

    def __init__(
        self,
        target: str,
        product_id: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        channel: grpc.Channel | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        leeway: timedelta = DEFAULT_LEEWAY,
        timeout: float | None = 10.0,
        issuer: str = DEFAULT_ISSUER,
        jwks: str | Mapping[str, Any] | None = None,
        clock: Clock = utc_now,
    ) -> None:
        """`channel` replaces target/credentials (and is then not closed by close());
        `jwks` preloads the signing keys (e.g. saved from signing_keys()) for offline
        starts; `clock` is the time leases are verified and renewed against."""
        self.product_id = product_id
        self.retry = retry
        self.timeout = timeout
        self.clock = clock
        self._own_channel = channel is None
        self._channel = channel if channel is not None else open_channel(target, credentials)
        self._stub = licensing_pb2_grpc.LicensingServiceStub(self._channel)
        self._verifier = LeaseVerifier(product_id, issuer, leeway)
        if jwks is not None:
            self._verifier.load(jwks)
        self._heartbeats: set[Heartbeat] = set()
        self._lock = threading.Lock()

    # Seats

    def activate(
        self,
        license_key: str | None = None,
        *,
        identity_token: str | None = None,
        fingerprint: str | None = None,
        label: str = "",
        heartbeat: bool = True,
        on_lost: Callable[[Lease, KeyturnError], object] | None = None,
        on_renewed: Callable[[Lease], object] | None = None,
        heartbeat_interval: float | None = None,
    ) -> Lease:
        """Take a seat (or get this device's seat back) and return its verified lease.

        With `heartbeat`, a daemon thread renews the lease at its renew time (or
        every `heartbeat_interval` seconds) and calls `on_lost` once if the seat
        is lost; `on_renewed` after every renewal. Both run on that thread.
        """
        request = activate_request(
            self.product_id,
            fingerprint or default_fingerprint(self.product_id),
            label,
            license_key,
            identity_token,
        )
        response = self._call(self._stub.ActivateSeat, request)
        claims = self.verify_lease(response.lease.token)
        lease = Lease(
            lease_grant(response.lease, claims, response.entitlement, response.activation_id),
            self,
        )
        lease.activation = request
        if heartbeat:
            self._start_heartbeat(lease, on_lost, on_renewed, heartbeat_interval)
        return lease

    def renew(self, lease: Lease) -> Lease:
        """Exchange the lease for a newer one; the same object is updated and returned."""
        return self._renew(lease, self.retry)

    def release(self, lease: Lease | str) -> None:
        """Stop the lease's heartbeat and give its seat back (a lease or a stored token)."""
        if isinstance(lease, str):
            self._release_token(lease)
            return
        if lease.heartbeat is not None:
            lease.heartbeat.stop()
            self._forget(lease.heartbeat)
        with lease.lock:
            if lease.released:
                return
            self._release_token(lease.token)
            lease.released = True

    def check(
        self, license_key: str | None = None, *, identity_token: str | None = None
    ) -> EntitlementInfo:
        """The entitlement behind a credential, without taking a seat."""
        request = check_request(self.product_id, license_key, identity_token)
        return entitlement_info(self._call(self._stub.CheckLicense, request).entitlement)

    def redeem_invitation(self, invitation_code: str) -> str:
        """Exchange an emailed invitation code for an identity token (for activate)."""
        request = licensing_pb2.RedeemInvitationRequest(invitation_code=invitation_code)
        return self._call(self._stub.RedeemInvitation, request).identity_token

    # Keys and offline verification

    def signing_keys(self) -> dict[str, Any]:
        """The JWKS from the server (also refreshes the cache verify_lease uses)."""
        response = self._call(self._stub.GetSigningKeys, licensing_pb2.GetSigningKeysRequest())
        jwks: dict[str, Any] = json.loads(response.jwks_json)
        self._verifier.load(jwks)
        return jwks

    def verify_lease(self, token: str) -> dict[str, Any]:
        """The claims of a lease, checked offline; raises LeaseVerificationError.

        Fetches the keys when none are cached, and once more when the token
        names a key the cache lacks (the server may have rotated keys).
        """
        kid = self._verifier.kid_of(token)
        if self._verifier.needs_keys(kid):
            self.signing_keys()
        return self._verifier.verify(token, self.clock())

    # Lifecycle

    def close(self) -> None:
        """Stop every heartbeat, then close the channel if this client opened it."""
        with self._lock:
            heartbeats = list(self._heartbeats)
            self._heartbeats.clear()
        for beat in heartbeats:
            beat.stop()
        if self._own_channel:
            self._channel.close()

    def __enter__(self) -> LicensingClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # Internals

    def _call(self, method: grpc.UnaryUnaryMultiCallable[Req, Resp], request: Req) -> Resp:
        return invoke(method, request, retry=self.retry, timeout=self.timeout)

    def _renew(self, lease: Lease, retry: RetryPolicy) -> Lease:
        with lease.lock:
            request = licensing_pb2.RenewLeaseRequest(lease_token=lease.token)
            response = invoke(self._stub.RenewLease, request, retry=retry, timeout=self.timeout)
            claims = self.verify_lease(response.lease.token)
            lease._apply(lease_grant(response.lease, claims, response.entitlement))
        return lease

    def _beat(self, lease: Lease, retrying: bool) -> Lease:
        """One heartbeat renewal. `retrying`: an earlier attempt went unanswered and may
        have renewed unseen; a LEASE_SUPERSEDED then takes the device's seat again."""
        try:
            return self._renew(lease, NO_RETRY)
        except LeaseSupersededError:
            if not retrying or lease.activation is None:
                raise
        log.info(
            "renewal of %s may have been answered unseen; activating again", lease.activation_id
        )
        with lease.lock:
            response = invoke(
                self._stub.ActivateSeat, lease.activation, retry=NO_RETRY, timeout=self.timeout
            )
            claims = self.verify_lease(response.lease.token)
            lease._apply(
                lease_grant(response.lease, claims, response.entitlement, response.activation_id)
            )
        return lease

    def _release_token(self, token: str) -> None:
        self._call(self._stub.ReleaseSeat, licensing_pb2.ReleaseSeatRequest(lease_token=token))

    def _start_heartbeat(
        self,
        lease: Lease,
        on_lost: Callable[[Lease, KeyturnError], object] | None,
        on_renewed: Callable[[Lease], object] | None,
        interval: float | None,
    ) -> None:
        def lost(error: KeyturnError) -> None:
            self._forget(beat)
            if on_lost is not None:
                on_lost(lease, error)

        beat = Heartbeat(
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
        with self._lock:
            self._heartbeats.add(beat)
        beat.start()

    def _forget(self, beat: Heartbeat) -> None:
        with self._lock:
            self._heartbeats.discard(beat)
