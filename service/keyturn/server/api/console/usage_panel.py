"""The usage chart of an entitlement's page: the usage report the API gives
(GetUsageReport's use case) over a recent window, drawn by api/usage_chart.py.

By day, the last 30 UTC days with today; by the hour, the last 48 hours with this one.
The SVG is inline (drawn with attributes only, no style or script), so the page's
Content-Security-Policy holds.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from markupsafe import Markup

from keyturn.server.app.context import AppContext
from keyturn.server.app.usage import usage_report
from keyturn.server.domain.usage import Granularity

from ..usage_chart import UsageSeries, usage_chart_svg

DAYS, HOURS = 30, 48


def granularity_of(text: str) -> Granularity:
    """The ?usage= of the page: hour, or day (also for anything else)."""
    return Granularity.HOUR if text == Granularity.HOUR.value else Granularity.DAY


def window(now: datetime, granularity: Granularity) -> tuple[datetime, datetime]:
    """[start, end) on whole buckets, ending with the one `now` is in."""
    if granularity is Granularity.HOUR:
        current = now.replace(minute=0, second=0, microsecond=0)
        return current - timedelta(hours=HOURS - 1), current + timedelta(hours=1)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=DAYS - 1), today + timedelta(days=1)


async def usage_chart(ctx: AppContext, entitlement_id: str, granularity: Granularity) -> Markup:
    start, end = window(ctx.clock.now(), granularity)
    report = await usage_report(
        ctx, entitlement_id=entitlement_id, start=start, end=end, granularity=granularity
    )
    title = f"Seats in use by {granularity.value}, {start:%Y-%m-%d} to {end:%Y-%m-%d} (UTC)"
    series = UsageSeries(title, report.granularity, report.buckets)
    # Trusted markup: usage_chart_svg escapes every text it draws.
    return Markup(usage_chart_svg([series], title=title))
