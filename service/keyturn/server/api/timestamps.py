"""datetime and timedelta to and from the protobuf well-known types."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def duration(value: timedelta) -> Duration:
    result = Duration()
    result.FromTimedelta(value)
    return result


def to_datetime(value: Timestamp) -> datetime:
    return value.ToDatetime(tzinfo=UTC)
