"""License keys and invitation codes: 125 random bits and a 25-bit checksum.

The checksum lets a typo be rejected before any database lookup; each kind
has its own checksum, so a license key is never a valid invitation code.
Format: `XXXXX-XXXXX-XXXXX-XXXXX-XXXXX-CCCCC` in Crockford base32.
"""

from __future__ import annotations

import hashlib
import os

from . import base32

BODY_SYMBOLS = 25
CHECK_SYMBOLS = 5
_KEY_SYMBOLS = BODY_SYMBOLS + CHECK_SYMBOLS
_ALLOWED = frozenset(base32.ALPHABET)


LICENSE_KEY = b"keyturn-license-key:"
INVITATION_CODE = b"keyturn-invitation-code:"


def _checksum(body: str, kind: bytes) -> str:
    digest = int.from_bytes(hashlib.sha256(kind + body.encode()).digest()[:4])
    return base32.encode(digest >> 7, CHECK_SYMBOLS)


def _format(symbols: str) -> str:
    return "-".join(symbols[i : i + 5] for i in range(0, len(symbols), 5))


def _generate(kind: bytes) -> str:
    body = base32.encode(int.from_bytes(os.urandom(16), "big"), BODY_SYMBOLS)
    return _format(body + _checksum(body, kind))


def generate_license_key() -> str:
    """A new random license key, formatted for people."""
    return _generate(LICENSE_KEY)


def generate_invitation_code() -> str:
    """A new random invitation code, formatted for people."""
    return _generate(INVITATION_CODE)


def normalize_license_key(text: str) -> str | None:
    """The canonical form of a key as typed (case, dashes, spaces and look-alikes
    do not matter), or None when it is malformed or fails its checksum."""
    return _normalize(text, LICENSE_KEY)


def normalize_invitation_code(text: str) -> str | None:
    """The canonical form of an invitation code as typed, or None when it is not one."""
    return _normalize(text, INVITATION_CODE)


def _normalize(text: str, kind: bytes) -> str | None:
    if len(text) > 100 or not text.isascii():  # some non-ASCII letters upper-case to ASCII
        return None
    symbols = base32.canonical("".join(text.split()).replace("-", ""))
    if len(symbols) != _KEY_SYMBOLS or not _ALLOWED.issuperset(symbols):
        return None
    body, check = symbols[:BODY_SYMBOLS], symbols[BODY_SYMBOLS:]
    if _checksum(body, kind) != check:
        return None
    return _format(symbols)
