"""Certificates made by the tests (cryptography): a CA, server and client certificates
it issues, written as PEM files the way a vendor's deployment would have them."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAME = "keyturn.example.test"  # not the address the tests dial: names are checked


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM."""

    cert: bytes
    key: bytes

    def write(self, cert_file: Path, key_file: Path) -> None:
        """Replace both files as rotation tools do: a new file renamed over the old one."""
        for path, data in ((cert_file, self.cert), (key_file, self.key)):
            fresh = path.with_name(path.name + ".new")
            fresh.write_bytes(data)
            os.replace(fresh, path)


class Authority:
    """A self-signed CA that issues server and client certificates."""

    def __init__(self, name: str) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self._certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert = _pem(self._certificate)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.cert)
        return path

    def _issue(self, common_name: str, usage: x509.ObjectIdentifier, dns: list[str]) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self._certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if dns:
            names = [x509.DNSName(name) for name in dns]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return Issued(_pem(builder.sign(self._key, hashes.SHA256())), _pem_key(key))

    def server(self, name: str = SERVER_NAME) -> Issued:
        return self._issue(name, ExtendedKeyUsageOID.SERVER_AUTH, [name])

    def client(self, name: str = "back-office") -> Issued:
        return self._issue(name, ExtendedKeyUsageOID.CLIENT_AUTH, [])


def serial_of(cert_pem: bytes) -> int:
    return x509.load_pem_x509_certificate(cert_pem).serial_number
