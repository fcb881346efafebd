"""The HTTP port's `ssl.SSLContext`, from the same `CertificateFiles` as the gRPC ports.

TLS 1.2 minimum, as grpc-core offers. Rotation without a restart: Python calls the
context's `sni_callback` on every ClientHello (with or without SNI), before the server
has sent its certificate; the callback asks the files for their latest material and,
when it changed, points the connection at a fresh context built from it. Connections
already open keep the certificate they began with, as on gRPC.

With a client CA (mutual TLS for the admin services), a client certificate is asked
for but optional: Licensing stays open to apps without one, while a certificate that
is presented must come from the CA or the handshake fails. Whether the connection
carries a verified one is the call guard's to judge (api/http_server.py passes it on).
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator

from keyturn.server.tls import CertificateFiles, TlsMaterial

ALPN = ["http/1.1"]  # uvicorn serves h11 only


@contextlib.contextmanager
def _pem_path(data: bytes) -> Iterator[str]:
    """A path holding `data` for as long as the block runs: `load_cert_chain` reads files
    only. In memory where the system allows (the key is never written to a disk), else a
    private temporary file."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("keyturn-tls")
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.NamedTemporaryFile(prefix="keyturn-tls-", suffix=".pem") as file:
        file.write(data)
        file.flush()
        yield file.name


def context_of(material: TlsMaterial) -> ssl.SSLContext:
    """A server context serving `material`'s chain, asking for an optional client
    certificate from its client CA when it has one."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN)
    with _pem_path(material.cert_chain + b"\n" + material.key) as pem:
        context.load_cert_chain(pem)
    if material.client_ca is not None:
        context.load_verify_locations(cadata=material.client_ca.decode())
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def server_context(certificates: CertificateFiles) -> ssl.SSLContext:
    """The context to listen with: the files' material now, and the latest one for each
    new handshake."""
    first = certificates.current
    listening = context_of(first)
    served: tuple[TlsMaterial, ssl.SSLContext] = (first, listening)

    def on_client_hello(
        connection: ssl.SSLObject, _server_name: str | None, _context: ssl.SSLContext
    ) -> None:
        nonlocal served
        material = certificates.latest()
        if material is not served[0]:
            served = (material, context_of(material))
        if served[1] is not listening:
            connection.context = served[1]

    listening.sni_callback = on_client_hello
    return listening


def client_verified(connection: ssl.SSLObject | None) -> bool:
    """Whether the peer of `connection` presented a certificate that passed verification
    (with CERT_OPTIONAL, one that fails verification fails the handshake instead)."""
    return connection is not None and bool(connection.getpeercert())
