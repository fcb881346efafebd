"""The usage report's arithmetic (domain/usage.py): peaks, time-weighted averages, limits."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from keyturn.server.app.usage import seat_changes
from keyturn.server.domain.usage import (
    MAX_BUCKETS,
    Granularity,
    LimitChange,
    SeatChange,
    UsageBucket,
    report_violations,
    seat_steps,
    usage_buckets,
)
from keyturn.server.store.event_repository import StoredEvent

DAY = datetime(2026, 3, 1, tzinfo=UTC)
H = timedelta(hours=1)
M = timedelta(minutes=1)
FAR = DAY + timedelta(days=365)


def take(at: datetime, activation: str) -> SeatChange:
    return SeatChange(at, activation, takes=True)


def end(at: datetime, activation: str) -> SeatChange:
    return SeatChange(at, activation, takes=False)


def hours(
    changes: list[SeatChange],
    limits: list[LimitChange] | None = None,
    count: int = 3,
    now: datetime = FAR,
) -> list[UsageBucket]:
    return usage_buckets(
        changes,
        [LimitChange(DAY - timedelta(days=30), 5)] if limits is None else limits,
        start=DAY,
        end=DAY + count * H,
        granularity=Granularity.HOUR,
        now=now,
    )


def test_no_change_gives_empty_buckets_at_the_limit_in_force() -> None:
    assert hours([]) == [UsageBucket(DAY + i * H, 0, 0.0, 5) for i in range(3)]


def test_a_seat_held_from_before_the_start_counts_from_the_first_bucket() -> None:
    buckets = hours([take(DAY - timedelta(days=2), "a"), end(DAY + 90 * M, "a")])
    assert [(b.peak_seats_in_use, b.average_seats_in_use) for b in buckets] == [
        (1, 1.0),
        (1, 0.5),
        (0, 0.0),
    ]


def test_a_change_on_a_bucket_edge_belongs_to_the_bucket_it_starts() -> None:
    buckets = hours([take(DAY + H, "a"), end(DAY + 2 * H, "a")])
    assert [(b.peak_seats_in_use, b.average_seats_in_use) for b in buckets] == [
        (0, 0.0),
        (1, 1.0),
        (0, 0.0),
    ]


def test_changes_at_the_start_and_at_the_end_of_the_range() -> None:
    buckets = hours([take(DAY, "a"), take(DAY + 3 * H, "b")], count=3)
    assert [b.peak_seats_in_use for b in buckets] == [1, 1, 1]
    assert buckets[-1].average_seats_in_use == 1.0  # b, at the end, is outside


def test_a_seat_freed_and_taken_at_one_instant_is_one_seat() -> None:
    at = DAY + 30 * M
    buckets = hours([take(DAY, "a"), take(at, "b"), end(at, "a")], count=1)
    assert buckets[0].peak_seats_in_use == 1
    assert buckets[0].average_seats_in_use == 1.0


def test_a_seat_held_for_no_time_still_is_a_peak_when_in_order() -> None:
    """Taken and ended in one instant: the instant's net change is what counts."""
    at = DAY + 30 * M
    buckets = hours([take(at, "a"), end(at, "a")], count=1)
    assert buckets[0].peak_seats_in_use == 0


def test_the_average_is_weighted_by_time() -> None:
    changes = [take(DAY + 15 * M, "a"), take(DAY + 30 * M, "b"), end(DAY + 45 * M, "a")]
    bucket = hours(changes, count=1)[0]
    assert bucket.peak_seats_in_use == 2
    # 15 min of 0, 15 of 1, 15 of 2, 15 of 1: 60 seat-minutes in 60 minutes.
    assert bucket.average_seats_in_use == pytest.approx(1.0, abs=1e-12)


def test_an_end_after_an_end_and_a_taking_while_held_change_nothing() -> None:
    """A release after a recorded lapse, a repeated activation event: each is one step."""
    steps = seat_steps(
        [
            take(DAY, "a"),
            take(DAY + M, "a"),
            end(DAY + 2 * M, "a"),
            end(DAY + 3 * M, "a"),
            end(DAY + 4 * M, "never-held"),
        ]
    )
    assert steps == [(DAY, 1), (DAY + 2 * M, -1)]


def test_a_lapse_recorded_late_is_placed_at_its_effective_time() -> None:
    """Changes arrive in log order; a lapse's time is when its seat was freed."""
    buckets = hours([take(DAY, "a"), take(DAY + 2 * H, "b"), end(DAY + 30 * M, "a")], count=3)
    assert [b.average_seats_in_use for b in buckets] == [0.5, 0.0, 1.0]


def test_the_limit_is_the_highest_in_force_during_the_bucket() -> None:
    limits = [
        LimitChange(DAY - H, 2),
        LimitChange(DAY + 20 * M, 10),
        LimitChange(DAY + 40 * M, 3),
        LimitChange(DAY + 2 * H, 4),  # on an edge: the next bucket's from its start
    ]
    assert [b.seat_limit for b in hours([], limits)] == [10, 3, 4]


def test_the_limit_is_zero_before_the_entitlement_existed() -> None:
    limits = [LimitChange(DAY + 90 * M, 7)]
    assert [b.seat_limit for b in hours([], limits)] == [0, 7, 7]


def test_the_report_stops_at_now() -> None:
    now = DAY + 90 * M
    buckets = hours([take(DAY + 30 * M, "a"), take(DAY + 80 * M, "b")], now=now)
    assert [b.start_time for b in buckets] == [DAY, DAY + H]  # the third has not begun
    assert buckets[0].average_seats_in_use == 0.5
    # Of the running bucket, its elapsed half: 20 minutes of 1, then 10 of 2.
    assert buckets[1].average_seats_in_use == pytest.approx((20 * 1 + 10 * 2) / 30)
    assert buckets[1].peak_seats_in_use == 2


def test_days_are_utc_days() -> None:
    buckets = usage_buckets(
        [take(DAY + 12 * H, "a")],
        [LimitChange(DAY, 1)],
        start=DAY,
        end=DAY + timedelta(days=2),
        granularity=Granularity.DAY,
        now=FAR,
    )
    assert [(b.start_time, b.peak_seats_in_use, b.average_seats_in_use) for b in buckets] == [
        (DAY, 1, 0.5),
        (DAY + timedelta(days=1), 1, 1.0),
    ]


def _reference(
    script: list[SeatChange], limits: list[LimitChange], minutes: int
) -> list[tuple[int, float, int]]:
    """Minute by minute (every change of the script is on a whole minute)."""
    out = []
    for hour in range(minutes // 60):
        levels, limits_seen = [], []
        for minute in range(hour * 60, hour * 60 + 60):
            at = DAY + minute * M
            held = set()
            for change in sorted(script, key=lambda c: c.time):
                if change.time <= at:
                    (held.add if change.takes else held.discard)(change.activation_id)
            levels.append(len(held))
            in_force = [c.seat_limit for c in sorted(limits, key=lambda c: c.time) if c.time <= at]
            limits_seen.append(in_force[-1] if in_force else 0)
        out.append((max(levels), sum(levels) / 60, max(limits_seen)))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_random_scripts_agree_with_a_minute_by_minute_count(seed: int) -> None:
    rng = random.Random(seed)
    script: list[SeatChange] = []
    for device in range(rng.randint(1, 8)):
        at = rng.randint(-30, 200)
        while at < 240:
            script.append(take(DAY + at * M, f"d{device}"))
            at += rng.randint(0, 90)
            script.append(end(DAY + at * M, f"d{device}"))
            at += rng.randint(0, 60)
    limits = [LimitChange(DAY + rng.randint(-60, 240) * M, rng.randint(1, 9)) for _ in range(4)]
    got = hours(script, limits, count=4)
    expected = _reference(script, limits, 240)
    assert [(b.peak_seats_in_use, b.seat_limit) for b in got] == [
        (p, lim) for p, _, lim in expected
    ]
    for bucket, (_, average, _) in zip(got, expected, strict=True):
        assert bucket.average_seats_in_use == pytest.approx(average, abs=1e-12)


def test_a_range_must_be_whole_buckets_and_bounded() -> None:
    day = Granularity.DAY
    assert report_violations(DAY, DAY + H, Granularity.HOUR) == []
    fields = [v.field for v in report_violations(DAY + M, DAY + 90 * M, Granularity.HOUR)]
    assert fields == ["start_time", "end_time"]
    assert [v.field for v in report_violations(DAY, DAY + H, day)] == ["end_time"]
    assert [v.field for v in report_violations(DAY, DAY, day)] == ["end_time"]
    assert [v.field for v in report_violations(None, None, None)] == [
        "granularity",
        "start_time",
        "end_time",
    ]
    last = DAY + MAX_BUCKETS * timedelta(days=1)
    assert report_violations(DAY, last, day) == []
    too_many = report_violations(DAY, last + timedelta(days=1), day)
    assert [v.field for v in too_many] == ["end_time"]
    assert str(MAX_BUCKETS) in too_many[0].description


def test_the_event_log_maps_to_seat_changes_at_effective_times() -> None:
    def event(
        kind: str, minute: int, activation: str = "a", late: int | None = None
    ) -> StoredEvent:
        return StoredEvent(
            entitlement_id="ent_1",
            type=kind,
            create_time=DAY + minute * M,
            snapshot={},
            activation_id=activation,
            effective_time=None if late is None else DAY + late * M,
        )

    changes = seat_changes(
        [
            event("created", 0, activation=""),
            event("seat_activated", 1),
            event("seat_activated", 2, activation="b"),
            event("seats_changed", 3, activation=""),
            event("lease_lapsed", 40, late=17),  # recorded at 40, the seat free from 17
            event("seat_deactivated", 50, activation="b"),  # SEAT_DEACTIVATED ends a seat
        ]
    )
    assert changes == [
        take(DAY + M, "a"),
        take(DAY + 2 * M, "b"),
        end(DAY + 17 * M, "a"),
        end(DAY + 50 * M, "b"),
    ]
    (bucket,) = hours(changes, count=1)
    assert bucket.peak_seats_in_use == 2
    # a from 1 to 17 minutes, b from 2 to 50: 64 seat-minutes in the hour.
    assert bucket.average_seats_in_use == pytest.approx(64 / 60, abs=1e-12)
