"""Keyed hashing and encryption at rest, all derived from one master secret.

License keys are stored as an HMAC (for lookup) and a Fernet token (for
resend); signing keys as Fernet tokens. Each purpose has its own derived key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MIN_SECRET_LENGTH = 32
MIN_DISTINCT_CHARACTERS = 8
HOW_TO_SET = (
    "set it to a random value of 32+ characters, for example the output of: "
    'python -c "import secrets; print(secrets.token_urlsafe(48))"'
)


class SecretError(Exception):
    """The master secret is missing, too weak, or does not open what it sealed."""


def secret_weakness(secret: str) -> str | None:
    """Why `secret` is too weak to derive keys from, or None.

    Catches the obvious mistakes only (a placeholder, one character typed over and
    over, a short word repeated): too short, too few different characters, or a
    shorter part repeated. A random secret passes: 32 random hex digits (the shortest
    random secret allowed) use fewer than 8 of the 16 symbols once in 30 million.
    """
    if len(secret) < MIN_SECRET_LENGTH:
        return f"too short: {len(secret)} characters, at least {MIN_SECRET_LENGTH}"
    distinct = len(set(secret))
    if distinct < MIN_DISTINCT_CHARACTERS:
        return f"too few different characters: {distinct}, at least {MIN_DISTINCT_CHARACTERS}"
    if any(secret[period:] == secret[:-period] for period in range(1, len(secret) // 2 + 1)):
        return "a shorter part repeated"
    return None


def checked_secret(secret: str, source: str) -> str:
    """`secret`, or SecretError in one line naming `source` and saying how to set one."""
    weakness = secret_weakness(secret)
    if weakness is not None:
        raise SecretError(f"{source} is too weak ({weakness}); {HOW_TO_SET}")
    return secret


def _derive(master: bytes, purpose: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"keyturn", info=purpose.encode()
    ).derive(master)


class Sealer:
    """Hashes and encrypts secrets with keys derived from the master secret."""

    def __init__(self, master_secret: str) -> None:
        checked_secret(master_secret, "the secret key")
        master = master_secret.encode()
        self._hash_key = _derive(master, "license-key-hash")
        self._fernet = Fernet(base64.urlsafe_b64encode(_derive(master, "encryption-at-rest")))
        # The console's session cookies and their CSRF tokens (api/console/session.py):
        # keys of their own, so that nothing sealed at rest opens as a session.
        self._sessions = Fernet(base64.urlsafe_b64encode(_derive(master, "console-session")))
        self._session_mac_key = _derive(master, "console-csrf")

    def hash_secret(self, value: str) -> str:
        """A keyed digest for lookup: equal inputs, equal digests; useless without the key."""
        return hmac.new(self._hash_key, value.encode(), hashlib.sha256).hexdigest()

    def seal(self, plain: bytes) -> bytes:
        return self._fernet.encrypt(plain)

    def unseal(self, sealed: bytes) -> bytes:
        try:
            return self._fernet.decrypt(sealed)
        except InvalidToken as exc:
            raise SecretError(
                "stored data cannot be decrypted with this secret key; is KEYTURN_SECRET_KEY "
                "the one the database was created with?"
            ) from exc

    def seal_session(self, plain: bytes) -> str:
        """A session cookie's value: `plain` encrypted and authenticated."""
        return self._sessions.encrypt(plain).decode()

    def unseal_session(self, sealed: str) -> bytes | None:
        """What `seal_session` sealed; None for a value it did not seal (or altered)."""
        try:
            return self._sessions.decrypt(sealed.encode())
        except (InvalidToken, ValueError):
            return None

    def session_mac(self, value: str) -> str:
        """A keyed digest tying a form's CSRF token to its session."""
        return hmac.new(self._session_mac_key, value.encode(), hashlib.sha256).hexdigest()


def load_or_create_secret_file(path: Path) -> str:
    """The secret kept in `path`, created (mode 0600: this user only) on first use."""
    if path.exists():
        return checked_secret(path.read_text().strip(), f"the secret in {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return load_or_create_secret_file(path)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret
