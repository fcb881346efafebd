"""Keyturn client: take a seat, verify its lease offline, keep it renewed, give it back.

Also thin clients for order connectors (FulfillmentClient) and catalog tools
(CatalogClient). Generated stubs live in `keyturn.licensing.v1` and
`keyturn.fulfillment.v1`.
"""

from .aio import AsyncLicensingClient
from .catalog import CatalogClient
from .conversion import EntitlementInfo
from .errors import (
    AuthenticationError,
    DeactivationLimitReachedError,
    EntitlementCancelledError,
    EntitlementExpiredError,
    EntitlementSuspendedError,
    EtagMismatchError,
    IdentityTokenExpiredError,
    InvalidInvitationError,
    InvalidLeaseError,
    InvalidLicenseKeyError,
    InvalidRequestError,
    InvitationRedeemedError,
    KeyturnError,
    LeaseSupersededError,
    LeaseVerificationError,
    NamedUserExistsError,
    NamedUserNotFoundError,
    NotFoundError,
    OrderConflictError,
    PermissionDeniedError,
    ProductMismatchError,
    RateLimitedError,
    SeatDeactivatedError,
    SeatsExhaustedError,
    TokenExpiredError,
    TransactionConflictError,
    UnavailableError,
    from_rpc_error,
)
from .fingerprint import default_fingerprint
from .fulfillment import FulfillmentClient
from .heartbeat import AsyncHeartbeat, Heartbeat
from .lease import AsyncLease, Lease, LeaseBase
from .licensing import LicensingClient
from .retry import RetryPolicy
from .tls import tls_credentials
from .verification import LeaseVerifier

__all__ = [
    "AsyncHeartbeat",
    "AsyncLease",
    "AsyncLicensingClient",
    "AuthenticationError",
    "CatalogClient",
    "DeactivationLimitReachedError",
    "EntitlementCancelledError",
    "EntitlementExpiredError",
    "EntitlementInfo",
    "EntitlementSuspendedError",
    "EtagMismatchError",
    "FulfillmentClient",
    "Heartbeat",
    "IdentityTokenExpiredError",
    "InvalidInvitationError",
    "InvalidLeaseError",
    "InvalidLicenseKeyError",
    "InvalidRequestError",
    "InvitationRedeemedError",
    "KeyturnError",
    "Lease",
    "LeaseBase",
    "LeaseSupersededError",
    "LeaseVerificationError",
    "LeaseVerifier",
    "LicensingClient",
    "NamedUserExistsError",
    "NamedUserNotFoundError",
    "NotFoundError",
    "OrderConflictError",
    "PermissionDeniedError",
    "ProductMismatchError",
    "RateLimitedError",
    "RetryPolicy",
    "SeatDeactivatedError",
    "SeatsExhaustedError",
    "TokenExpiredError",
    "TransactionConflictError",
    "UnavailableError",
    "default_fingerprint",
    "from_rpc_error",
    "tls_credentials",
]
