"""GetUsageReport: ranges that are not whole buckets, reversed, empty or too long, and
times no Timestamp may hold.

The generated cases (generated.py) cover the entitlement id, the required fields and
the granularity's unknown values.
"""

from __future__ import annotations

from datetime import timedelta

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.server.domain.usage import MAX_BUCKETS

from .builders import REPORT_START, usage_report
from .cases import Code, invalid, refused
from .generated import generated_cases
from .running import refusal_test
from .world import UNKNOWN_ENTITLEMENT, World

HOUR = ful.USAGE_GRANULARITY_HOUR


def report(**kwargs: object):  # type: ignore[no-untyped-def]
    return lambda w: usage_report(w.entitlement_id, **kwargs)  # type: ignore[arg-type]


def with_seconds(field: str, seconds: int):  # type: ignore[no-untyped-def]
    def build(w: World) -> ful.GetUsageReportRequest:
        request = usage_report(w.entitlement_id)
        getattr(request, field).seconds = seconds
        return request

    return build


CASES = [
    *generated_cases("GetUsageReport"),
    refused(
        "GetUsageReport",
        "unknown-entitlement",
        usage_report(UNKNOWN_ENTITLEMENT),
        Code.NOT_FOUND,
        "ENTITLEMENT_NOT_FOUND",
        entitlement_id=UNKNOWN_ENTITLEMENT,
    ),
    invalid(
        "GetUsageReport",
        "start-not-on-a-midnight",
        report(start=REPORT_START + timedelta(hours=1)),
        "start_time",
        "end_time",
    ),
    invalid(
        "GetUsageReport",
        "end-not-on-an-hour",
        report(days=1 / 48, granularity=HOUR),
        "end_time",
    ),
    invalid(
        "GetUsageReport",
        "start-not-on-an-hour",
        report(start=REPORT_START + timedelta(minutes=1), days=1, granularity=HOUR),
        "start_time",
        "end_time",
    ),
    invalid("GetUsageReport", "end-equal-to-start", report(days=0), "end_time"),
    invalid("GetUsageReport", "end-before-start", report(days=-1), "end_time"),
    invalid(
        "GetUsageReport",
        "one-bucket-too-many-days",
        report(days=MAX_BUCKETS + 1),
        "end_time",
    ),
    invalid(
        "GetUsageReport",
        "one-bucket-too-many-hours",
        report(days=(MAX_BUCKETS + 1) / 24, granularity=HOUR),
        "end_time",
    ),
    invalid(
        "GetUsageReport",
        "start-beyond-year-9999",
        with_seconds("start_time", 2**62),
        "start_time",
    ),
    invalid(
        "GetUsageReport",
        "end-before-year-1",
        with_seconds("end_time", -(2**62)),
        "end_time",
    ),
    invalid(
        "GetUsageReport",
        "unknown-entitlement-and-bad-range",
        lambda w: usage_report(UNKNOWN_ENTITLEMENT, days=-1),
        "end_time",
    ),
]

test_bad_input_is_refused_and_writes_nothing = refusal_test(CASES)
