"""When to retry a call and how long to wait first: shared by the sync and asyncio clients.

Only UNAVAILABLE and a transaction conflict (ABORTED / TRANSACTION_CONFLICT:
nothing was written) are retried. Every other code is an answer (a seat refused, a
bad key, an order conflict) that asking again cannot change. The heartbeat is the
exception: while its lease runs it retries all but a typed answer about the seat. Every Keyturn call is
safe to repeat: ActivateSeat with the same fingerprint reuses its seat and
FulfillOrder with the same order id replays the stored result.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

import grpc

from .errors import KeyturnError, TransactionConflictError


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter (as gRPC's own retry design does).

    The wait before retry `n` (from 0) is uniform in [0, min(maximum,
    initial * multiplier**n)]: jitter spreads the retries of many clients
    cut off by the same outage.
    """

    attempts: int = 5
    initial: float = 0.1
    maximum: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.initial < 0 or self.maximum < self.initial:
            raise ValueError("need 0 <= initial <= maximum")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")

    def ceiling(self, retry: int) -> float:
        """The longest wait before retry `retry` (counted from 0)."""
        if retry < 0:
            raise ValueError("retry must be >= 0")
        # Compare exponents first so a large retry count cannot overflow the float.
        grown = self.initial
        for _ in range(retry):
            grown *= self.multiplier
            if grown >= self.maximum:
                return self.maximum
        return min(grown, self.maximum)

    def backoff(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """The wait before retry `retry`: a jittered fraction of its ceiling."""
        return rand() * self.ceiling(retry)

    def schedule(self, rand: Callable[[], float] = random.random) -> list[float]:
        """The waits between the attempts of one call (`attempts - 1` of them)."""
        return [self.backoff(n, rand) for n in range(self.attempts - 1)]

    def retries(self, error: KeyturnError, failures: int) -> bool:
        """Whether the call that has now failed `failures` times (from 1) is tried again."""
        return is_retryable(error) and failures < self.attempts


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(attempts=1, initial=0.0, maximum=0.0)
HEARTBEAT_MAX_BACKOFF = 30.0  # seconds


def is_retryable(error: KeyturnError) -> bool:
    """UNAVAILABLE (the server or its database could not answer) or a transaction conflict
    (rolled back): asking again may succeed."""
    return error.code is grpc.StatusCode.UNAVAILABLE or isinstance(error, TransactionConflictError)


def heartbeat_retries(error: KeyturnError) -> bool:
    """Whether a failed renewal is worth another try while the lease still runs.

    Only a typed answer about the seat (superseded, refused, expired, cancelled, an
    invalid lease...) ends it. A deadline exceeded during a database stall, a server
    fault or any error without a known reason says nothing about the seat, and the
    lease in hand stays good until it expires.
    """
    return is_retryable(error) or type(error) is KeyturnError


def renew_delay(renew_time: datetime, issued: datetime, interval: float | None) -> float:
    """Seconds from receiving a lease to renewing it: the server's renew time (relative to
    the lease's issue time, so client clock skew does not matter), or a fixed interval."""
    if interval is not None:
        return max(0.0, interval)
    return max(0.0, (renew_time - issued).total_seconds())


def heartbeat_retry_delay(
    policy: RetryPolicy,
    failures: int,
    expire_time: datetime,
    now: datetime,
    rand: Callable[[], float] = random.random,
) -> float | None:
    """Seconds before a heartbeat retries a renewal that could not reach the server.

    None once the lease has expired: the seat may be gone, so the heartbeat
    stops and reports the loss. Until then it keeps trying with the policy's
    backoff, allowed to grow to HEARTBEAT_MAX_BACKOFF (a long outage should
    not have every device knocking every second), and never past the expiry.
    """
    left = (expire_time - now).total_seconds()
    if left <= 0:
        return None
    patient = replace(policy, maximum=max(policy.maximum, HEARTBEAT_MAX_BACKOFF))
    return min(patient.backoff(max(0, failures - 1), rand), left)
