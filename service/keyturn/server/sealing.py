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


class SecretError(Exception):
    """The master secret is missing, too short, or does not open what it sealed."""


def _derive(master: bytes, purpose: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"keyturn", info=purpose.encode()
    ).derive(master)


class Sealer:
    """Hashes and encrypts secrets with keys derived from the master secret."""

    def __init__(self, master_secret: str) -> None:
        if len(master_secret) < MIN_SECRET_LENGTH:
            raise SecretError(f"the secret key must be at least {MIN_SECRET_LENGTH} characters")
        master = master_secret.encode()
        self._hash_key = _derive(master, "license-key-hash")
        self._fernet = Fernet(base64.urlsafe_b64encode(_derive(master, "encryption-at-rest")))

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


def load_or_create_secret_file(path: Path) -> str:
    """The secret kept in `path`, created (mode 0600) on first use."""
    if path.exists():
        text = path.read_text().strip()
        if len(text) < MIN_SECRET_LENGTH:
            raise SecretError(f"{path} does not hold a secret of {MIN_SECRET_LENGTH}+ characters")
        return text
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return load_or_create_secret_file(path)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret
