"""The deactivation limit's rule: how many within the period, and when the next is allowed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from keyturn.server.domain.deactivation_limits import (
    DeactivationLimit,
    check_deactivation_limit,
    ensure_allowed,
    releases_limited,
    retry_time,
)
from keyturn.server.domain.durations import iso_of_length
from keyturn.server.domain.errors import DomainError, Reason
from keyturn.server.domain.events import EventType

NOW = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)
LIMIT = DeactivationLimit(3, "P30D")


def days_ago(*days: float) -> list[datetime]:
    return [NOW - timedelta(days=d) for d in days]


def test_fewer_than_the_count_within_the_period_are_allowed() -> None:
    assert retry_time(LIMIT, [], NOW) is None
    assert retry_time(LIMIT, days_ago(1, 2), NOW) is None
    assert retry_time(LIMIT, days_ago(1, 2, 30), NOW) is None  # the third left the period


def test_the_count_within_the_period_waits_for_the_oldest_of_them() -> None:
    assert retry_time(LIMIT, days_ago(1, 2, 29), NOW) == NOW + timedelta(days=1)
    # More than the count (an older limit, a race): the count-th newest decides.
    assert retry_time(LIMIT, days_ago(1, 2, 3, 29), NOW) == NOW + timedelta(days=27)


def test_the_refusal_names_the_limit_the_period_and_the_retry_time() -> None:
    with pytest.raises(DomainError) as caught:
        ensure_allowed(LIMIT, days_ago(1, 2, 29), NOW)
    assert caught.value.reason is Reason.DEACTIVATION_LIMIT_REACHED
    assert caught.value.metadata == {
        "limit": "3",
        "period": "P30D",
        "retry_time": (NOW + timedelta(days=1)).isoformat(),
    }
    ensure_allowed(None, days_ago(1, 2, 3, 4), NOW)  # no limit


def test_counted_releases_add_the_release_events() -> None:
    assert LIMIT.counted_types == (EventType.SEAT_DEACTIVATED,)
    counting = DeactivationLimit(3, "P30D", count_releases=True)
    assert set(counting.counted_types) == {EventType.SEAT_DEACTIVATED, EventType.SEAT_RELEASED}
    assert releases_limited(counting)
    assert not releases_limited(LIMIT)
    assert not releases_limited(None)


@pytest.mark.parametrize(
    ("limit", "fields"),
    [
        (DeactivationLimit(3, "P30D"), []),
        (DeactivationLimit(10_000, "PT1H"), []),
        (DeactivationLimit(0, "P30D"), ["d.count"]),
        (DeactivationLimit(10_001, "P30D"), ["d.count"]),
        (DeactivationLimit(3, "P1M"), ["d.period"]),  # a month has no fixed length
        (DeactivationLimit(3, "P1Y"), ["d.period"]),
        (DeactivationLimit(3, "30 days"), ["d.period"]),
        (DeactivationLimit(3, ""), ["d.period"]),
        (DeactivationLimit(3, "PT59M"), ["d.period"]),
        (DeactivationLimit(3, "P3661D"), ["d.period"]),
        (DeactivationLimit(-1, "P1M"), ["d.count", "d.period"]),
    ],
)
def test_a_limit_is_checked_field_by_field(limit: DeactivationLimit, fields: list[str]) -> None:
    assert [v.field for v in check_deactivation_limit("d", limit)] == fields


@pytest.mark.parametrize(
    ("period", "shown"),
    [("P30D", "P30D"), ("P4W", "P28D"), ("PT12H", "PT12H"), ("P1DT1H30M5S", "P1DT1H30M5S")],
)
def test_an_entitlement_shows_its_period_in_days_and_time(period: str, shown: str) -> None:
    seconds = int(DeactivationLimit(1, period).length.total_seconds())
    assert DeactivationLimit.of_seconds(1, seconds, False).period == shown
    assert iso_of_length(timedelta(0)) == "PT0S"
