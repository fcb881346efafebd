"""Channel credentials for a Keyturn server that speaks TLS, from PEM files.

A thin layer over `grpc.ssl_channel_credentials`, which wants the files' bytes: the
CA to trust (else gRPC's default roots, as for a certificate from a public CA) and,
for the admin port of a server that requires mutual TLS, the client's certificate
and key.
"""

from __future__ import annotations

from pathlib import Path

import grpc


def tls_credentials(
    ca_file: str | Path | None = None,
    *,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
) -> grpc.ChannelCredentials:
    """Credentials for `credentials=` of every client: trust the CA certificates in
    `ca_file` (PEM), else gRPC's default roots (its bundled public CAs, or the file that
    GRPC_DEFAULT_SSL_ROOTS_FILE_PATH names); present `cert_file`/`key_file` (PEM, both
    or neither) for mutual TLS. OSError when a file cannot be read."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("give cert_file and key_file together, or neither")
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca_file).read_bytes() if ca_file is not None else None,
        private_key=Path(key_file).read_bytes() if key_file is not None else None,
        certificate_chain=Path(cert_file).read_bytes() if cert_file is not None else None,
    )
