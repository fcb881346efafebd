"""Resource ids: a prefix and 26 symbols that sort by creation time (ULID layout)."""

from __future__ import annotations

import hmac
import os
from datetime import UTC, datetime, timedelta

from . import base32

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def new_id(prefix: str, now: datetime) -> str:
    """`prefix_` + 48 bits of milliseconds + 80 random bits, in Crockford base32."""
    millis = ((now - _EPOCH) // timedelta(milliseconds=1)) & ((1 << 48) - 1)
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    return f"{prefix}_{base32.encode(value, 26).lower()}"


def same_secret_id(stored: str | None, presented: str) -> bool:
    """Whether a presented id that works as a credential (a lease's or identity token's
    jti) is the stored one, compared in constant time like every token."""
    return stored is not None and hmac.compare_digest(stored.encode(), presented.encode())


def is_id(prefix: str, value: str) -> bool:
    """True when `value` has the shape of an id made by new_id(prefix, ...)."""
    body = value.removeprefix(f"{prefix}_")
    return len(body) == 26 and body != value and all(c in base32.ALPHABET.lower() for c in body)
