"""uvicorn serving the HTTP port on the gRPC server's own event loop and process.

The socket is bound and listening here, before uvicorn takes it: the port is known
(and taken) at once, and connections made before uvicorn's first accept wait in the
backlog. As a worker of a supervisor it is bound with SO_REUSEPORT beside the
other workers', on the port the supervisor reserved (port_reservation.py), as the
gRPC port is. Signals stay Keyturn's (signals.py): this server never installs its
own handlers, it stops when told.

With an `ssl.SSLContext` (api/http_tls.py) the port speaks TLS only. uvicorn puts
nothing of the TLS session into the ASGI scope, so the protocol here adds the ASGI TLS
extension (`scope["extensions"]["tls"]`) to each request of a TLS connection, with the
client certificate it verified, if any: that is how the call guard learns of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from keyturn.server.port_reservation import socket_address

from .http_tls import client_verified

# uvicorn's own lines ("Started server process"...) say nothing Keyturn's do not.
logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
BACKLOG = 2048


def bind(listen: str, *, reuse_port: bool) -> socket.socket:
    """A listening socket on `listen` (HOST:PORT, PORT may be 0); OSError if it cannot."""
    host, _, port = listen.rpartition(":")
    family, address = socket_address(host, int(port))
    # IPPROTO_TCP named: asyncio turns Nagle off only on sockets that say they are TCP, and
    # with it on each answer (headers, then body) waited ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def tls_extension(connection: ssl.SSLObject) -> dict[str, Any]:
    """The ASGI TLS extension of one connection: its verified client certificate (PEM)
    in `client_cert_chain`, empty when it presented none."""
    chain = []
    if client_verified(connection):
        der = connection.getpeercert(binary_form=True)
        if der is not None:
            chain.append(ssl.DER_cert_to_PEM_cert(der))
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": None,
        "cipher_suite": None,
    }


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol, whose app (one per connection) sees the TLS extension."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        connection = transport.get_extra_info("ssl_object")
        if connection is not None:
            self.app = _with_tls(self.app, tls_extension(connection))


def _with_tls(app: Any, tls: dict[str, Any]) -> Any:
    async def with_tls(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["extensions"] = {**scope.get("extensions", {}), "tls": tls}
        await app(scope, receive, send)

    return with_tls


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # Keyturn's handlers stop both transports; uvicorn's would stop this one only


class HttpServer:
    """`app` served on `listen` until `stop`; `max_connections` as the gRPC port's; over
    TLS only with `tls`."""

    def __init__(
        self,
        app: Any,
        listen: str,
        *,
        reuse_port: bool,
        grace_seconds: float,
        max_connections: int,
        idle_seconds: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._listen = listen
        self._reuse_port = reuse_port
        self._config = uvicorn.Config(
            app,
            http=_Protocol,
            ws="none",
            lifespan="off",
            log_config=None,
            access_log=False,  # the call guard logs one line per call
            server_header=False,
            timeout_graceful_shutdown=int(max(1, round(grace_seconds))),
            limit_concurrency=max_connections,
            timeout_keep_alive=int(max(1, min(idle_seconds or 5, 75))),
            ssl_context_factory=None if tls is None else lambda _config, _default: tls,
        )
        self._server = _Server(self._config)
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    def start(self) -> None:
        sock = bind(self._listen, reuse_port=self._reuse_port)
        self.port = int(sock.getsockname()[1])
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))

    @property
    def address(self) -> str:
        return f"{self._listen.rpartition(':')[0]}:{self.port}"

    async def stop(self) -> None:
        """Stop accepting, let answers in progress finish (up to the grace), then close."""
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task
