"""ListAuditEvents' messages to and from the app's audit records."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from keyturn.fulfillment.v1 import fulfillment_pb2 as pb
from keyturn.server.domain.errors import FieldViolation, raise_if_invalid
from keyturn.server.store.audit_repository import AuditEvent, AuditFilter

from .timestamps import timestamp, to_datetime


def _time_in(
    message: pb.ListAuditEventsRequest, field: str, violations: list[FieldViolation]
) -> datetime | None:
    if not message.HasField(field):  # type: ignore[arg-type]
        return None
    value: Timestamp = getattr(message, field)
    try:
        return to_datetime(value)
    except (ValueError, OverflowError, OSError):
        violations.append(FieldViolation(field, "must be a time from year 1 to 9999"))
        return None


def audit_filter_in(message: pb.ListAuditEventsRequest) -> AuditFilter:
    violations: list[FieldViolation] = []
    start = _time_in(message, "start_time", violations)
    end = _time_in(message, "end_time", violations)
    raise_if_invalid(violations)
    return AuditFilter(
        actor=message.actor,
        action=message.action,
        entitlement_id=message.entitlement_id,
        resource=message.resource,
        start_time=start,
        end_time=end,
    )


def audit_event_out(event: AuditEvent) -> pb.AuditEvent:
    details = Struct()
    details.update(event.details)
    return pb.AuditEvent(
        audit_id=event.audit_id,
        create_time=timestamp(event.create_time),
        actor=event.actor,
        action=event.action,
        resource=event.resource,
        entitlement_id=event.entitlement_id or "",
        details=details,
    )
