"""When the credentials that do not carry their own end stop working.

API tokens end at a fixed time, set when they are made: an operator creates them and
can replace them on a schedule, and a fixed end bounds how long a leaked token works
however busy it is kept. Identity tokens end after a time without use (a sliding
expiry): an end user cannot rotate one (a new one takes a new invitation from the
vendor), so a user who keeps using the app must keep working, while the token of an
abandoned laptop or of someone who left ends by itself.
"""

from __future__ import annotations

from datetime import datetime, timedelta


def expire_time(start: datetime, lifetime: timedelta | None) -> datetime | None:
    """The end of a credential that lasts `lifetime` from `start`; None: no end."""
    return None if lifetime is None else start + lifetime


def has_expired(end: datetime | None, now: datetime) -> bool:
    """Whether a credential ending at `end` (None: never) has ended at `now`."""
    return end is not None and now >= end
