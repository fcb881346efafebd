"""Domain errors: a reason from the contract's ErrorReason enum, a message, metadata.

The API layer maps each reason to one gRPC status code; the domain never
knows about gRPC. Every error is built by the one factory of its reason below,
named after it (`seats_exhausted` for SEATS_EXHAUSTED) and in the enum's order,
whose keyword arguments are the ErrorInfo metadata keys that
`proto/keyturn/errors/v1/error_reason.proto` documents for that reason; a test
reads the proto and holds every factory to it. Optional arguments are keys sent
only when they apply (the `line` of an order line).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
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
    CLIENT_CERTIFICATE_REQUIRED = "CLIENT_CERTIFICATE_REQUIRED"
    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    IDENTITY_TOKEN_EXPIRED = "IDENTITY_TOKEN_EXPIRED"
    RATE_LIMITED = "RATE_LIMITED"
    ENTITLEMENT_SUSPENDED = "ENTITLEMENT_SUSPENDED"
    SEAT_DEACTIVATED = "SEAT_DEACTIVATED"
    DEACTIVATION_LIMIT_REACHED = "DEACTIVATION_LIMIT_REACHED"
    ACTIVATION_NOT_FOUND = "ACTIVATION_NOT_FOUND"
    NAMED_USER_NOT_FOUND = "NAMED_USER_NOT_FOUND"
    NAMED_USER_EXISTS = "NAMED_USER_EXISTS"
    WEBHOOK_SUBSCRIPTION_NOT_FOUND = "WEBHOOK_SUBSCRIPTION_NOT_FOUND"
    WEBHOOK_NOT_FOUND = "WEBHOOK_NOT_FOUND"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field, named by its path in the request (`sku.operations[0].create.term`)."""

    field: str
    description: str


class DomainError(Exception):
    """A failure the caller can act on, identified by its reason. Build one through
    the factory of its reason, never directly: the factory keeps the metadata to
    what the contract documents."""

    def __init__(
        self,
        reason: Reason,
        message: str,
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
        retry_delay_seconds: int | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})
        self.violations: tuple[FieldViolation, ...] = tuple(violations)
        # When to retry, for a refusal that ends by itself (google.rpc.RetryInfo).
        self.retry_delay_seconds = retry_delay_seconds


def invalid_request(violations: Sequence[FieldViolation]) -> DomainError:
    """The INVALID_REQUEST error for a non-empty list of violations; metadata `field` is
    the first offending field (the BadRequest detail lists them all)."""
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


def _on_line(line: int | None, message: str) -> str:
    return message if line is None else f"line {line}: {message}"


def _with_line(metadata: dict[str, str], line: int | None) -> dict[str, str]:
    return metadata if line is None else {**metadata, "line": str(line)}


def missing_credentials() -> DomainError:
    """A Fulfillment or Catalog call without a bearer token."""
    return DomainError(
        Reason.MISSING_CREDENTIALS, "send 'authorization: Bearer <token>' with this call"
    )


def invalid_token() -> DomainError:
    """A bearer token that is unknown or revoked."""
    return DomainError(Reason.INVALID_TOKEN, "the bearer token is not valid")


def insufficient_scope(required_scope: str) -> DomainError:
    return DomainError(
        Reason.INSUFFICIENT_SCOPE,
        f"this token lacks the {required_scope!r} scope",
        {"required_scope": required_scope},
    )


def order_conflict(source: str, order_id: str) -> DomainError:
    """The idempotency key of an order already fulfilled with other content."""
    return DomainError(
        Reason.ORDER_CONFLICT,
        f"order {source}/{order_id} was already fulfilled with different content",
        {"source": source, "order_id": order_id},
    )


def order_not_found(source: str, order_id: str) -> DomainError:
    return DomainError(
        Reason.ORDER_NOT_FOUND,
        f"no order {source}/{order_id}",
        {"source": source, "order_id": order_id},
    )


def sku_not_found(sku_id: str, line: int | None = None) -> DomainError:
    """No such SKU; `line` when an order line names it."""
    return DomainError(
        Reason.SKU_NOT_FOUND,
        _on_line(line, f"no SKU {sku_id!r}"),
        _with_line({"sku_id": sku_id}, line),
    )


def product_not_found(product_id: str) -> DomainError:
    return DomainError(
        Reason.PRODUCT_NOT_FOUND, f"no product {product_id!r}", {"product_id": product_id}
    )


def entitlement_not_found(
    entitlement_id: str | None = None,
    *,
    external_reference: str | None = None,
    line: int | None = None,
) -> DomainError:
    """No entitlement by the id or the external reference it was looked up by (give one);
    `line` when an order line names it."""
    looked_up = {"entitlement_id": entitlement_id, "external_reference": external_reference}
    metadata = {key: value for key, value in looked_up.items() if value is not None}
    assert metadata, "name the entitlement looked for"
    named = entitlement_id if entitlement_id is not None else external_reference
    return DomainError(
        Reason.ENTITLEMENT_NOT_FOUND,
        _on_line(line, f"no entitlement {named!r}"),
        _with_line(metadata, line),
    )


def etag_mismatch(resource: str) -> DomainError:
    """The etag sent is not the stored one, or the resource was created concurrently."""
    return DomainError(
        Reason.ETAG_MISMATCH,
        f"{resource} was changed by someone else since it was read; read it again",
        {"resource": resource},
    )


def invalid_state(product_id: str, edition_id: str, operation: str) -> DomainError:
    """The catalog changed under a SKU: its `operation` names an edition the product
    no longer has."""
    return DomainError(
        Reason.INVALID_STATE,
        f"product {product_id!r} no longer has edition {edition_id!r} ({operation})",
        {"product_id": product_id, "edition_id": edition_id, "operation": operation},
    )


def not_implemented(operation: str) -> DomainError:
    return DomainError(
        Reason.NOT_IMPLEMENTED,
        f"{operation} is not available in this server version",
        {"operation": operation},
    )


def invalid_license_key() -> DomainError:
    """The same answer for malformed, mistyped and unknown keys or identity tokens."""
    return DomainError(Reason.INVALID_LICENSE_KEY, "the license key is not valid")


def product_mismatch(product_id: str) -> DomainError:
    """A valid credential that does not license `product_id`."""
    return DomainError(
        Reason.PRODUCT_MISMATCH,
        f"this license is not for product {product_id!r}",
        {"product_id": product_id},
    )


def entitlement_expired(entitlement_id: str, end_time: datetime) -> DomainError:
    return DomainError(
        Reason.ENTITLEMENT_EXPIRED,
        "this license has expired",
        {"entitlement_id": entitlement_id, "end_time": end_time.isoformat()},
    )


def entitlement_cancelled(entitlement_id: str, line: int | None = None) -> DomainError:
    """A cancelled entitlement; `line` when an order line aims an operation at it."""
    return DomainError(
        Reason.ENTITLEMENT_CANCELLED,
        _on_line(line, "the entitlement was cancelled"),
        _with_line({"entitlement_id": entitlement_id}, line),
    )


def seats_exhausted(seats: int, seat_limit: int) -> DomainError:
    """No free seat: `seat_limit` (the paid `seats` raised by any overage policy) in use."""
    return DomainError(
        Reason.SEATS_EXHAUSTED,
        f"all {seat_limit} seats of this license are in use",
        {"seats": str(seats), "seat_limit": str(seat_limit)},
    )


def invalid_lease() -> DomainError:
    """A lease token we did not sign, or one tampered with."""
    return DomainError(Reason.INVALID_LEASE, "the lease token is not valid")


def lease_superseded(activation_id: str) -> DomainError:
    return DomainError(
        Reason.LEASE_SUPERSEDED,
        "this lease was renewed or released; use the newest lease token",
        {"activation_id": activation_id},
    )


def database_unavailable() -> DomainError:
    """The database cannot be reached (down, starting, stopping, connection lost)."""
    return DomainError(Reason.DATABASE_UNAVAILABLE, "the database is unavailable; retry later")


def internal_error(error_id: str) -> DomainError:
    """An unexpected fault, logged in full under `error_id`."""
    return DomainError(
        Reason.INTERNAL_ERROR, f"unexpected server error {error_id}", {"error_id": error_id}
    )


def external_reference_taken(external_reference: str, line: int) -> DomainError:
    """The reference an order line would attach already names another entitlement."""
    return DomainError(
        Reason.EXTERNAL_REFERENCE_TAKEN,
        f"line {line}: external reference {external_reference!r} is already in use",
        {"external_reference": external_reference, "line": str(line)},
    )


def not_a_trial(entitlement_id: str, line: int) -> DomainError:
    return DomainError(
        Reason.NOT_A_TRIAL,
        f"line {line}: the entitlement is not a trial",
        {"entitlement_id": entitlement_id, "line": str(line)},
    )


def entitlement_perpetual(entitlement_id: str, line: int) -> DomainError:
    return DomainError(
        Reason.ENTITLEMENT_PERPETUAL,
        f"line {line}: a perpetual entitlement cannot be renewed",
        {"entitlement_id": entitlement_id, "line": str(line)},
    )


def seat_minimum(entitlement_id: str, seats: int, line: int) -> DomainError:
    """Removing seats would leave fewer than one of the `seats` there are."""
    return DomainError(
        Reason.SEAT_MINIMUM,
        f"line {line}: removing seats would leave fewer than one of {seats}",
        {"entitlement_id": entitlement_id, "seats": str(seats), "line": str(line)},
    )


def sequence_out_of_range(last_sequence: int) -> DomainError:
    """An `after_sequence` beyond the last event written."""
    return DomainError(
        Reason.SEQUENCE_OUT_OF_RANGE,
        f"after_sequence is beyond the last event ({last_sequence})",
        {"last_sequence": str(last_sequence)},
    )


def server_stopping(last_sequence: int) -> DomainError:
    """A change stream ended by shutdown, after sending up to `last_sequence`."""
    return DomainError(
        Reason.SERVER_STOPPING,
        f"the server is stopping; reconnect with after_sequence {last_sequence}",
        {"last_sequence": str(last_sequence)},
    )


def invalid_invitation() -> DomainError:
    """The same answer for unknown, malformed and mistyped invitation codes."""
    return DomainError(Reason.INVALID_INVITATION, "the invitation code is not valid")


def invitation_redeemed(user_id: str) -> DomainError:
    return DomainError(
        Reason.INVITATION_REDEEMED,
        "this invitation was already used; ask for a new one",
        {"user_id": user_id},
    )


def named_users_exceed_seats(
    entitlement_id: str, seats: int, named_users: int, line: int
) -> DomainError:
    return DomainError(
        Reason.NAMED_USERS_EXCEED_SEATS,
        f"line {line}: {named_users} named users do not fit in {seats} seats",
        {
            "entitlement_id": entitlement_id,
            "seats": str(seats),
            "named_users": str(named_users),
            "line": str(line),
        },
    )


def watch_streams_exhausted(max_streams: int) -> DomainError:
    """A new change stream refused: this process already serves `max_streams` of them."""
    return DomainError(
        Reason.WATCH_STREAMS_EXHAUSTED,
        f"this server already has {max_streams} change streams open, its most; "
        "retry later or on another replica",
        {"max_streams": str(max_streams)},
    )


def transaction_conflict(attempts: int) -> DomainError:
    """A serialization failure or deadlock, after the server's own `attempts`."""
    return DomainError(
        Reason.TRANSACTION_CONFLICT,
        "a concurrent transaction conflicted with this one; nothing was written, retry",
        {"attempts": str(attempts)},
    )


def database_busy(limit: str) -> DomainError:
    """The database did not answer within `limit` (pool_timeout, statement_timeout or
    lock_timeout): overloaded, or a lock held long by another session."""
    return DomainError(
        Reason.DATABASE_BUSY,
        f"the database did not answer in time ({limit}); retry later",
        {"limit": limit},
    )


def signing_key_unavailable() -> DomainError:
    """No key to sign with could be loaded."""
    return DomainError(
        Reason.SIGNING_KEY_UNAVAILABLE, "no signing key could be loaded; retry later"
    )


def token_expired(token_id: str, expire_time: datetime) -> DomainError:
    """A bearer token that is ours and not revoked, but past its end: told apart from an
    unknown one (only its holder can get this answer) so that its connector says what to
    do, create a new token, rather than that its token is wrong."""
    return DomainError(
        Reason.TOKEN_EXPIRED,
        f"the bearer token {token_id} expired at {expire_time.isoformat()}; "
        "create a new one (keyturn tokens create)",
        {"token_id": token_id, "expire_time": expire_time.isoformat()},
    )


def identity_token_expired(user_id: str, expire_time: datetime) -> DomainError:
    """An identity token that is the user's current one but went unused too long: the app
    can tell its user to ask for a new invitation (only the token's holder gets this)."""
    return DomainError(
        Reason.IDENTITY_TOKEN_EXPIRED,
        "this identity token expired unused; ask for a new invitation",
        {"user_id": user_id, "expire_time": expire_time.isoformat()},
    )


def client_certificate_required() -> DomainError:
    """An admin call over a connection without a verified client certificate, where
    mutual TLS is configured for the admin services."""
    return DomainError(
        Reason.CLIENT_CERTIFICATE_REQUIRED,
        "this service needs mutual TLS: call the admin port with a client certificate",
    )


def rate_limited(limit: str, retry_after_seconds: int) -> DomainError:
    """A call refused before it did anything: the `limit` (peer, credential, token,
    failed_credentials) of its caller is used up for the next `retry_after_seconds`."""
    return DomainError(
        Reason.RATE_LIMITED,
        f"too many calls ({limit} limit); retry in {retry_after_seconds} s",
        {"limit": limit, "retry_after_seconds": str(retry_after_seconds)},
        retry_delay_seconds=retry_after_seconds,
    )


def entitlement_suspended(entitlement_id: str, suspend_time: datetime) -> DomainError:
    """A suspended entitlement: reversible, unlike a cancel, so the app can say so."""
    return DomainError(
        Reason.ENTITLEMENT_SUSPENDED,
        "this license is suspended",
        {"entitlement_id": entitlement_id, "suspend_time": suspend_time.isoformat()},
    )


def seat_deactivated(activation_id: str) -> DomainError:
    """A renewal of a seat an administrator took back: told apart from a superseded
    lease so that the app can tell its user why."""
    return DomainError(
        Reason.SEAT_DEACTIVATED,
        "an administrator deactivated this device's seat",
        {"activation_id": activation_id},
    )


def deactivation_limit_reached(limit: int, period: str, retry_time: datetime) -> DomainError:
    """`limit` deactivations within `period` (ISO 8601) already; the next is possible
    at `retry_time`."""
    return DomainError(
        Reason.DEACTIVATION_LIMIT_REACHED,
        f"at most {limit} deactivations per {period}; the next is possible at "
        f"{retry_time.isoformat()}",
        {"limit": str(limit), "period": period, "retry_time": retry_time.isoformat()},
    )


def activation_not_found(activation_id: str) -> DomainError:
    return DomainError(
        Reason.ACTIVATION_NOT_FOUND,
        f"no activation {activation_id!r} on this entitlement",
        {"activation_id": activation_id},
    )


def named_user_not_found(user_id: str) -> DomainError:
    return DomainError(
        Reason.NAMED_USER_NOT_FOUND,
        f"no named user {user_id!r} on this entitlement",
        {"user_id": user_id},
    )


def named_user_exists(entitlement_id: str, email: str) -> DomainError:
    """Another named user of the entitlement already has the email (it is unique there)."""
    return DomainError(
        Reason.NAMED_USER_EXISTS,
        f"another named user of entitlement {entitlement_id!r} has the email {email!r}",
        {"entitlement_id": entitlement_id, "email": email},
    )


def webhook_subscription_not_found(subscription_id: str) -> DomainError:
    return DomainError(
        Reason.WEBHOOK_SUBSCRIPTION_NOT_FOUND,
        f"no webhook subscription {subscription_id!r}",
        {"subscription_id": subscription_id},
    )


def webhook_not_found(webhook_id: str) -> DomainError:
    """A webhook id that is not one of the subscription's, or whose event is not in the log."""
    return DomainError(
        Reason.WEBHOOK_NOT_FOUND,
        f"no event of this subscription has the webhook id {webhook_id!r}",
        {"webhook_id": webhook_id},
    )
