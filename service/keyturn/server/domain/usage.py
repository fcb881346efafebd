"""Usage reports: seats in use over time, per hour or day (UTC), from the seat changes.

What true-up billing and upsell conversations need: for each bucket the peak
seats in use, the time-weighted average and the seat limit. The input is the
event log replayed (seat taken, seat ended, limit changed), so it is exact
whatever the concurrency: every seat change is one event written in the seat
transaction, and a lapse, recorded late, counts from its effective time (the
seat rule's `seat_freed_time`).

Definitions, for a bucket [b, b + length), cut at `now` (a bucket not over yet is
reported for its elapsed part; one not begun is not reported):
- seats in use at an instant t: every change at or before t applied. Changes at one
  instant count together (a seat freed at t may be taken at t; the seat rule frees
  it at that instant), so a bucket's edge belongs to the bucket it starts;
- peak: the most seats in use at any instant of the bucket;
- average: the integral of seats in use over the bucket, over its length;
- seat limit: the highest limit in force at any instant of the bucket. A peak over
  it is a real overage (seats held beyond the limit of their time), never a limit
  lowered after the peak within the same bucket.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import assert_never

from .errors import FieldViolation
from .events import EventType

MAX_BUCKETS = 1000  # per report: 41 days by the hour, 2.7 years by the day

# The events that take a seat and those that end one (an operator ends a device's seat
# with SEAT_DEACTIVATED).
SEAT_TAKEN = frozenset({EventType.SEAT_ACTIVATED.value})
SEAT_ENDED = frozenset(
    {EventType.SEAT_RELEASED.value, EventType.LEASE_LAPSED.value, EventType.SEAT_DEACTIVATED.value}
)


class Granularity(StrEnum):
    HOUR = "hour"
    DAY = "day"


def bucket_length(granularity: Granularity) -> timedelta:
    match granularity:
        case Granularity.HOUR:
            return timedelta(hours=1)
        case Granularity.DAY:
            return timedelta(days=1)
        case _:
            assert_never(granularity)


@dataclass(frozen=True)
class SeatChange:
    """An activation took its seat (`takes`) or its seat ended, at `time`."""

    time: datetime
    activation_id: str
    takes: bool


@dataclass(frozen=True)
class LimitChange:
    """The seat limit in force from `time` on."""

    time: datetime
    seat_limit: int


@dataclass(frozen=True)
class UsageBucket:
    start_time: datetime
    peak_seats_in_use: int
    average_seats_in_use: float
    seat_limit: int


def _is_aligned(instant: datetime, length: timedelta) -> bool:
    since = instant.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return since % length == timedelta(0)


def report_violations(
    start: datetime | None,
    end: datetime | None,
    granularity: Granularity | None,
    *,
    max_buckets: int = MAX_BUCKETS,
) -> list[FieldViolation]:
    """What is wrong with a report's range: both ends given, on whole buckets (UTC), start
    before end, at most `max_buckets` buckets."""
    wrong: list[FieldViolation] = []
    if granularity is None:
        wrong.append(FieldViolation("granularity", "granularity must be HOUR or DAY"))
    for field, value in (("start_time", start), ("end_time", end)):
        if value is None:
            wrong.append(FieldViolation(field, f"{field} is required"))
        elif granularity is not None and not _is_aligned(value, bucket_length(granularity)):
            wrong.append(FieldViolation(field, f"{field} must start a whole {granularity} (UTC)"))
    if wrong or start is None or end is None or granularity is None:
        return wrong
    if end <= start:
        wrong.append(FieldViolation("end_time", "end_time must be after start_time"))
    elif (end - start) / bucket_length(granularity) > max_buckets:
        wrong.append(
            FieldViolation(
                "end_time", f"at most {max_buckets} buckets of one {granularity} per report"
            )
        )
    return wrong


def seat_steps(changes: Iterable[SeatChange]) -> list[tuple[datetime, int]]:
    """The changes as (time, +1 or -1), ordered by time: only those that change whether
    their activation holds a seat (an end after an end, as a release after a recorded
    lapse, or a taking while held, changes nothing). Changes of one instant are applied
    in the order given, so give them in log order."""
    holding: set[str] = set()
    steps: list[tuple[datetime, int]] = []
    for change in sorted(changes, key=lambda c: c.time):
        if change.takes and change.activation_id not in holding:
            holding.add(change.activation_id)
            steps.append((change.time, 1))
        elif not change.takes and change.activation_id in holding:
            holding.discard(change.activation_id)
            steps.append((change.time, -1))
    return steps


def _net_by_instant(steps: Sequence[tuple[datetime, int]]) -> list[tuple[datetime, int]]:
    net: dict[datetime, int] = {}
    for time, step in steps:
        net[time] = net.get(time, 0) + step
    return sorted(net.items())


def usage_buckets(
    changes: Iterable[SeatChange],
    limits: Iterable[LimitChange],
    *,
    start: datetime,
    end: datetime,
    granularity: Granularity,
    now: datetime,
) -> list[UsageBucket]:
    """The buckets of [start, end) (whole buckets, see `report_violations`), cut at `now`."""
    length = bucket_length(granularity)
    seats = _net_by_instant(seat_steps(changes))
    # Of several limit changes at one instant, the last given is the one in force.
    limit_changes = [
        LimitChange(t, n) for t, n in sorted({c.time: c.seat_limit for c in limits}.items())
    ]
    buckets: list[UsageBucket] = []
    level, s = 0, 0  # seats in use after seats[:s]
    limit, li = 0, 0  # the limit in force after limit_changes[:li]
    bucket = start
    while bucket < end and bucket < now:
        until = min(bucket + length, now)
        while s < len(seats) and seats[s][0] <= bucket:
            level += seats[s][1]
            s += 1
        while li < len(limit_changes) and limit_changes[li].time <= bucket:
            limit = limit_changes[li].seat_limit
            li += 1
        peak, highest_limit = level, limit
        area = timedelta(0)  # seat-time so far in the bucket
        since = bucket
        while s < len(seats) and seats[s][0] < until:
            time, step = seats[s]
            area += (time - since) * level
            level, since = level + step, time
            peak = max(peak, level)
            s += 1
        area += (until - since) * level
        while li < len(limit_changes) and limit_changes[li].time < until:
            limit = limit_changes[li].seat_limit
            highest_limit = max(highest_limit, limit)
            li += 1
        average = area / (until - bucket)
        buckets.append(UsageBucket(bucket, peak, average, highest_limit))
        bucket += length
    return buckets
