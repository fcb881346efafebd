"""GetUsageReport's messages to and from the usage report use case."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from keyturn.fulfillment.v1 import fulfillment_pb2 as pb
from keyturn.server.app.usage import UsageReport
from keyturn.server.domain.errors import FieldViolation, raise_if_invalid
from keyturn.server.domain.usage import Granularity

from .timestamps import timestamp, to_datetime

GRANULARITY_IN = {
    pb.USAGE_GRANULARITY_HOUR: Granularity.HOUR,
    pb.USAGE_GRANULARITY_DAY: Granularity.DAY,
}


def _time_in(request: pb.GetUsageReportRequest, field: str) -> datetime | None:
    """The field's instant; None when unset (the use case names it). A Timestamp outside
    0001-9999 is bad input here, where its field is known."""
    if not request.HasField(field):  # type: ignore[arg-type]
        return None
    value: Timestamp = getattr(request, field)
    try:
        return to_datetime(value)
    except (ValueError, OverflowError):
        raise_if_invalid([FieldViolation(field, f"{field} is not a valid time")])
        raise


def usage_request_in(
    request: pb.GetUsageReportRequest,
) -> tuple[datetime | None, datetime | None, Granularity | None]:
    return (
        _time_in(request, "start_time"),
        _time_in(request, "end_time"),
        GRANULARITY_IN.get(request.granularity),
    )


def usage_report_out(report: UsageReport) -> pb.GetUsageReportResponse:
    return pb.GetUsageReportResponse(
        buckets=[
            pb.UsageBucket(
                start_time=timestamp(b.start_time),
                peak_seats_in_use=b.peak_seats_in_use,
                average_seats_in_use=b.average_seats_in_use,
                seat_limit=b.seat_limit,
            )
            for b in report.buckets
        ]
    )
