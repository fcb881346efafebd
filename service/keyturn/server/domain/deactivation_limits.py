"""How many seats may be taken back per period: a SKU's limit on deactivations.

An administrator's DeactivateSeat (and, when the SKU says so, a device's own
ReleaseSeat) is allowed while fewer than `count` of them happened within the
`period` before now. The stores count the newest of those events under the
entitlement's row lock and ask `retry_time`; nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from .durations import fixed_length, iso_of_length, parse_iso_duration
from .errors import FieldViolation, deactivation_limit_reached
from .events import EventType

MAX_COUNT = 10_000
MIN_PERIOD = timedelta(hours=1)
MAX_PERIOD = timedelta(days=3660)
MAX_PERIOD_TEXT = 32


@dataclass(frozen=True)
class DeactivationLimit:
    """At most `count` per `period` (ISO 8601, a fixed length: `P30D`, `PT12H`)."""

    count: int
    period: str
    count_releases: bool = False

    @property
    def length(self) -> timedelta:
        return fixed_length(parse_iso_duration(self.period))

    @classmethod
    def of_seconds(cls, count: int, seconds: int, count_releases: bool) -> DeactivationLimit:
        """The limit as an entitlement keeps it (its period in seconds)."""
        return cls(count, iso_of_length(timedelta(seconds=seconds)), count_releases)

    @property
    def counted_types(self) -> tuple[EventType, ...]:
        """The events that count against the limit."""
        if self.count_releases:
            return (EventType.SEAT_DEACTIVATED, EventType.SEAT_RELEASED)
        return (EventType.SEAT_DEACTIVATED,)

    def window_start(self, now: datetime) -> datetime:
        """Events after this instant count."""
        return now - self.length


def check_deactivation_limit(path: str, limit: DeactivationLimit) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    if not 1 <= limit.count <= MAX_COUNT:
        violations.append(
            FieldViolation(f"{path}.count", f"must be between 1 and {MAX_COUNT}, got {limit.count}")
        )
    if len(limit.period) > MAX_PERIOD_TEXT:  # not echoed back
        return [*violations, FieldViolation(f"{path}.period", "must be a duration such as P30D")]
    try:
        length = limit.length
    except ValueError as exc:
        return [*violations, FieldViolation(f"{path}.period", str(exc))]
    if not MIN_PERIOD <= length <= MAX_PERIOD:
        violations.append(FieldViolation(f"{path}.period", "must be between 1 hour and 3660 days"))
    return violations


def retry_time(
    limit: DeactivationLimit, newest: Sequence[datetime], now: datetime
) -> datetime | None:
    """None when one more is allowed at `now`; else when it will be.

    newest: the times of the counted events within the period, newest first, at most
    `limit.count` of them (more would not change the answer). With `count` of them the
    next is allowed once the oldest of those leaves the period.
    """
    start = limit.window_start(now)
    within = sorted((t for t in newest if t > start), reverse=True)[: limit.count]
    if len(within) < limit.count:
        return None
    return within[-1] + limit.length


def releases_limited(limit: DeactivationLimit | None) -> bool:
    """Whether devices' own releases count (only then does a release count events)."""
    return limit is not None and limit.count_releases


def ensure_allowed(
    limit: DeactivationLimit | None, newest: Sequence[datetime], now: datetime
) -> None:
    """Raise DEACTIVATION_LIMIT_REACHED unless one more is allowed at `now`."""
    if limit is None:
        return
    retry = retry_time(limit, newest, now)
    if retry is not None:
        raise deactivation_limit_reached(limit.count, limit.period, retry)
