"""Typed exceptions for Keyturn errors, chosen by the ErrorInfo reason the server sends.

Callers branch on the exception class (or on `.reason`), never on message text.
Reasons this client does not know yet still arrive as a plain `KeyturnError`
with the reason string kept, so a newer server never breaks an older client.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

ERROR_DOMAIN = "keyturn.dev"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class KeyturnError(Exception):
    """A failed Keyturn call: status code, ErrorInfo reason and metadata, message."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: Iterable[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations: list[tuple[str, str]] = list(field_violations)

    def __str__(self) -> str:
        return f"{self.reason or self.code.name}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}, message={self.message!r})"


class InvalidRequestError(KeyturnError):
    """INVALID_REQUEST: `.field_violations` lists (field, description) pairs."""


class AuthenticationError(KeyturnError):
    """MISSING_CREDENTIALS or INVALID_TOKEN: the connector's bearer token is absent or wrong;
    CLIENT_CERTIFICATE_REQUIRED: the server wants mutual TLS for this call (its admin port,
    with a client certificate)."""


class TokenExpiredError(AuthenticationError):
    """TOKEN_EXPIRED: the bearer token is genuine but past its end; create a new one.
    `.metadata['token_id']` names it, `.metadata['expire_time']` (RFC 3339) says when.
    A subclass of AuthenticationError, so one `except` covers every refused token."""


class PermissionDeniedError(KeyturnError):
    """INSUFFICIENT_SCOPE: the bearer token lacks the scope the call needs."""


class NotFoundError(KeyturnError):
    """ORDER_, SKU_, PRODUCT_, ENTITLEMENT_ or ACTIVATION_NOT_FOUND."""


class NamedUserNotFoundError(NotFoundError):
    """NAMED_USER_NOT_FOUND: no named user with `.metadata['user_id']` on the entitlement
    (never assigned, or removed). A subclass of NotFoundError."""


class NamedUserExistsError(KeyturnError):
    """NAMED_USER_EXISTS: another named user of `.metadata['entitlement_id']` already has
    `.metadata['email']`; nothing was changed."""


class OrderConflictError(KeyturnError):
    """ORDER_CONFLICT: the order id was already fulfilled with different content."""


class EtagMismatchError(KeyturnError):
    """ETAG_MISMATCH: someone changed the resource since it was read; read it again."""


class InvalidLicenseKeyError(KeyturnError):
    """INVALID_LICENSE_KEY: unknown, mistyped or malformed key or identity token."""


class IdentityTokenExpiredError(InvalidLicenseKeyError):
    """IDENTITY_TOKEN_EXPIRED: the identity token went unused too long; the user needs a
    new invitation from the vendor. `.metadata['user_id']`, `.metadata['expire_time']`
    (RFC 3339). A subclass of InvalidLicenseKeyError: code that asks for a new
    credential on that error keeps doing the right thing."""


class ProductMismatchError(KeyturnError):
    """PRODUCT_MISMATCH: the credential is valid but licenses another product."""


class InvalidInvitationError(KeyturnError):
    """INVALID_INVITATION: the invitation code is unknown, malformed or mistyped."""


class InvitationRedeemedError(KeyturnError):
    """INVITATION_REDEEMED: the code was used already; the first identity token stays valid."""


class EntitlementExpiredError(KeyturnError):
    """ENTITLEMENT_EXPIRED: the term (plus grace) has ended."""


class EntitlementCancelledError(KeyturnError):
    """ENTITLEMENT_CANCELLED."""


class EntitlementSuspendedError(KeyturnError):
    """ENTITLEMENT_SUSPENDED: on hold (a failed payment, say) until the vendor reinstates
    it; unlike a cancel it is temporary, and the device keeps its activation.
    `.metadata['entitlement_id']`, `['suspend_time']`."""


class SeatsExhaustedError(KeyturnError):
    """SEATS_EXHAUSTED: every seat is taken; `.metadata['seats']` is the paid seat count,
    `.metadata['seat_limit']` how many may be in use at once (more under an overage policy)."""


class InvalidLeaseError(KeyturnError):
    """INVALID_LEASE: the lease token is not one the server signed."""


class LeaseSupersededError(KeyturnError):
    """LEASE_SUPERSEDED: a newer token replaced this one, or the seat was released;
    `.metadata['activation_id']` names the activation."""


class SeatDeactivatedError(KeyturnError):
    """SEAT_DEACTIVATED: an administrator took this device's seat back (DeactivateSeat);
    tell the user. The lease is lost (the heartbeat calls `on_lost`); activating again
    with the license key is a new claim. Not a LeaseSupersededError, so that a heartbeat
    never takes the seat back by itself. `.metadata['activation_id']`."""


class DeactivationLimitReachedError(KeyturnError):
    """DEACTIVATION_LIMIT_REACHED: the SKU allows `.metadata['limit']` deactivations per
    `.metadata['period']` (ISO 8601), and as many happened already; nothing was done.
    `.retry_time` says when the next is allowed. ReleaseSeat gets it too when the SKU
    counts devices' releases: the device keeps its seat."""

    @property
    def retry_time(self) -> datetime | None:
        value = self.metadata.get("retry_time")
        return datetime.fromisoformat(value) if value else None


class UnavailableError(KeyturnError):
    """Any UNAVAILABLE status (DATABASE_UNAVAILABLE, DATABASE_BUSY, SIGNING_KEY_UNAVAILABLE,
    SERVER_STOPPING, none): the server or its database cannot answer now; retry later."""


class TransactionConflictError(KeyturnError):
    """TRANSACTION_CONFLICT: a concurrent transaction conflicted with this call after the
    server's own retries; nothing was written, and the call is retried like UNAVAILABLE."""


class RateLimitedError(KeyturnError):
    """RATE_LIMITED: too many calls from this peer or with this credential or token (or
    too many wrong credentials from this peer); nothing was done. Retry after
    `.retry_after_seconds` (the server's RetryInfo); `.metadata['limit']` names the limit."""

    @property
    def retry_after_seconds(self) -> int:
        return int(self.metadata.get("retry_after_seconds", "1"))


class LeaseVerificationError(InvalidLeaseError):
    """A lease failed offline verification; `.metadata['check']` says which check.

    A subclass of InvalidLeaseError, so one `except` covers a lease refused by
    the server and one refused locally.
    """

    def __init__(self, message: str, check: str) -> None:
        super().__init__(
            message,
            code=grpc.StatusCode.UNAUTHENTICATED,
            reason="INVALID_LEASE",
            metadata={"check": check},
        )


ERRORS_BY_REASON: dict[str, type[KeyturnError]] = {
    "INVALID_REQUEST": InvalidRequestError,
    "MISSING_CREDENTIALS": AuthenticationError,
    "INVALID_TOKEN": AuthenticationError,
    "CLIENT_CERTIFICATE_REQUIRED": AuthenticationError,
    "TOKEN_EXPIRED": TokenExpiredError,
    "INSUFFICIENT_SCOPE": PermissionDeniedError,
    "ORDER_NOT_FOUND": NotFoundError,
    "SKU_NOT_FOUND": NotFoundError,
    "PRODUCT_NOT_FOUND": NotFoundError,
    "ENTITLEMENT_NOT_FOUND": NotFoundError,
    "NAMED_USER_NOT_FOUND": NamedUserNotFoundError,
    "NAMED_USER_EXISTS": NamedUserExistsError,
    "ORDER_CONFLICT": OrderConflictError,
    "ETAG_MISMATCH": EtagMismatchError,
    "INVALID_LICENSE_KEY": InvalidLicenseKeyError,
    "IDENTITY_TOKEN_EXPIRED": IdentityTokenExpiredError,
    "PRODUCT_MISMATCH": ProductMismatchError,
    "ENTITLEMENT_EXPIRED": EntitlementExpiredError,
    "ENTITLEMENT_CANCELLED": EntitlementCancelledError,
    "ENTITLEMENT_SUSPENDED": EntitlementSuspendedError,
    "SEATS_EXHAUSTED": SeatsExhaustedError,
    "INVALID_LEASE": InvalidLeaseError,
    "LEASE_SUPERSEDED": LeaseSupersededError,
    "INVALID_INVITATION": InvalidInvitationError,
    "INVITATION_REDEEMED": InvitationRedeemedError,
    "TRANSACTION_CONFLICT": TransactionConflictError,
    "RATE_LIMITED": RateLimitedError,
    "SEAT_DEACTIVATED": SeatDeactivatedError,
    "DEACTIVATION_LIMIT_REACHED": DeactivationLimitReachedError,
    "ACTIVATION_NOT_FOUND": NotFoundError,
}


def _status_details(trailing: Iterable[Any] | None) -> status_pb2.Status | None:
    """The google.rpc.Status of the trailers; sync and asyncio calls both carry it there."""
    for key, value in trailing or ():
        if key == _STATUS_DETAILS_KEY:
            raw = value if isinstance(value, bytes) else str(value).encode("latin-1")
            try:
                return status_pb2.Status.FromString(raw)
            except Exception:  # a garbled trailer must not hide the status code
                return None
    return None


def _call_part(error: grpc.RpcError, name: str) -> Any:
    """`error.code()` and friends, tolerating RpcErrors that are not calls."""
    method = getattr(error, name, None)
    return method() if callable(method) else None


def from_rpc_error(error: grpc.RpcError) -> KeyturnError:
    """The typed exception for a failed call of either the sync or the asyncio API."""
    code = _call_part(error, "code")
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    message = _call_part(error, "details") or ""
    reason, metadata, violations = "", {}, []
    status = _status_details(_call_part(error, "trailing_metadata"))
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == ERROR_DOMAIN or not reason:
                reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [(v.field, v.description) for v in bad.field_violations]
    if code is grpc.StatusCode.UNAVAILABLE:
        kind: type[KeyturnError] = UnavailableError
    else:
        kind = ERRORS_BY_REASON.get(reason, KeyturnError)
    return kind(
        str(message),
        code=code,
        reason=reason,
        metadata=metadata,
        field_violations=violations,
    )
