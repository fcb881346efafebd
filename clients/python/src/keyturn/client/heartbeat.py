"""Keeps one lease renewed: a daemon thread (sync client) or an asyncio task.

Both loops follow one HeartbeatSchedule: renew at the server's renew time
(or every `interval` seconds when given); when the server cannot be reached,
times out or fails without a typed answer, keep retrying with backoff while the
lease is still good; on an answer about the seat (superseded, refused, expired,
cancelled), or once the lease expired unrenewed, stop and report the loss once. `wake()`
renews now, e.g. after the machine resumes from sleep.

A renewal that failed without an answer may still have renewed (committed, then the
answer was cut off by a restart): its new token never arrived, and the next renewal
with the old one is LEASE_SUPERSEDED. The renew callable is told when an earlier
attempt went unanswered (`retrying`); the clients then take the device's own seat
again with its activation request (the same fingerprint gets the same seat back)
rather than give the lease up.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from .errors import KeyturnError
from .lease import LeaseBase
from .retry import RetryPolicy, heartbeat_retries, heartbeat_retry_delay, renew_delay

log = logging.getLogger("keyturn.client")

Clock = Callable[[], datetime]
MAX_NAP = 15.0  # seconds; the longest wait between looks at the clock


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_keyturn_error(exc: Exception) -> KeyturnError:
    """Any failure as a KeyturnError, so the loss callback has one type to handle."""
    if isinstance(exc, KeyturnError):
        return exc
    error = KeyturnError(f"renewal failed: {exc!r}")
    error.__cause__ = exc
    return error


def issued_at(lease: LeaseBase) -> datetime:
    """The lease's `iat`; without one, assume the renew time is half way (as the server sets it)."""
    iat = lease.claims.get("iat")
    if isinstance(iat, int | float) and not isinstance(iat, bool):
        return datetime.fromtimestamp(iat, UTC)
    return lease.renew_time - (lease.expire_time - lease.renew_time)


class HeartbeatSchedule:
    """When the loop is next due, and until when the lease is good.

    Both are laid on the client's clock from the lease's own timeline (renew
    and expiry relative to `iat`), so a client clock that is off does not make
    the heartbeat renew in a tight loop or give up early.
    """

    def __init__(
        self, lease: LeaseBase, policy: RetryPolicy, clock: Clock, interval: float | None
    ) -> None:
        self.lease = lease
        self.policy = policy
        self.clock = clock
        self.interval = interval
        self.failures = 0
        self.due = self.expire_at = clock()
        self.on_new_lease()

    def on_new_lease(self) -> None:
        """Schedule the next renewal of a lease just received."""
        now, issued = self.clock(), issued_at(self.lease)
        self.failures = 0
        self.expire_at = now + (self.lease.expire_time - issued)
        self.due = now + timedelta(
            seconds=renew_delay(self.lease.renew_time, issued, self.interval)
        )

    def seconds_left(self) -> float:
        return (self.due - self.clock()).total_seconds()

    def after_failure(self, error: KeyturnError) -> bool:
        """Schedule a retry and return True, or return False when the lease is lost."""
        if not heartbeat_retries(error):
            return False
        self.failures += 1
        delay = heartbeat_retry_delay(self.policy, self.failures, self.expire_at, self.clock())
        if delay is None:
            return False
        self.due = self.clock() + timedelta(seconds=delay)
        return True


class Heartbeat:
    """Renews a lease on a daemon thread until stopped or the seat is lost."""

    def __init__(
        self,
        lease: LeaseBase,
        renew: Callable[[bool], object],
        *,
        policy: RetryPolicy,
        clock: Clock,
        interval: float | None = None,
        on_renewed: Callable[[], object] | None = None,
        on_lost: Callable[[KeyturnError], object] | None = None,
    ) -> None:
        self._plan = HeartbeatSchedule(lease, policy, clock, interval)
        self._lease = lease
        self._renew = renew
        self._on_renewed = on_renewed
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"keyturn-heartbeat-{lease.activation_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wake(self) -> None:
        """Renew now instead of at the next scheduled time."""
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop and wait for an in-flight renewal to finish (not when called by the loop itself)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _nap_until_due(self) -> bool:
        """Sleep until due or woken; True when stopped. Naps are short so that a
        wall-clock jump (a resume from suspend) is noticed soon."""
        while not self._stop.is_set():
            left = self._plan.seconds_left()
            if left <= 0:
                return False
            if self._wake.wait(min(left, MAX_NAP)):
                self._wake.clear()
                return self._stop.is_set()
        return True

    def _run(self) -> None:
        while not self._nap_until_due():
            try:
                self._renew(self._plan.failures > 0)
            except Exception as exc:
                error = as_keyturn_error(exc)
                if self._stop.is_set():
                    return
                if not self._plan.after_failure(error):
                    self._lose(error)
                    return
                continue
            self._plan.on_new_lease()
            if self._on_renewed is not None and not self._stop.is_set():
                try:
                    self._on_renewed()
                except Exception:
                    log.exception("on_renewed callback failed")

    def _lose(self, error: KeyturnError) -> None:
        self._lease.lost = error
        log.warning("lease of activation %s lost: %s", self._lease.activation_id, error)
        if self._on_lost is None:
            return
        try:
            self._on_lost(error)
        except Exception:
            log.exception("on_lost callback failed")


async def _call(callback: Callable[..., object], *args: object) -> None:
    """Call a sync or async callback."""
    result = callback(*args)
    if inspect.isawaitable(result):
        await result


class AsyncHeartbeat:
    """Renews a lease in an asyncio task until stopped or the seat is lost."""

    def __init__(
        self,
        lease: LeaseBase,
        renew: Callable[[bool], Awaitable[object]],
        *,
        policy: RetryPolicy,
        clock: Clock,
        interval: float | None = None,
        on_renewed: Callable[[], object] | None = None,
        on_lost: Callable[[KeyturnError], object] | None = None,
    ) -> None:
        self._plan = HeartbeatSchedule(lease, policy, clock, interval)
        self._lease = lease
        self._renew = renew
        self._on_renewed = on_renewed
        self._on_lost = on_lost
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"keyturn-heartbeat-{self._lease.activation_id}"
        )

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def wake(self) -> None:
        """Renew now instead of at the next scheduled time."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop and wait for an in-flight renewal to finish (not when called by the loop itself)."""
        self._stop.set()
        self._wake.set()
        task = self._task
        if task is not None and task is not asyncio.current_task() and not task.done():
            await asyncio.shield(task)

    async def _nap_until_due(self) -> bool:
        """Sleep until due or woken; True when stopped (see Heartbeat._nap_until_due)."""
        while not self._stop.is_set():
            left = self._plan.seconds_left()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(left, MAX_NAP))
            if self._wake.is_set():
                self._wake.clear()
                return self._stop.is_set()
        return True

    async def _run(self) -> None:
        while not await self._nap_until_due():
            try:
                await self._renew(self._plan.failures > 0)
            except Exception as exc:
                error = as_keyturn_error(exc)
                if self._stop.is_set():
                    return
                if not self._plan.after_failure(error):
                    await self._lose(error)
                    return
                continue
            self._plan.on_new_lease()
            if self._on_renewed is not None and not self._stop.is_set():
                try:
                    await _call(self._on_renewed)
                except Exception:
                    log.exception("on_renewed callback failed")

    async def _lose(self, error: KeyturnError) -> None:
        self._lease.lost = error
        log.warning("lease of activation %s lost: %s", self._lease.activation_id, error)
        if self._on_lost is None:
            return
        try:
            await _call(self._on_lost, error)
        except Exception:
            log.exception("on_lost callback failed")
