"""The one mapping from domain errors to statuses with google.rpc details: gRPC statuses,
and the Connect errors of HTTP/JSON, whose codes are the same table's (Connect maps
each code to an HTTP status itself: 400, 401, 403, 404, 409, 429, 503...)."""

from __future__ import annotations

from connectrpc.code import Code as ConnectCode
from connectrpc.errors import ConnectError
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc import StatusCode
from grpc_status import rpc_status

from keyturn.server.domain.errors import DomainError, Reason

ERROR_DOMAIN = "keyturn.dev"

STATUS_OF: dict[Reason, StatusCode] = {
    Reason.INVALID_REQUEST: StatusCode.INVALID_ARGUMENT,
    Reason.MISSING_CREDENTIALS: StatusCode.UNAUTHENTICATED,
    Reason.INVALID_TOKEN: StatusCode.UNAUTHENTICATED,
    Reason.INSUFFICIENT_SCOPE: StatusCode.PERMISSION_DENIED,
    Reason.ORDER_CONFLICT: StatusCode.ALREADY_EXISTS,
    Reason.ORDER_NOT_FOUND: StatusCode.NOT_FOUND,
    Reason.SKU_NOT_FOUND: StatusCode.NOT_FOUND,
    Reason.PRODUCT_NOT_FOUND: StatusCode.NOT_FOUND,
    Reason.ENTITLEMENT_NOT_FOUND: StatusCode.NOT_FOUND,
    Reason.ETAG_MISMATCH: StatusCode.ABORTED,
    Reason.INVALID_STATE: StatusCode.FAILED_PRECONDITION,
    Reason.NOT_IMPLEMENTED: StatusCode.UNIMPLEMENTED,
    Reason.INVALID_LICENSE_KEY: StatusCode.UNAUTHENTICATED,
    Reason.PRODUCT_MISMATCH: StatusCode.PERMISSION_DENIED,
    Reason.ENTITLEMENT_EXPIRED: StatusCode.FAILED_PRECONDITION,
    Reason.ENTITLEMENT_CANCELLED: StatusCode.FAILED_PRECONDITION,
    Reason.SEATS_EXHAUSTED: StatusCode.RESOURCE_EXHAUSTED,
    Reason.INVALID_LEASE: StatusCode.UNAUTHENTICATED,
    Reason.LEASE_SUPERSEDED: StatusCode.FAILED_PRECONDITION,
    Reason.DATABASE_UNAVAILABLE: StatusCode.UNAVAILABLE,
    Reason.INTERNAL_ERROR: StatusCode.INTERNAL,
    Reason.EXTERNAL_REFERENCE_TAKEN: StatusCode.ALREADY_EXISTS,
    Reason.NOT_A_TRIAL: StatusCode.FAILED_PRECONDITION,
    Reason.ENTITLEMENT_PERPETUAL: StatusCode.FAILED_PRECONDITION,
    Reason.SEAT_MINIMUM: StatusCode.FAILED_PRECONDITION,
    Reason.SEQUENCE_OUT_OF_RANGE: StatusCode.OUT_OF_RANGE,
    Reason.SERVER_STOPPING: StatusCode.UNAVAILABLE,
    Reason.INVALID_INVITATION: StatusCode.UNAUTHENTICATED,
    Reason.INVITATION_REDEEMED: StatusCode.FAILED_PRECONDITION,
    Reason.NAMED_USERS_EXCEED_SEATS: StatusCode.FAILED_PRECONDITION,
    Reason.WATCH_STREAMS_EXHAUSTED: StatusCode.RESOURCE_EXHAUSTED,
    Reason.TRANSACTION_CONFLICT: StatusCode.ABORTED,
    Reason.DATABASE_BUSY: StatusCode.UNAVAILABLE,
    Reason.SIGNING_KEY_UNAVAILABLE: StatusCode.UNAVAILABLE,
    Reason.CLIENT_CERTIFICATE_REQUIRED: StatusCode.UNAUTHENTICATED,
    Reason.TOKEN_EXPIRED: StatusCode.UNAUTHENTICATED,
    Reason.IDENTITY_TOKEN_EXPIRED: StatusCode.UNAUTHENTICATED,
    Reason.RATE_LIMITED: StatusCode.RESOURCE_EXHAUSTED,
    Reason.ENTITLEMENT_SUSPENDED: StatusCode.FAILED_PRECONDITION,
    Reason.SEAT_DEACTIVATED: StatusCode.FAILED_PRECONDITION,
    Reason.DEACTIVATION_LIMIT_REACHED: StatusCode.RESOURCE_EXHAUSTED,
    Reason.ACTIVATION_NOT_FOUND: StatusCode.NOT_FOUND,
    Reason.NAMED_USER_NOT_FOUND: StatusCode.NOT_FOUND,
    Reason.NAMED_USER_EXISTS: StatusCode.ALREADY_EXISTS,
    Reason.WEBHOOK_SUBSCRIPTION_NOT_FOUND: StatusCode.NOT_FOUND,
    Reason.WEBHOOK_NOT_FOUND: StatusCode.NOT_FOUND,
}


def _pack(
    message: error_details_pb2.ErrorInfo
    | error_details_pb2.BadRequest
    | error_details_pb2.RetryInfo,
) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


MAX_TEXT = 256


def _bounded(text: str) -> str:
    """Error texts may quote the request; never let them grow past what clients accept."""
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


def status_of(error: DomainError) -> status_pb2.Status:
    """The google.rpc.Status for an error: code, message, ErrorInfo and any BadRequest."""
    code = STATUS_OF[error.reason]
    info = error_details_pb2.ErrorInfo(
        reason=error.reason.value,
        domain=ERROR_DOMAIN,
        metadata={key: _bounded(value) for key, value in error.metadata.items()},
    )
    details = [_pack(info)]
    if error.violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=_bounded(v.field), description=_bounded(v.description)
                        )
                        for v in error.violations[:50]
                    ]
                )
            )
        )
    if error.retry_delay_seconds is not None:
        delay = error_details_pb2.RetryInfo()
        delay.retry_delay.FromSeconds(error.retry_delay_seconds)
        details.append(_pack(delay))
    numeric: int = code.value[0]
    assert code_pb2.Code.Name(numeric)  # every StatusCode is a google.rpc.Code
    return status_pb2.Status(code=numeric, message=_bounded(error.message), details=details)


def grpc_status_of(error: DomainError) -> rpc_status._Status:  # type: ignore[name-defined]
    return rpc_status.to_status(status_of(error))


def connect_code_of(code: StatusCode) -> ConnectCode:
    """The Connect code of a gRPC status: the same names, lower case (CANCELLED is
    spelled `canceled`)."""
    return ConnectCode("canceled" if code is StatusCode.CANCELLED else code.name.lower())


def connect_error_of(error: DomainError) -> ConnectError:
    """The Connect error for an error: the code, message and details of `status_of`, so
    that its JSON body carries the same ErrorInfo and BadRequest (readable under each
    detail's `debug`)."""
    status = status_of(error)
    return ConnectError(
        connect_code_of(STATUS_OF[error.reason]), status.message, details=list(status.details)
    )
