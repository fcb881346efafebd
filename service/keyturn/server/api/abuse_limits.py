"""Rate limits against abuse, applied by the call guard before a call does anything.

Per peer and per credential for the licensing calls an app makes with a credential
(domain.abuse_limits), per API token for the admin services: each counted in this
process with the `limits` library (sliding window counters in memory), so N workers
on R replicas let a caller through up to N x R times a limit at most, and less when
its connections land on fewer processes (a gRPC channel stays on one). The budget of
wrong credentials per peer is counted in the database instead (app.failed_credentials):
it holds across every process, exactly. A refusal is RATE_LIMITED with the delay after
which the limit lets the caller through again.

A peer is its address, or, behind a proxy (`peer_header`), the last address of that
header, which the proxy appends: without the setting every caller behind a proxy
would share the proxy's budget.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from keyturn.server.app.context import AppContext
from keyturn.server.app.failed_credentials import FailedCredentials
from keyturn.server.config import LIMIT_OFF, Settings
from keyturn.server.domain.abuse_limits import (
    FAILED_CREDENTIAL_REASONS,
    carries_credential,
    credential_of,
    forwarded_peer,
    is_limited_per_peer,
    peer_name,
)
from keyturn.server.domain.errors import DomainError, rate_limited

SWEEP_SECONDS = 5.0  # how often counters of past windows are dropped from memory


class SweptMemoryStorage(MemoryStorage):
    """The `limits` library's memory storage, swept every SWEEP_SECONDS instead of every
    10 ms. Its reads drop an expired counter themselves, so the sweep only frees memory;
    but it walks every counter, and at 10 ms a process with 100,000 counters (a lease
    token each, for RenewLease) spent a core on it. The library names the method that
    schedules the sweep privately: overridden under its mangled name."""

    def __init__(self) -> None:
        super().__init__()
        self.timer.cancel()  # the library's first sweep, 10 ms from now
        self._MemoryStorage__schedule_expiry()

    def _MemoryStorage__schedule_expiry(self) -> None:
        if not self.timer.is_alive() or self.timer.interval != SWEEP_SECONDS:
            sweep = getattr(self, "_MemoryStorage__expire_events")  # noqa: B009 (mangled)
            self.timer = threading.Timer(SWEEP_SECONDS, sweep)
            self.timer.daemon = True
            self.timer.start()


def rules_of(text: str) -> tuple[RateLimitItem, ...]:
    """`100/second;3000/minute` as limits items; "" or "off": none."""
    return () if text.strip().lower() in LIMIT_OFF else tuple(parse_many(text))


def _digest(credential: str) -> str:
    """Credentials are counted by digest, never kept in memory as they are."""
    return hashlib.blake2b(credential.encode(), digest_size=16).hexdigest()


class AbuseLimits:
    """The limits of one server process; with no rules and no `failed`, nothing is limited."""

    def __init__(
        self,
        *,
        per_peer: Sequence[RateLimitItem] = (),
        per_credential: Sequence[RateLimitItem] = (),
        per_token: Sequence[RateLimitItem] = (),
        failed: FailedCredentials | None = None,
        peer_header: str = "",
    ) -> None:
        self._per_peer = tuple(per_peer)
        self._per_credential = tuple(per_credential)
        self._per_token = tuple(per_token)
        self._failed = failed
        self.peer_header = peer_header.lower()
        self._limiter = SlidingWindowCounterRateLimiter(SweptMemoryStorage())

    def peer_of(self, peer: str, forwarded: str | None) -> str:
        """Who the caller is for the limits: see the module's docstring."""
        if self.peer_header and forwarded:
            return forwarded_peer(forwarded) or peer_name(peer)
        return peer_name(peer)

    def admit(self, method: str, peer: str, request: Any) -> None:
        """Raises RATE_LIMITED if a call of `method` from `peer` with `request` is over a
        limit; else counts it."""
        if self._failed is not None and carries_credential(method):
            refusal = self._failed.refusal(peer)
            if refusal is not None:
                raise refusal
        if not is_limited_per_peer(method):
            return
        self._hit("peer", self._per_peer, "peer", peer)
        credential = credential_of(method, request)
        if credential:
            self._hit("credential", self._per_credential, "credential", _digest(credential))

    def admit_token(self, token_id: str) -> None:
        """Raises RATE_LIMITED if the API token `token_id` is over its limit; else counts it."""
        self._hit("token", self._per_token, "token", token_id)

    async def refused(self, peer: str, error: DomainError) -> DomainError:
        """The answer to a call from `peer` refused with `error`: a wrong credential is
        counted, and past the peer's budget the answer is RATE_LIMITED instead."""
        if self._failed is not None and error.reason in FAILED_CREDENTIAL_REASONS:
            return await self._failed.record(peer) or error
        return error

    def _hit(self, limit: str, rules: Sequence[RateLimitItem], *key: str) -> None:
        for rule in rules:
            if not self._limiter.hit(rule, *key):
                reset = self._limiter.get_window_stats(rule, *key).reset_time
                raise rate_limited(limit, max(1, math.ceil(reset - time.time())))


def abuse_limits_of(settings: Settings, ctx: AppContext) -> AbuseLimits:
    """The limits the settings ask for (see README, *Abuse limits*)."""
    failed = rules_of(settings.failed_credentials_limit)
    return AbuseLimits(
        per_peer=rules_of(settings.rate_limit_per_peer),
        per_credential=rules_of(settings.rate_limit_per_credential),
        per_token=rules_of(settings.rate_limit_per_token),
        failed=(
            FailedCredentials(
                ctx.store, ctx.clock, failed[0].amount, timedelta(seconds=failed[0].get_expiry())
            )
            if failed
            else None
        ),
        peer_header=settings.rate_limit_peer_header,
    )
