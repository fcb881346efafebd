"""What the abuse limits count, and the fixed windows of failed credentials.

The licensing methods an app calls with a credential are limited per peer and per
credential; a refused credential counts against its peer, with a much smaller budget,
so that guessing keys, invitation codes, leases or API tokens is slow whichever
worker or replica the guesses reach (the failures are counted in the database, in
fixed windows that start at multiples of the window since the epoch).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import Reason

LICENSING = "/keyturn.licensing.v1.LicensingService/"
# Method: the request fields that carry its credential (the first one set counts).
CREDENTIAL_FIELDS: dict[str, tuple[str, ...]] = {
    LICENSING + "ActivateSeat": ("license_key", "identity_token"),
    LICENSING + "CheckLicense": ("license_key", "identity_token"),
    LICENSING + "RedeemInvitation": ("invitation_code",),
    LICENSING + "RenewLease": ("lease_token",),
}
# Answers that say the credential itself was wrong: a guess that missed.
FAILED_CREDENTIAL_REASONS = frozenset(
    {
        Reason.INVALID_LICENSE_KEY,
        Reason.INVALID_INVITATION,
        Reason.INVALID_LEASE,
        Reason.INVALID_TOKEN,
    }
)
MAX_PEER_LENGTH = 64  # longer peer names (a forged header) are cut to this
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def is_limited_per_peer(method: str) -> bool:
    return method in CREDENTIAL_FIELDS


def carries_credential(method: str) -> bool:
    """Whether a call of `method` presents a credential that can be wrong: the limited
    licensing methods, ReleaseSeat (a lease) and every admin method (an API token).
    A peer over its failure budget is refused these, and only these."""
    return (
        method in CREDENTIAL_FIELDS
        or method == LICENSING + "ReleaseSeat"
        or not method.startswith(LICENSING)
    )


def credential_of(method: str, request: Any) -> str:
    """The credential a licensing call carries, "" if none (or not a licensing call)."""
    for field in CREDENTIAL_FIELDS.get(method, ()):
        value = getattr(request, field, "")
        if isinstance(value, str) and value:
            return value
    return ""


def peer_name(peer: str) -> str:
    """The peer's address without its port: gRPC's `ipv4:10.0.0.7:5123` and
    `ipv6:[::1]:5123`, HTTP's `10.0.0.7:5123` and `::1:5123` count as their host."""
    for prefix in ("ipv4:", "ipv6:"):
        peer = peer.removeprefix(prefix)
    if peer.startswith("["):
        peer = peer[1:].split("]", 1)[0]
    elif ":" in peer:
        peer = peer.rsplit(":", 1)[0]
    return peer[:MAX_PEER_LENGTH]


def forwarded_peer(value: str) -> str:
    """The client a proxy names in an X-Forwarded-For style header: the last entry, the
    one the nearest proxy (the one Keyturn trusts) appended; "" if none."""
    last = value.rsplit(",", 1)[-1].strip()
    return last[:MAX_PEER_LENGTH]


def window_start(now: datetime, window: timedelta) -> datetime:
    """The start of the fixed window that holds `now`."""
    seconds = window.total_seconds()
    elapsed = (now - EPOCH).total_seconds()
    return EPOCH + timedelta(seconds=math.floor(elapsed / seconds) * seconds)


def seconds_until(now: datetime, end: datetime) -> int:
    """Whole seconds to wait from `now` until `end`, at least 1 (a Retry-After value)."""
    return max(1, math.ceil((end - now).total_seconds()))
