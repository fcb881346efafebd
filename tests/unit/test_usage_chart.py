"""The usage chart is one self-contained SVG document that draws what the report says."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

from keyturn.server.api.usage_chart import UsageSeries, usage_chart_svg
from keyturn.server.domain.usage import Granularity, UsageBucket

SVG = "{http://www.w3.org/2000/svg}"
DAY = datetime(2026, 3, 1, tzinfo=UTC)


def hours(*rows: tuple[int, float, int]) -> list[UsageBucket]:
    return [UsageBucket(DAY + i * timedelta(hours=1), *row) for i, row in enumerate(rows)]


def test_the_chart_parses_and_holds_no_script_or_external_reference() -> None:
    svg = usage_chart_svg(
        [UsageSeries("ent_1 <Acme & Co>", Granularity.HOUR, hours((1, 0.5, 3), (4, 2.25, 3)))]
    )
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    assert "ent_1 <Acme & Co>" in "".join(root.itertext())
    tags = {element.tag.removeprefix(SVG) for element in root.iter()}
    assert not tags & {"script", "image", "use", "foreignObject", "style", "a"}
    assert "href" not in svg
    assert "http://" not in svg.replace("http://www.w3.org/2000/svg", "")


def test_each_bucket_is_a_peak_bar_and_a_point_of_the_average_and_the_limit() -> None:
    buckets = hours((1, 0.5, 3), (4, 2.25, 3), (0, 0.0, 6))
    root = ET.fromstring(usage_chart_svg([UsageSeries("e", Granularity.HOUR, buckets)]))
    bars = [r for r in root.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    tips = [r.findtext(f"{SVG}title") for r in bars]
    assert tips == [
        "03-01 00:00: peak 1, average 0.50, limit 3",
        "01:00: peak 4, average 2.25, limit 3",
        "02:00: peak 0, average 0.00, limit 6",
    ]
    heights = [float(r.get("height", "")) for r in bars]
    assert heights[1] == 4 * heights[0]
    assert heights[2] == 0
    average, limit = (
        p.get("points", "").split()
        for p in sorted(root.iter(f"{SVG}polyline"), key=lambda p: p.get("stroke-dasharray", ""))
    )
    assert len(average) == 3
    assert len(limit) == 6  # a step per bucket
    # The limit rose at the third bucket: its segment is drawn higher (smaller y).
    assert float(limit[4].split(",")[1]) < float(limit[0].split(",")[1])


def test_one_panel_per_report_and_an_empty_report_says_so() -> None:
    svg = usage_chart_svg(
        [
            UsageSeries("first", Granularity.DAY, []),
            UsageSeries("second", Granularity.DAY, [UsageBucket(DAY, 2, 1.5, 2)]),
        ]
    )
    root = ET.fromstring(svg)
    text = "".join(root.itertext())
    assert "first" in text
    assert "second" in text
    assert "no bucket has begun yet" in text
    assert "2026-03-01" in text
    assert int(root.get("height", "")) == 2 * int(
        usage_chart_svg([UsageSeries("x", Granularity.DAY, [])]).split("height='")[1].split("'")[0]
    )
