"""ISO-8601 durations (`P1Y`, `P1M`, `P30D`, `PT15M`), calendar arithmetic, and times as
people type them.

Terms are calendar durations: a month added to 31 January ends on the last
day of February, which `timedelta` cannot express.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_PATTERN = re.compile(
    r"^P(?!$)(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?=\d)(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?$",
    re.ASCII,  # \d would otherwise take any Unicode digit
)
LAST_YEAR = 9000  # far from datetime's end, so that end date plus grace always fits
_MAX_PART = 100_000
_MAX_YEARS = 100
_REFERENCE = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class IsoDuration:
    """A calendar duration; every part is a non-negative whole number."""

    years: int = 0
    months: int = 0
    weeks: int = 0
    days: int = 0
    hours: int = 0
    minutes: int = 0
    seconds: int = 0

    def is_zero(self) -> bool:
        return not any(
            (self.years, self.months, self.weeks, self.days, self.hours, self.minutes, self.seconds)
        )

    def times(self, factor: int) -> IsoDuration:
        """This duration repeated `factor` times."""
        return IsoDuration(
            self.years * factor,
            self.months * factor,
            self.weeks * factor,
            self.days * factor,
            self.hours * factor,
            self.minutes * factor,
            self.seconds * factor,
        )

    def after(self, start: datetime) -> datetime:
        """The instant this duration after `start` (months clamp to the month's end)."""
        total_months = start.month - 1 + self.months + 12 * self.years
        year = start.year + total_months // 12
        month = total_months % 12 + 1
        if year > LAST_YEAR:
            raise ValueError(f"duration reaches beyond the year {LAST_YEAR}")
        day = min(start.day, calendar.monthrange(year, month)[1])
        moved = start.replace(year=year, month=month, day=day)
        try:
            end = moved + timedelta(
                weeks=self.weeks,
                days=self.days,
                hours=self.hours,
                minutes=self.minutes,
                seconds=self.seconds,
            )
        except OverflowError:
            end = datetime.max.replace(tzinfo=start.tzinfo)
        if end.year > LAST_YEAR:
            raise ValueError(f"duration reaches beyond the year {LAST_YEAR}")
        return end


def parse_iso_duration(text: str) -> IsoDuration:
    """Parse `P1Y2M`, `P30D`, `PT15M`...; ValueError with a readable reason otherwise."""
    match = _PATTERN.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not an ISO-8601 duration such as P1Y, P1M, P30D or PT15M")
    parts = {name: int(value) for name, value in match.groupdict().items() if value is not None}
    if any(value > _MAX_PART for value in parts.values()):
        raise ValueError(f"{text!r} is too long")
    duration = IsoDuration(**parts)
    if duration.is_zero():
        raise ValueError(f"{text!r} is zero")
    if duration.after(_REFERENCE) > _REFERENCE.replace(year=_REFERENCE.year + _MAX_YEARS):
        raise ValueError(f"{text!r} is longer than {_MAX_YEARS} years")
    return duration


def fixed_length(duration: IsoDuration) -> timedelta:
    """The length of a duration without years or months (whose length depends on the
    calendar); ValueError for one with them."""
    if duration.years or duration.months:
        raise ValueError("must be a fixed length: weeks, days, hours, minutes or seconds")
    return timedelta(
        weeks=duration.weeks,
        days=duration.days,
        hours=duration.hours,
        minutes=duration.minutes,
        seconds=duration.seconds,
    )


def iso_of_length(length: timedelta) -> str:
    """A fixed length as the ISO-8601 duration of days and time (`P30D`, `P1DT12H`)."""
    days, rest = divmod(int(length.total_seconds()), 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    time = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M"), (seconds, "S")) if n)
    text = "P" + (f"{days}D" if days else "") + (f"T{time}" if time else "")
    return text if text != "P" else "PT0S"


def utc_time(text: str) -> datetime:
    """An ISO 8601 date or date and time (ValueError otherwise); without an offset it is
    UTC, as Keyturn shows every time."""
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
