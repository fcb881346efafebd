"""How the commands that call a running server (`keyturn health`, the connectors) reach it:
plaintext, or TLS from the KEYTURN_TARGET_* settings.

On the server's own host (a container's health check, a connector beside the server)
nothing more than the server's settings is needed: with KEYTURN_TLS_CERT_FILE set, the
command trusts that very certificate and checks the first name on it, so that dialling
127.0.0.1 works with a certificate issued for the public name.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from cryptography import x509

from keyturn.client import tls_credentials

from .config import ENV_PREFIX, Settings, SettingsError
from .tls import names_of


def _read_error(path: Path, field: str, exc: OSError) -> SettingsError:
    return SettingsError(f"{ENV_PREFIX}{field.upper()}: cannot read {path}: {exc.strerror or exc}")


def _first_name(cert_file: Path) -> str:
    try:
        certificates = x509.load_pem_x509_certificates(cert_file.read_bytes())
    except OSError as exc:
        raise _read_error(cert_file, "tls_cert_file", exc) from None
    except ValueError:
        raise SettingsError(
            f"{ENV_PREFIX}TLS_CERT_FILE: {cert_file} holds no PEM certificate"
        ) from None
    names = names_of(certificates[0])
    return names[0] if names else ""


def uses_tls(settings: Settings) -> bool:
    if settings.target_tls != "auto":
        return settings.target_tls == "on"
    return any(
        path is not None
        for path in (settings.target_ca_file, settings.target_cert_file, settings.tls_cert_file)
    )


def open_target(target: str, settings: Settings) -> grpc.Channel:
    """A channel to the server at `target`, over TLS when the settings say so; SettingsError
    for a file that cannot be read."""
    if not uses_tls(settings):
        return grpc.insecure_channel(target)
    trusted, field = settings.target_ca_file, "target_ca_file"
    server_name = settings.target_server_name
    if trusted is None and settings.tls_cert_file is not None:
        trusted, field = settings.tls_cert_file, "tls_cert_file"
        server_name = server_name or _first_name(settings.tls_cert_file)
    try:
        credentials = tls_credentials(
            trusted, cert_file=settings.target_cert_file, key_file=settings.target_key_file
        )
    except OSError as exc:
        path = Path(exc.filename) if exc.filename else Path("?")
        if path == settings.target_cert_file:
            field = "target_cert_file"
        elif path == settings.target_key_file:
            field = "target_key_file"
        raise _read_error(path, field, exc) from None
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(target, credentials, options=options)
