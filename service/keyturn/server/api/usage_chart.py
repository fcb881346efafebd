"""A usage report drawn as one self-contained SVG: no script, font file or stylesheet.

Each report is one panel: a bar per bucket for the peak seats in use, a line for
the average, a stepped dashed line for the seat limit, axes with labels and a
legend. Used by `keyturn report usage --chart` and by the web console; pure (a
string out), so any page or file can hold it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import assert_never
from xml.sax.saxutils import escape, quoteattr

from keyturn.server.domain.usage import Granularity, UsageBucket

WIDTH = 860
PANEL_HEIGHT = 320
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 20, 44, 56
MAX_X_LABELS = 12
PEAK_FILL = "#9ec5e8"
AVERAGE_STROKE = "#1f4e79"
LIMIT_STROKE = "#c0392b"
FONT = "font-family='Helvetica, Arial, sans-serif'"


@dataclass(frozen=True)
class UsageSeries:
    """One entitlement's report, as a panel of the chart."""

    title: str
    granularity: Granularity
    buckets: Sequence[UsageBucket]


def _nice_step(top: float, ticks: int = 5) -> int:
    """A whole tick step (1, 2, 5 times a power of ten) giving about `ticks` ticks."""
    raw = max(top / ticks, 1.0)
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return int(factor * power)
    return int(10 * power)


def _label(series: UsageSeries, index: int) -> str:
    start = series.buckets[index].start_time
    match series.granularity:
        case Granularity.HOUR:
            return (
                start.strftime("%H:00") if index and start.hour else start.strftime("%m-%d %H:00")
            )
        case Granularity.DAY:
            return start.strftime("%Y-%m-%d")
        case _:
            assert_never(series.granularity)


def _panel(series: UsageSeries, top: int) -> list[str]:
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = PANEL_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    x0, y0 = MARGIN_LEFT, top + MARGIN_TOP + plot_h  # the origin, bottom left
    buckets = series.buckets
    highest = max([1, *(b.peak_seats_in_use for b in buckets), *(b.seat_limit for b in buckets)])
    step = _nice_step(highest * 1.1)
    y_max = step * math.ceil(highest * 1.1 / step)

    def y(value: float) -> float:
        return y0 - value / y_max * plot_h

    out = [
        f"<text x='{x0}' y='{top + 24}' font-size='15' font-weight='bold' {FONT}>"
        f"{escape(series.title)}</text>"
    ]
    for tick in range(0, y_max + 1, step):
        out.append(
            f"<line x1='{x0}' y1='{y(tick):.1f}' x2='{x0 + plot_w}' y2='{y(tick):.1f}' "
            "stroke='#e5e5e5'/>"
            f"<text x='{x0 - 6}' y='{y(tick) + 4:.1f}' font-size='11' text-anchor='end' "
            f"{FONT}>{tick}</text>"
        )
    out.append(
        f"<text transform='translate({x0 - 40},{top + MARGIN_TOP + plot_h / 2:.1f}) "
        f"rotate(-90)' font-size='12' text-anchor='middle' {FONT}>seats in use</text>"
    )
    if not buckets:
        out.append(
            f"<text x='{x0 + plot_w / 2:.1f}' y='{y0 - plot_h / 2:.1f}' font-size='13' "
            f"text-anchor='middle' fill='#777' {FONT}>no bucket has begun yet</text>"
        )
    slot = plot_w / max(len(buckets), 1)
    every = math.ceil(len(buckets) / MAX_X_LABELS) if buckets else 1
    averages, limits = [], []
    for i, bucket in enumerate(buckets):
        left = x0 + i * slot
        height = y0 - y(bucket.peak_seats_in_use)
        out.append(
            f"<rect x='{left + slot * 0.1:.1f}' y='{y0 - height:.1f}' width='{slot * 0.8:.1f}' "
            f"height='{height:.1f}' fill='{PEAK_FILL}'><title>"
            f"{escape(_label(series, i))}: peak {bucket.peak_seats_in_use}, average "
            f"{bucket.average_seats_in_use:.2f}, limit {bucket.seat_limit}</title></rect>"
        )
        averages.append(f"{left + slot / 2:.1f},{y(bucket.average_seats_in_use):.1f}")
        limits.append(
            f"{left:.1f},{y(bucket.seat_limit):.1f} {left + slot:.1f},{y(bucket.seat_limit):.1f}"
        )
        if i % every == 0:
            out.append(
                f"<text x='{left + slot / 2:.1f}' y='{y0 + 16}' font-size='10' "
                f"text-anchor='middle' {FONT}>{escape(_label(series, i))}</text>"
            )
    if buckets:
        out.append(
            f"<polyline points='{' '.join(limits)}' fill='none' stroke='{LIMIT_STROKE}' "
            "stroke-width='2' stroke-dasharray='6 4'/>"
            f"<polyline points='{' '.join(averages)}' fill='none' stroke='{AVERAGE_STROKE}' "
            "stroke-width='2'/>"
        )
    out.append(
        f"<line x1='{x0}' y1='{y0}' x2='{x0 + plot_w}' y2='{y0}' stroke='#333'/>"
        f"<line x1='{x0}' y1='{y0}' x2='{x0}' y2='{y0 - plot_h}' stroke='#333'/>"
        f"<text x='{x0 + plot_w / 2:.1f}' y='{y0 + 36}' font-size='12' text-anchor='middle' "
        f"{FONT}>{escape(series.granularity.value)} (UTC)</text>"
    )
    legend_x = x0 + plot_w - 300
    out.append(
        f"<rect x='{legend_x}' y='{top + 14}' width='14' height='10' fill='{PEAK_FILL}'/>"
        f"<text x='{legend_x + 18}' y='{top + 23}' font-size='11' {FONT}>peak</text>"
        f"<line x1='{legend_x + 70}' y1='{top + 19}' x2='{legend_x + 90}' y2='{top + 19}' "
        f"stroke='{AVERAGE_STROKE}' stroke-width='2'/>"
        f"<text x='{legend_x + 94}' y='{top + 23}' font-size='11' {FONT}>average</text>"
        f"<line x1='{legend_x + 160}' y1='{top + 19}' x2='{legend_x + 180}' y2='{top + 19}' "
        f"stroke='{LIMIT_STROKE}' stroke-width='2' stroke-dasharray='6 4'/>"
        f"<text x='{legend_x + 184}' y='{top + 23}' font-size='11' {FONT}>seat limit</text>"
    )
    return out


def usage_chart_svg(series: Sequence[UsageSeries], title: str = "Seats in use") -> str:
    """The reports as one SVG document, one panel each, top to bottom."""
    height = PANEL_HEIGHT * max(len(series), 1)
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{height}' "
        f"viewBox='0 0 {WIDTH} {height}' role='img' aria-label={quoteattr(title)}>",
        f"<title>{escape(title)}</title>",
        f"<rect width='{WIDTH}' height='{height}' fill='white'/>",
    ]
    for index, one in enumerate(series):
        parts += _panel(one, index * PANEL_HEIGHT)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
