"""A device fingerprint that is stable per machine and says nothing about its user."""

from __future__ import annotations

import functools
import hashlib
import uuid
from pathlib import Path

_PREFIX = "keyturn-fingerprint-v1"
_MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))


def _machine_id() -> str:
    """The OS's machine id when readable: survives reboots and network changes."""
    for path in _MACHINE_ID_FILES:
        try:
            value = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if value:
            return value
    return ""


@functools.cache
def default_fingerprint(product_id: str = "") -> str:
    """SHA-256 (hex, 64 characters) of the machine id (or the MAC address without one)
    and the product id.

    Hashed so the raw id never leaves the machine; salted with the product so
    that two vendors cannot match up the machines of their users. The server
    accepts 8 to 256 printable ASCII characters, which a hex digest always is.
    """
    machine = _machine_id() or f"node:{uuid.getnode():012x}"
    return hashlib.sha256(f"{_PREFIX}\0{product_id}\0{machine}".encode()).hexdigest()
