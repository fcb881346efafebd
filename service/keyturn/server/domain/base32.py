"""Crockford base32: the alphabet of license keys and ids (no I, L, O, U)."""

from __future__ import annotations

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_LOOKALIKES = str.maketrans({"O": "0", "I": "1", "L": "1"})


def encode(value: int, length: int) -> str:
    """The last `length` symbols of `value` in base32, most significant first."""
    symbols = []
    for _ in range(length):
        symbols.append(ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(symbols))


def canonical(text: str) -> str:
    """Upper case with look-alike letters folded to the digits they stand for."""
    return text.upper().translate(_LOOKALIKES)
