"""The server's certificate and key (and the CA of client certificates) from PEM files,
read again when the files change, so that a rotated certificate is served without a restart.

Transport-neutral on purpose: the gRPC port (api/transport_security.py) and the HTTP
port (api/http_tls.py) both ask `CertificateFiles.latest()` on each new handshake and
compare it with what they serve, so that neither takes a change away from the other.
A pair that does not fit together (a key written before its certificate, half a file)
is never served: until the files agree again the last good pair stays, with one
warning per change seen.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

log = logging.getLogger("keyturn.tls")

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class TlsFileError(ValueError):
    """A file that cannot be served: unreadable, not PEM, or a key for another certificate.
    The message is one line that names the setting."""


@dataclass(frozen=True)
class TlsFiles:
    """Where the PEM files are, and the settings that named them (for the error lines)."""

    cert: Path
    key: Path
    client_ca: Path | None = None
    cert_setting: str = "KEYTURN_TLS_CERT_FILE"
    key_setting: str = "KEYTURN_TLS_KEY_FILE"
    client_ca_setting: str = "KEYTURN_TLS_CLIENT_CA_FILE"


@dataclass(frozen=True)
class TlsMaterial:
    """One consistent read of the files: a certificate chain, its key, the client CAs."""

    cert_chain: bytes
    key: bytes
    client_ca: bytes | None
    names: tuple[str, ...]  # the DNS names (else the common name) of the certificate


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsFileError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None


def _certificates(data: bytes, path: Path, setting: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsFileError(f"{setting}: {path} holds no PEM certificate") from None


def _private_key(data: bytes, path: Path, setting: str) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TlsFileError(
            f"{setting}: {path} is encrypted; give the key without a passphrase"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsFileError(f"{setting}: {path} holds no PEM private key") from None


def names_of(certificate: x509.Certificate) -> tuple[str, ...]:
    """The DNS names a client may check the certificate against (the common name when
    it has no subjectAltName)."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = tuple(san.value.get_values_for_type(x509.DNSName))
        if names:
            return names
    except x509.ExtensionNotFound:
        pass
    common = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return tuple(str(attribute.value) for attribute in common)


def load(files: TlsFiles) -> TlsMaterial:
    """The files' content once it is a certificate chain, the key of its first certificate
    and (if named) CA certificates; TlsFileError naming the setting otherwise."""
    chain = _read(files.cert, files.cert_setting)
    key = _read(files.key, files.key_setting)
    leaf = _certificates(chain, files.cert, files.cert_setting)[0]
    private = _private_key(key, files.key, files.key_setting)
    if private.public_key().public_bytes(*_SPKI) != leaf.public_key().public_bytes(*_SPKI):
        raise TlsFileError(
            f"{files.key_setting}: {files.key} is not the key of the certificate in "
            f"{files.cert} ({files.cert_setting})"
        )
    client_ca = None
    if files.client_ca is not None:
        client_ca = _read(files.client_ca, files.client_ca_setting)
        _certificates(client_ca, files.client_ca, files.client_ca_setting)
    return TlsMaterial(chain, key, client_ca, names_of(leaf))


Stamp = tuple[tuple[int, int, int] | None, ...]


def _stamp(paths: tuple[Path, ...]) -> Stamp:
    """What changes when a file is written or replaced (mtime, size, inode): one stat each,
    cheap enough for every handshake."""
    stamps: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((info.st_mtime_ns, info.st_size, info.st_ino))
    return tuple(stamps)


class CertificateFiles:
    """The current material of `files`, read at construction (TlsFileError if it cannot be
    served) and again whenever a file's stamp changes. Safe to call from any thread: gRPC
    asks from its own."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._paths = tuple(p for p in (files.cert, files.key, files.client_ca) if p is not None)
        self._lock = threading.Lock()
        self._seen = _stamp(self._paths)
        self.current = load(files)

    def latest(self) -> TlsMaterial:
        """The material to serve now: read again when a file changed since the last look and
        the files agree with each other; the last good one otherwise. The same object until
        it changes, so callers compare with `is`."""
        with self._lock:
            stamp = _stamp(self._paths)
            if stamp == self._seen:
                return self.current
            self._seen = stamp
            try:
                material = load(self.files)
            except TlsFileError as exc:
                log.warning(
                    "TLS files changed but cannot be served yet (%s): keeping the last", exc
                )
                return self.current
            if material != self.current:
                self.current = material
                log.info("TLS certificate reloaded from %s", self.files.cert)
            return self.current
