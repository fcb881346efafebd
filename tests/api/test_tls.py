"""TLS, mutual TLS for the admin services and certificate rotation, on a real server,
over gRPC and over the HTTP/JSON port (the same certificate files for both).

The certificates are made here (support/certificates.py) for a name that is not the
address dialled, so every client checks the name it was told to. Clients are real
grpc channels and httpx; the handshakes that they cannot show (which certificate was
served, which protocol version was offered) are made with Python's ssl module.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509

from keyturn.client import tls_credentials
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.fulfillment.v1 import fulfillment_pb2_grpc
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.context import AppContext
from keyturn.server.tls import CertificateFiles, TlsFiles

from conftest import Tokens
from support.certificates import SERVER_NAME, Authority, serial_of
from support.http_json import HttpCallError, bearer, post_json
from support.rpc import failure_of

NAME = (("grpc.ssl_target_name_override", SERVER_NAME),)
HANDSHAKE_TIMEOUT = 5.0  # seconds a refused connection takes to show as UNAVAILABLE
SIGNING_KEYS = "/keyturn.licensing.v1.LicensingService/GetSigningKeys"
LIST_ENTITLEMENTS = "/keyturn.fulfillment.v1.FulfillmentService/ListEntitlements"


@dataclass
class Deployment:
    """A running TLS server, its files and the CAs in play."""

    server: KeyturnServer
    folder: Path
    server_ca: Authority
    client_ca: Authority

    @property
    def cert_file(self) -> Path:
        return self.folder / "server.pem"

    @property
    def key_file(self) -> Path:
        return self.folder / "server.key"

    def trust(self, authority: Authority) -> Path:
        return authority.write(self.folder / f"trusted-{id(authority)}.pem")

    def channel(
        self, trusted: Authority, *, admin: bool = False, client: Authority | None = None
    ) -> grpc.aio.Channel:
        """A channel to the public (or admin) port trusting `trusted`, presenting a
        certificate from `client` when given."""
        cert_file = key_file = None
        if client is not None:
            issued = client.client()
            cert_file, key_file = self.folder / "client.pem", self.folder / "client.key"
            issued.write(cert_file, key_file)
        credentials = tls_credentials(self.trust(trusted), cert_file=cert_file, key_file=key_file)
        address = self.server.admin_address if admin else self.server.address
        return grpc.aio.secure_channel(address, credentials, options=NAME)

    def https(self, trusted: Authority, *, client: Authority | None = None) -> httpx.AsyncClient:
        """An HTTPS client of the HTTP port trusting `trusted`, presenting a certificate
        from `client` when given."""
        context = ssl.create_default_context(cafile=self.trust(trusted))
        if client is not None:
            cert_file, key_file = self.folder / "http-client.pem", self.folder / "http-client.key"
            client.client().write(cert_file, key_file)
            context.load_cert_chain(cert_file, key_file)
        return httpx.AsyncClient(
            base_url=f"https://{self.server.http_address}",
            verify=context,
            timeout=HANDSHAKE_TIMEOUT,
            event_hooks={"request": [_as_server_name]},
        )


async def _as_server_name(request: httpx.Request) -> None:
    """Check the certificate against SERVER_NAME (and send it as SNI) dialling 127.0.0.1."""
    request.extensions["sni_hostname"] = SERVER_NAME


async def _deploy(app: AppContext, folder: Path, *, mutual: bool) -> Deployment:
    server_ca, client_ca = Authority("server CA"), Authority("client CA")
    cert_file, key_file = folder / "server.pem", folder / "server.key"
    server_ca.server().write(cert_file, key_file)
    client_ca_file = client_ca.write(folder / "client-ca.pem") if mutual else None
    certificates = CertificateFiles(TlsFiles(cert_file, key_file, client_ca_file))
    server = KeyturnServer(
        app,
        "127.0.0.1:0",
        certificates=certificates,
        admin_listen="127.0.0.1:0" if mutual else "",
        http_listen="127.0.0.1:0",
    )
    await server.start()
    return Deployment(server, folder, server_ca, client_ca)


@pytest.fixture
async def tls(app: AppContext, tmp_path: Path) -> AsyncIterator[Deployment]:
    deployment = await _deploy(app, tmp_path, mutual=False)
    yield deployment
    await deployment.server.stop(grace=1.0)


@pytest.fixture
async def mtls(app: AppContext, tmp_path: Path) -> AsyncIterator[Deployment]:
    deployment = await _deploy(app, tmp_path, mutual=True)
    yield deployment
    await deployment.server.stop(grace=1.0)


async def _signing_keys(channel: grpc.aio.Channel) -> lic.GetSigningKeysResponse:
    stub = licensing_pb2_grpc.LicensingServiceStub(channel)
    return await stub.GetSigningKeys(lic.GetSigningKeysRequest(), timeout=HANDSHAKE_TIMEOUT)


async def _list_entitlements(channel: grpc.aio.Channel, tokens: Tokens) -> object:
    stub = fulfillment_pb2_grpc.FulfillmentServiceStub(channel)
    return await stub.ListEntitlements(
        ful.ListEntitlementsRequest(), metadata=tokens("read"), timeout=HANDSHAKE_TIMEOUT
    )


async def _http_signing_keys(client: httpx.AsyncClient) -> dict[str, object]:
    return await post_json(client, SIGNING_KEYS, {})


async def _http_list_entitlements(client: httpx.AsyncClient, tokens: Tokens) -> dict[str, object]:
    token = tokens("read")[0][1].removeprefix("Bearer ")
    return await post_json(client, LIST_ENTITLEMENTS, {}, headers=bearer(token))


def _http_port(deployment: Deployment) -> int:
    return int(deployment.server.http_address.rpartition(":")[2])


def _handshake(port: int, version: ssl.TLSVersion | None = None, *, alpn: str = "h2") -> bytes:
    """The certificate (DER) the server presents to a new TLS connection offering `alpn`
    (h2, as grpc clients do); with `version`, offering that protocol version only."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols([alpn])
    if version is not None:
        with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = context.maximum_version = version
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # else OpenSSL would not offer TLS 1.1
    with (
        socket.create_connection(("127.0.0.1", port), timeout=HANDSHAKE_TIMEOUT) as raw,
        context.wrap_socket(raw) as tls_socket,
    ):
        served = tls_socket.getpeercert(binary_form=True)
        assert served is not None
        return served


def _serial(der: bytes) -> int:
    return x509.load_der_x509_certificate(der).serial_number


async def test_a_client_trusting_the_ca_calls_licensing_over_tls(tls: Deployment) -> None:
    async with tls.channel(tls.server_ca) as channel:
        response = await _signing_keys(channel)
    assert response.jwks_json


async def test_a_plaintext_client_is_refused(tls: Deployment) -> None:
    async with grpc.aio.insecure_channel(tls.server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _signing_keys(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_trusting_another_ca_is_refused(tls: Deployment) -> None:
    async with tls.channel(Authority("someone else")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _signing_keys(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_tls_1_1_is_refused_and_1_2_accepted(tls: Deployment) -> None:
    port = tls.server.port
    accepted = await asyncio.to_thread(_handshake, port, ssl.TLSVersion.TLSv1_2)
    assert _serial(accepted) == serial_of(tls.cert_file.read_bytes())
    with pytest.raises(ssl.SSLError) as refused:
        await asyncio.to_thread(_handshake, port, ssl.TLSVersion.TLSv1_1)
    # The server hung up on the ClientHello (grpc-core sends no alert): the client did offer
    # 1.1, else OpenSSL would have raised NO_PROTOCOLS_AVAILABLE before sending anything.
    assert isinstance(refused.value, ssl.SSLEOFError), refused.value


async def test_new_files_are_served_to_new_connections_without_a_restart(
    tls: Deployment,
) -> None:
    first = serial_of(tls.cert_file.read_bytes())
    async with tls.channel(tls.server_ca) as channel:
        await _signing_keys(channel)
        renewed_ca = Authority("renewed server CA")
        renewed = renewed_ca.server()
        renewed.write(tls.cert_file, tls.key_file)

        served = await asyncio.to_thread(_handshake, tls.server.port)
        assert _serial(served) == serial_of(renewed.cert) != first
        async with tls.channel(renewed_ca) as fresh:
            assert (await _signing_keys(fresh)).jwks_json
        async with tls.channel(tls.server_ca) as stale:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _signing_keys(stale)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # The connection opened before keeps working with the certificate it began with.
        assert (await _signing_keys(channel)).jwks_json


async def test_a_certificate_without_its_key_keeps_the_last_good_pair(tls: Deployment) -> None:
    first = serial_of(tls.cert_file.read_bytes())
    tls.cert_file.write_bytes(Authority("half rotated").server().cert)  # the key follows later
    served = await asyncio.to_thread(_handshake, tls.server.port)
    assert _serial(served) == first
    async with tls.channel(tls.server_ca) as channel:
        assert (await _signing_keys(channel)).jwks_json
    served = await asyncio.to_thread(_handshake, _http_port(tls), alpn="http/1.1")
    assert _serial(served) == first
    async with tls.https(tls.server_ca) as client:
        assert (await _http_signing_keys(client))["jwksJson"]


async def test_with_mutual_tls_licensing_needs_no_client_certificate(mtls: Deployment) -> None:
    async with mtls.channel(mtls.server_ca) as channel:
        assert (await _signing_keys(channel)).jwks_json


async def test_with_mutual_tls_fulfillment_on_the_public_port_is_refused_with_the_reason(
    mtls: Deployment, tokens: Tokens
) -> None:
    async with mtls.channel(mtls.server_ca, client=mtls.client_ca) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _list_entitlements(channel, tokens)
    failure = failure_of(refused.value)
    assert failure.code == grpc.StatusCode.UNAUTHENTICATED
    assert failure.reason == "CLIENT_CERTIFICATE_REQUIRED"


async def test_the_admin_port_serves_fulfillment_to_a_client_certificate_of_the_ca(
    mtls: Deployment, tokens: Tokens
) -> None:
    async with mtls.channel(mtls.server_ca, admin=True, client=mtls.client_ca) as channel:
        response = await _list_entitlements(channel, tokens)
    assert isinstance(response, ful.ListEntitlementsResponse)


async def test_the_admin_port_still_wants_the_token(mtls: Deployment) -> None:
    async with mtls.channel(mtls.server_ca, admin=True, client=mtls.client_ca) as channel:
        stub = fulfillment_pb2_grpc.FulfillmentServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListEntitlements(ful.ListEntitlementsRequest(), timeout=HANDSHAKE_TIMEOUT)
    assert failure_of(refused.value).reason == "MISSING_CREDENTIALS"


@pytest.mark.parametrize("client", ["none", "another CA"])
async def test_the_admin_port_refuses_a_client_without_a_certificate_of_the_ca(
    mtls: Deployment, tokens: Tokens, client: str
) -> None:
    presented = Authority("stranger") if client == "another CA" else None
    async with mtls.channel(mtls.server_ca, admin=True, client=presented) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _list_entitlements(channel, tokens)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # refused at the handshake


# The HTTP/JSON port: the same files, the same rules.


async def test_an_https_client_trusting_the_ca_calls_licensing(tls: Deployment) -> None:
    async with tls.https(tls.server_ca) as client:
        assert (await _http_signing_keys(client))["jwksJson"]


async def test_the_console_over_https_sets_a_secure_cookie(tls: Deployment) -> None:
    async with tls.https(tls.server_ca) as client:
        page = await client.get("/console/")
    assert page.status_code == 200
    cookie = page.headers["set-cookie"]
    assert cookie.startswith("keyturn_console=")
    assert cookie.endswith("; Path=/console/; HttpOnly; SameSite=Strict; Secure")


async def test_plaintext_http_to_the_tls_port_gets_no_answer(tls: Deployment) -> None:
    base = f"http://{tls.server.http_address}"
    async with httpx.AsyncClient(base_url=base, timeout=HANDSHAKE_TIMEOUT) as client:
        with pytest.raises(httpx.RemoteProtocolError) as refused:
            await client.post(SIGNING_KEYS, json={})
    assert "without sending a response" in str(refused.value)  # the handshake failed: hung up


async def test_an_https_client_trusting_another_ca_is_refused(tls: Deployment) -> None:
    async with tls.https(Authority("someone else")) as client:
        with pytest.raises(httpx.ConnectError) as refused:
            await _http_signing_keys(client)
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)


async def test_the_http_port_refuses_tls_1_1_and_accepts_1_2(tls: Deployment) -> None:
    port = _http_port(tls)
    accepted = await asyncio.to_thread(_handshake, port, ssl.TLSVersion.TLSv1_2, alpn="http/1.1")
    assert _serial(accepted) == serial_of(tls.cert_file.read_bytes())
    with pytest.raises(ssl.SSLError) as refused:
        await asyncio.to_thread(_handshake, port, ssl.TLSVersion.TLSv1_1, alpn="http/1.1")
    assert isinstance(refused.value, ssl.SSLEOFError), refused.value  # as on the gRPC port


async def test_rotated_files_reach_new_connections_of_both_ports_without_a_restart(
    tls: Deployment,
) -> None:
    """HTTP asks the files first, then gRPC: neither takes the change from the other."""
    first = serial_of(tls.cert_file.read_bytes())
    async with tls.https(tls.server_ca) as opened_before:
        await _http_signing_keys(opened_before)
        renewed_ca = Authority("renewed server CA")
        renewed = renewed_ca.server()
        renewed.write(tls.cert_file, tls.key_file)

        http_served = await asyncio.to_thread(_handshake, _http_port(tls), alpn="http/1.1")
        grpc_served = await asyncio.to_thread(_handshake, tls.server.port)
        assert _serial(http_served) == _serial(grpc_served) == serial_of(renewed.cert) != first
        async with tls.https(renewed_ca) as fresh:
            assert (await _http_signing_keys(fresh))["jwksJson"]
        async with tls.https(tls.server_ca) as stale:
            with pytest.raises(httpx.ConnectError) as refused:
                await _http_signing_keys(stale)
        assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
        # The connection opened before keeps its certificate (a new one would fail, as stale).
        assert (await _http_signing_keys(opened_before))["jwksJson"]


async def test_with_mutual_tls_https_licensing_needs_no_client_certificate(
    mtls: Deployment,
) -> None:
    async with mtls.https(mtls.server_ca) as client:
        assert (await _http_signing_keys(client))["jwksJson"]


async def test_with_mutual_tls_https_fulfillment_without_a_client_certificate_is_refused(
    mtls: Deployment, tokens: Tokens
) -> None:
    async with mtls.https(mtls.server_ca) as client:
        with pytest.raises(HttpCallError) as refused:
            await _http_list_entitlements(client, tokens)
    failure = refused.value.failure
    assert (failure.status, failure.code) == (401, grpc.StatusCode.UNAUTHENTICATED)
    assert failure.reason == "CLIENT_CERTIFICATE_REQUIRED"


async def test_with_mutual_tls_https_serves_fulfillment_to_a_client_certificate_of_the_ca(
    mtls: Deployment, tokens: Tokens
) -> None:
    async with mtls.https(mtls.server_ca, client=mtls.client_ca) as client:
        assert await _http_list_entitlements(client, tokens) == {}


async def test_with_mutual_tls_an_https_client_certificate_of_another_ca_is_refused(
    mtls: Deployment, tokens: Tokens
) -> None:
    """The handshake fails, as on the admin port: the connection is cut, never answered
    (under TLS 1.3 the client learns it at its first read)."""
    async with mtls.https(mtls.server_ca, client=Authority("stranger")) as client:
        with pytest.raises(httpx.NetworkError):
            await _http_list_entitlements(client, tokens)


async def test_with_mutual_tls_client_certificates_are_still_checked_after_a_rotation(
    mtls: Deployment, tokens: Tokens
) -> None:
    renewed_ca = Authority("renewed server CA")
    renewed_ca.server().write(mtls.cert_file, mtls.key_file)
    async with mtls.https(renewed_ca, client=mtls.client_ca) as client:
        assert await _http_list_entitlements(client, tokens) == {}
    async with mtls.https(renewed_ca) as client:
        with pytest.raises(HttpCallError) as refused:
            await _http_list_entitlements(client, tokens)
    assert refused.value.failure.reason == "CLIENT_CERTIFICATE_REQUIRED"
    async with mtls.https(renewed_ca, client=Authority("stranger")) as client:
        with pytest.raises(httpx.NetworkError):
            await _http_list_entitlements(client, tokens)
