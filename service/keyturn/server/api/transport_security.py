"""gRPC server credentials from `CertificateFiles`, and the client-certificate rule.

Credentials are dynamic: grpc-core calls the fetcher before each new TLS handshake, and
the fetcher hands it the files' new material when they changed (rotation without a
restart; connections already open keep the certificate they began with). grpc-core
offers TLS 1.2 and 1.3 only.

grpc's Python API either never asks for a client certificate or requires a verified one
for the whole port (a configured CA alone does nothing). Hence mutual TLS lives on a
port of its own, the admin port, and the admin services check that their call came over
a connection whose client certificate was verified.
"""

from __future__ import annotations

from typing import Any

import grpc

from keyturn.server.tls import CertificateFiles, TlsMaterial

# Set by grpc-core on a connection only once the peer's certificate passed verification.
VERIFIED_CLIENT_CERT = "x509_pem_cert"


def _configuration(material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(material.key, material.cert_chain)], root_certificates=material.client_ca
    )


def server_credentials(
    certificates: CertificateFiles, *, require_client_cert: bool = False
) -> grpc.ServerCredentials:
    """TLS with the files' certificate, re-read when they change; with
    `require_client_cert`, a handshake without a certificate from the client CA fails."""

    served = certificates.current

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        nonlocal served
        material = certificates.latest()
        if material is served:
            return None
        served = material
        return _configuration(material)

    return grpc.dynamic_ssl_server_credentials(
        _configuration(certificates.current),
        fetch,  # type: ignore[arg-type]  # None means "keep the current one" (grpc's docs)
        require_client_authentication=require_client_cert,
    )


def has_verified_client_cert(context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    return bool(context.auth_context().get(VERIFIED_CLIENT_CERT))
