"""Domain errors: a reason from the contract's ErrorReason enum plus a message.

The API layer maps each reason to one gRPC status code; the domain never
knows about gRPC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    """Mirror of keyturn.errors.v1.ErrorReason (a test keeps them equal)."""

    INVALID_REQUEST = "INVALID_REQUEST"
    MISSING_CREDENTIALS = "MISSING_CREDENTIALS"
    INVALID_TOKEN = "INVALID_TOKEN"
    INSUFFICIENT_SCOPE = "INSUFFICIENT_SCOPE"
    ORDER_CONFLICT = "ORDER_CONFLICT"
    ORDER_NOT_FOUND = "ORDER_NOT_FOUND"
    SKU_NOT_FOUND = "SKU_NOT_FOUND"
    PRODUCT_NOT_FOUND = "PRODUCT_NOT_FOUND"
    ENTITLEMENT_NOT_FOUND = "ENTITLEMENT_NOT_FOUND"
    ETAG_MISMATCH = "ETAG_MISMATCH"
    INVALID_STATE = "INVALID_STATE"
    NOT_IMPLEMENTED = "NOT_IMPLEMENTED"
    INVALID_LICENSE_KEY = "INVALID_LICENSE_KEY"
    PRODUCT_MISMATCH = "PRODUCT_MISMATCH"
    ENTITLEMENT_EXPIRED = "ENTITLEMENT_EXPIRED"
    ENTITLEMENT_CANCELLED = "ENTITLEMENT_CANCELLED"
    SEATS_EXHAUSTED = "SEATS_EXHAUSTED"
    INVALID_LEASE = "INVALID_LEASE"
    LEASE_SUPERSEDED = "LEASE_SUPERSEDED"
    DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    EXTERNAL_REFERENCE_TAKEN = "EXTERNAL_REFERENCE_TAKEN"
    NOT_A_TRIAL = "NOT_A_TRIAL"
    ENTITLEMENT_PERPETUAL = "ENTITLEMENT_PERPETUAL"
    SEAT_MINIMUM = "SEAT_MINIMUM"
    SEQUENCE_OUT_OF_RANGE = "SEQUENCE_OUT_OF_RANGE"
    SERVER_STOPPING = "SERVER_STOPPING"
    INVALID_INVITATION = "INVALID_INVITATION"
    INVITATION_REDEEMED = "INVITATION_REDEEMED"
    NAMED_USERS_EXCEED_SEATS = "NAMED_USERS_EXCEED_SEATS"
    WATCH_STREAMS_EXHAUSTED = "WATCH_STREAMS_EXHAUSTED"
    TRANSACTION_CONFLICT = "TRANSACTION_CONFLICT"
    DATABASE_BUSY = "DATABASE_BUSY"
    SIGNING_KEY_UNAVAILABLE = "SIGNING_KEY_UNAVAILABLE"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field, named by its path in the request (`sku.operations[0].create.term`)."""

    field: str
    description: str


class DomainError(Exception):
    """A failure the caller can act on, identified by its reason."""

    def __init__(
        self,
        reason: Reason,
        message: str,
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})
        self.violations: tuple[FieldViolation, ...] = tuple(violations)


def invalid_request(violations: Sequence[FieldViolation]) -> DomainError:
    """The INVALID_REQUEST error for a non-empty list of violations."""
    first = violations[0]
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    return DomainError(
        Reason.INVALID_REQUEST,
        f"{first.field}: {first.description}{more}",
        {"field": first.field},
        violations,
    )


def raise_if_invalid(violations: Sequence[FieldViolation]) -> None:
    """Raise INVALID_REQUEST when anything was found wrong."""
    if violations:
        raise invalid_request(violations)


def watch_streams_exhausted(max_streams: int) -> DomainError:
    """A new change stream refused: this process already serves `max_streams` of them."""
    return DomainError(
        Reason.WATCH_STREAMS_EXHAUSTED,
        f"this server already has {max_streams} change streams open, its most; "
        "retry later or on another replica",
        {"max_streams": str(max_streams)},
    )


def database_unavailable() -> DomainError:
    """The database cannot be reached (down, starting, stopping, connection lost)."""
    return DomainError(Reason.DATABASE_UNAVAILABLE, "the database is unavailable; retry later")


def database_busy(limit: str) -> DomainError:
    """The database did not answer within `limit` (pool_timeout, statement_timeout or
    lock_timeout): overloaded, or a lock held long by another session."""
    return DomainError(
        Reason.DATABASE_BUSY,
        f"the database did not answer in time ({limit}); retry later",
        {"limit": limit},
    )


def transaction_conflict(attempts: int) -> DomainError:
    """A serialization failure or deadlock, after the server's own `attempts`."""
    return DomainError(
        Reason.TRANSACTION_CONFLICT,
        "a concurrent transaction conflicted with this one; nothing was written, retry",
        {"attempts": str(attempts)},
    )


def signing_key_unavailable() -> DomainError:
    """No key to sign with could be loaded."""
    return DomainError(
        Reason.SIGNING_KEY_UNAVAILABLE, "no signing key could be loaded; retry later"
    )
