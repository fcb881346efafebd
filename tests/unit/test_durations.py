"""ISO-8601 durations: parsing and calendar arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyturn.server.domain.durations import IsoDuration, parse_iso_duration


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("P1Y", IsoDuration(years=1)),
        ("P1M", IsoDuration(months=1)),
        ("P2W", IsoDuration(weeks=2)),
        ("P30D", IsoDuration(days=30)),
        ("PT15M", IsoDuration(minutes=15)),
        ("PT1H", IsoDuration(hours=1)),
        ("PT30S", IsoDuration(seconds=30)),
        ("P1Y2M", IsoDuration(years=1, months=2)),
        ("P1DT12H", IsoDuration(days=1, hours=12)),
        ("P1Y2M3W4DT5H6M7S", IsoDuration(1, 2, 3, 4, 5, 6, 7)),
        ("P0Y1M", IsoDuration(months=1)),
        ("P007D", IsoDuration(days=7)),
        ("P100Y", IsoDuration(years=100)),
        ("P1200M", IsoDuration(months=1200)),
    ],
)
def test_valid_forms_parse(text: str, expected: IsoDuration) -> None:
    assert parse_iso_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "P",
        "PT",
        "P1DT",
        "T1H",
        "1D",
        "D",
        "P-1D",
        "-P1D",
        "P+1D",
        "P1.5D",
        "P1,5D",
        "PT0.5S",
        "p1d",
        "P1d",
        "P1H",
        "PT1D",
        "P1M1Y",
        "P1D1W",
        "PT1S1M",
        "P1Y1Y",
        " P1D",
        "P1D ",
        "P 1D",
        "P1DX",
        "1Y",
        "P0D",
        "PT0S",
        "P0Y0M0W0DT0H0M0S",
        "P101Y",
        "P100001D",
        "P99999999999999999999D",
    ],
)
def test_invalid_forms_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        parse_iso_duration(text)


@pytest.mark.parametrize("text", ["P1D\n", "P1Y\n"])
def test_a_trailing_newline_is_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_iso_duration(text)


@pytest.mark.parametrize("text", ["P\u0661D", "P\uff11D", "PT\u0967H"])
def test_non_ascii_digits_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_iso_duration(text)


def test_the_reason_names_the_text() -> None:
    with pytest.raises(ValueError, match="P1X"):
        parse_iso_duration("P1X")


@pytest.mark.parametrize(
    ("start", "term", "end"),
    [
        (utc(2025, 1, 31), "P1M", utc(2025, 2, 28)),
        (utc(2024, 1, 31), "P1M", utc(2024, 2, 29)),
        (utc(2024, 3, 31), "P1M", utc(2024, 4, 30)),
        (utc(2024, 12, 31), "P1M", utc(2025, 1, 31)),
        (utc(2024, 1, 31), "P2M", utc(2024, 3, 31)),
        (utc(2024, 8, 31), "P6M", utc(2025, 2, 28)),
        (utc(2024, 11, 30), "P3M", utc(2025, 2, 28)),
        (utc(2024, 2, 29), "P1Y", utc(2025, 2, 28)),
        (utc(2024, 2, 29), "P4Y", utc(2028, 2, 29)),
        (utc(2024, 2, 29), "P12M", utc(2025, 2, 28)),
        (utc(2023, 2, 28), "P1Y", utc(2024, 2, 28)),
        (utc(2100, 1, 31), "P1M", utc(2100, 2, 28)),  # 2100 is not a leap year
        (utc(2000, 1, 31), "P1M", utc(2000, 2, 29)),  # 2000 is
        (utc(2024, 2, 28), "P1D", utc(2024, 2, 29)),
        (utc(2023, 2, 28), "P1D", utc(2023, 3, 1)),
        (utc(2024, 1, 1), "P1Y", utc(2025, 1, 1)),
        (utc(2024, 1, 1), "P365D", utc(2024, 12, 31)),
        (utc(2024, 1, 31), "P1M1D", utc(2024, 3, 1)),  # months first, then days
        (utc(2024, 1, 1), "P1W", utc(2024, 1, 8)),
        (utc(2024, 1, 1, 23, 50), "PT15M", utc(2024, 1, 2, 0, 5)),
        (utc(2024, 12, 31, 23, 59, 59), "PT1S", utc(2025, 1, 1)),
    ],
)
def test_calendar_arithmetic(start: datetime, term: str, end: datetime) -> None:
    assert parse_iso_duration(term).after(start) == end


def test_time_of_day_microseconds_and_zone_are_kept() -> None:
    zone = timezone(timedelta(hours=5, minutes=30))
    start = datetime(2025, 1, 31, 13, 14, 15, 161718, tzinfo=zone)
    end = parse_iso_duration("P1M").after(start)
    assert end == datetime(2025, 2, 28, 13, 14, 15, 161718, tzinfo=zone)
    assert end.utcoffset() == zone.utcoffset(None)


def test_months_are_clamped_once_not_month_by_month() -> None:
    start = utc(2024, 1, 31)
    assert parse_iso_duration("P1M").times(3).after(start) == utc(2024, 4, 30)
    stepped = start
    for _ in range(3):
        stepped = parse_iso_duration("P1M").after(stepped)
    assert stepped == utc(2024, 4, 29)


def test_times_repeats_every_part() -> None:
    duration = parse_iso_duration("P1Y2M3W4DT5H6M7S")
    assert duration.times(3) == IsoDuration(3, 6, 9, 12, 15, 18, 21)
    assert duration.times(1) == duration
    assert duration.times(0).is_zero()


def test_times_of_a_term_by_a_quantity() -> None:
    assert parse_iso_duration("P1M").times(12) == parse_iso_duration("P12M")
    assert parse_iso_duration("P1M").times(12).after(utc(2024, 2, 29)) == utc(2025, 2, 28)


def test_is_zero() -> None:
    assert IsoDuration().is_zero()
    assert not IsoDuration(seconds=1).is_zero()


def test_arithmetic_past_the_year_9000_is_refused() -> None:
    with pytest.raises(ValueError, match="9000"):
        IsoDuration(years=7000).after(utc(2025, 1, 1))


starts = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 12, 31), timezones=st.just(UTC)
)
durations = st.builds(
    IsoDuration,
    years=st.integers(0, 50),
    months=st.integers(0, 600),
    weeks=st.integers(0, 2000),
    days=st.integers(0, 20_000),
    hours=st.integers(0, 100_000),
    minutes=st.integers(0, 100_000),
    seconds=st.integers(0, 100_000),
)


@given(start=starts, duration=durations)
def test_a_duration_never_moves_time_backwards(start: datetime, duration: IsoDuration) -> None:
    end = duration.after(start)
    assert end >= start
    if not duration.is_zero():
        assert end > start


@given(first=starts, second=starts, duration=durations)
def test_a_later_start_never_ends_earlier(
    first: datetime, second: datetime, duration: IsoDuration
) -> None:
    early, late = sorted((first, second))
    assert duration.after(early) <= duration.after(late)


@given(start=starts, duration=durations, extra=st.integers(1, 1000))
def test_more_days_end_later(start: datetime, duration: IsoDuration, extra: int) -> None:
    longer = IsoDuration(
        duration.years,
        duration.months,
        duration.weeks,
        duration.days + extra,
        duration.hours,
        duration.minutes,
        duration.seconds,
    )
    assert longer.after(start) == duration.after(start) + timedelta(days=extra)


@given(start=starts, months=st.integers(1, 1200))
def test_a_month_term_lands_on_the_same_day_or_the_month_end(start: datetime, months: int) -> None:
    end = IsoDuration(months=months).after(start)
    assert (end.year * 12 + end.month) - (start.year * 12 + start.month) == months
    assert end.day <= start.day
    if end.day < start.day:
        assert (end + timedelta(days=1)).month != end.month  # clamped to the month's end
    assert end.time() == start.time()


@given(
    duration=st.builds(
        IsoDuration,
        years=st.integers(0, 20),
        months=st.integers(0, 20),
        weeks=st.integers(0, 20),
        days=st.integers(0, 20),
        hours=st.integers(0, 20),
        minutes=st.integers(0, 20),
        seconds=st.integers(0, 20),
    ).filter(lambda d: not d.is_zero())
)
def test_the_printed_form_parses_back(duration: IsoDuration) -> None:
    date = "".join(
        f"{value}{unit}"
        for value, unit in (
            (duration.years, "Y"),
            (duration.months, "M"),
            (duration.weeks, "W"),
            (duration.days, "D"),
        )
        if value
    )
    time = "".join(
        f"{value}{unit}"
        for value, unit in ((duration.hours, "H"), (duration.minutes, "M"), (duration.seconds, "S"))
        if value
    )
    text = "P" + date + ("T" + time if time else "")
    assert parse_iso_duration(text) == duration
