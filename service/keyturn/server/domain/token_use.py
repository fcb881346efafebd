"""When a token's use is worth writing down: once an interval, not on every call.

`keyturn tokens list` shows when each token was last used so that an operator can
tell a forgotten token from a live one. That is a question of days, so a minute of
imprecision costs nothing, while a write on every authenticated call would put a
row update (and on SQLite the one write lock) in the path of every read.
"""

from __future__ import annotations

from datetime import datetime, timedelta

RECORD_INTERVAL = timedelta(seconds=60)


def recorded_before(now: datetime, interval: timedelta = RECORD_INTERVAL) -> datetime:
    """A use recorded at or before this instant is old enough to be recorded anew."""
    return now - interval


def use_is_due(
    last_used: datetime | None, now: datetime, interval: timedelta = RECORD_INTERVAL
) -> bool:
    """Whether a use at `now` should be written, given the last one written (None: never).

    The store's conditional update (`TokenRepository.record_use`) repeats this rule in
    SQL against `recorded_before`; tests run both on the same cases."""
    return last_used is None or last_used <= recorded_before(now, interval)
