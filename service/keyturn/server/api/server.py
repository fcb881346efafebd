"""Server assembly: servicers, interceptor, health and reflection on one grpc.aio server."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from google.rpc import error_details_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from prometheus_client import CollectorRegistry

from keyturn.fulfillment.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    fulfillment_pb2,
    fulfillment_pb2_grpc,
)
from keyturn.licensing.v1 import licensing_pb2, licensing_pb2_grpc
from keyturn.server.app.context import AppContext
from keyturn.server.app.delivery import Dispatcher
from keyturn.server.app.lapses import run_lapse_sweeps
from keyturn.server.app.tokens import TokenAuthenticator
from keyturn.server.app.webhook_sender import WebhookSender
from keyturn.server.store.pool_metrics import instrument_pool
from keyturn.server.tls import CertificateFiles

from .abuse_limits import AbuseLimits
from .call_guard import CallGuard
from .connect_app import ConnectApp, endpoints_of
from .console.routes import ConsoleApp
from .console.session import SessionLimits
from .http_port import OPENAPI_PATH, HttpPort
from .http_server import HttpServer
from .http_tls import server_context
from .interceptor import ServiceInterceptor
from .metrics import RpcMetrics, WatchMetrics
from .openapi import openapi_document
from .servicers import CatalogServicer, FulfillmentServicer, LicensingServicer
from .transport_limits import TransportLimits, fit_open_files
from .transport_security import server_credentials

log = logging.getLogger("keyturn.server")

# Keyturn's services by full name; both transports serve every method of each.
SERVICES: dict[str, ServiceDescriptor] = {
    service.full_name: service
    for service in (
        licensing_pb2.DESCRIPTOR.services_by_name["LicensingService"],
        fulfillment_pb2.DESCRIPTOR.services_by_name["FulfillmentService"],
        catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"],
    )
}
LICENSING_SERVICE, FULFILLMENT_SERVICE, CATALOG_SERVICE = SERVICES
ADMIN_SERVICES = (FULFILLMENT_SERVICE, CATALOG_SERVICE)  # for back offices, with an API token
SERVICE_NAMES = (LICENSING_SERVICE, *ADMIN_SERVICES)
# What reflection describes when the admin services are left out: the licensing API,
# health, reflection, and the error details its statuses carry.
PUBLIC_FILES = (
    licensing_pb2.DESCRIPTOR,
    health_pb2.DESCRIPTOR,
    reflection_pb2.DESCRIPTOR,
    error_details_pb2.DESCRIPTOR,
)
READINESS_INTERVAL_SECONDS = 1.0  # health follows the database within about this
TOKEN_USE_DRAIN_SECONDS = 2.0  # at shutdown, for the last uses of each kind of token


def _pool_of(files: Iterable[FileDescriptor]) -> descriptor_pool.DescriptorPool:
    """A pool of just these files and those they import. Reflection answers a lookup of
    any symbol in its pool, listed or not: the default pool (every module imported)
    would still describe the admin services to whoever names them."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        pool.Add(proto)
        added.add(file.name)

    for file in files:
        add(file)
    return pool


def _pending_call_limits(max_streams: int) -> list[tuple[str, int]]:
    """Room for a burst of new calls the size of the stream cap.

    grpc-core queues calls that arrived before the server picked them up and, past
    1,000 queued (its default), refuses more at random with CANCELLED: 2,000 watchers
    reconnecting at once lost about 200. The cap on streams is the limit that counts.
    """
    soft = max(1000, max_streams)
    return [
        ("grpc.server.max_pending_requests", soft),
        ("grpc.server.max_pending_requests_hard_limit", 3 * soft),
    ]


class KeyturnServer:
    """A running Keyturn gRPC server, and (`http_listen`) the same services over HTTP/JSON on
    the same event loop; health follows the database's readiness.

    Alone, it owns its port (SO_REUSEPORT off: a port in use is an error). As one
    worker of a supervisor (`reuse_port`), it binds the port the supervisor reserved,
    beside the other workers, and names itself in a `keyturn-worker` trailer
    (`worker_id`) so that a caller can tell which process answered. Reflection
    describes every service, or (`reflect_admin_services` false) the licensing one
    only; the admin services answer either way. `limits` bound what callers can make
    it hold (default: those of Settings' defaults); `abuse` limits how fast they may call
    (default: no limit, for servers built in tests; `keyturn serve` has Settings').

    With `certificates` it speaks TLS only, on every port. With `admin_listen` too (mutual
    TLS), it also binds that port, where a handshake needs a client certificate from the
    certificates' client CA, and the admin services answer only calls that came with
    one: over the admin port, or over HTTP with one (the HTTP port asks for it without
    requiring it). The public gRPC port keeps serving the licensing API to apps without
    a certificate, as HTTP does.
    """

    def __init__(
        self,
        ctx: AppContext,
        listen: str,
        dispatcher: Dispatcher | None = None,
        *,
        webhooks: WebhookSender | None = None,
        registry: CollectorRegistry | None = None,
        reuse_port: bool = False,
        worker_id: str = "",
        reflect_admin_services: bool = True,
        limits: TransportLimits | None = None,
        abuse: AbuseLimits | None = None,
        certificates: CertificateFiles | None = None,
        admin_listen: str = "",
        http_listen: str = "",
        shutdown_grace_seconds: float = 15.0,
        console_sessions: SessionLimits | None = None,
    ) -> None:
        if admin_listen and (certificates is None or certificates.files.client_ca is None):
            raise ValueError("an admin port needs certificates with a client CA")
        self.ctx = ctx
        self.dispatcher = dispatcher
        self.webhooks = webhooks
        self.registry = registry if registry is not None else CollectorRegistry()
        self._listen = listen
        self._admin_listen = admin_listen
        self._certificates = certificates
        self._http_listen = http_listen
        self.limits = limits if limits is not None else TransportLimits.defaults()
        instrument_pool(ctx.store.engine, self.registry)
        trailer = (("keyturn-worker", worker_id),) if worker_id else ()
        self.authenticator = TokenAuthenticator(ctx.store, ctx.clock)
        # The console's own: it remembers no answer, so a revoked token's session ends at
        # its next request (people clicking make few requests).
        self.console_authenticator = TokenAuthenticator(ctx.store, ctx.clock, ttl_seconds=0.0)
        self.guard = CallGuard(
            self.authenticator,
            RpcMetrics(self.registry),
            passthrough=(grpc.aio.AbortError,),
            require_client_cert=bool(admin_listen),
            abuse=abuse,
        )
        interceptor = ServiceInterceptor(self.guard, trailer)
        self._server = grpc.aio.server(
            interceptors=[interceptor],
            options=[
                ("grpc.so_reuseport", 1 if reuse_port else 0),
                *_pending_call_limits(ctx.feed.max_streams),
                *self.limits.grpc_options(),
            ],
        )
        licensing = LicensingServicer(ctx)
        fulfillment = FulfillmentServicer(ctx, WatchMetrics(self.registry, ctx.clock))
        catalog = CatalogServicer(ctx)
        licensing_pb2_grpc.add_LicensingServiceServicer_to_server(licensing, self._server)
        fulfillment_pb2_grpc.add_FulfillmentServiceServicer_to_server(fulfillment, self._server)
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server(catalog, self._server)
        servicers: dict[ServiceDescriptor, object] = {
            SERVICES[LICENSING_SERVICE]: licensing,
            SERVICES[FULFILLMENT_SERVICE]: fulfillment,
            SERVICES[CATALOG_SERVICE]: catalog,
        }
        self._serving = False
        self.http: HttpServer | None = None
        if http_listen:
            connect = ConnectApp(
                endpoints_of(self.guard, servicers), read_max_bytes=self.limits.max_request_bytes
            )
            port = HttpPort(
                connect,
                lambda: self._serving,
                max_body_bytes=self.limits.max_request_bytes,
                worker_id=worker_id,
                console=ConsoleApp(
                    ctx,
                    self.console_authenticator,
                    limits=console_sessions or SessionLimits(),
                    tls=certificates is not None,
                ),
            )
            port.mount(OPENAPI_PATH, _openapi_once)
            self.http = HttpServer(
                port,
                http_listen,
                reuse_port=reuse_port,
                grace_seconds=shutdown_grace_seconds,
                max_connections=self.limits.max_connections,
                idle_seconds=self.limits.max_connection_idle_seconds,
                tls=None if certificates is None else server_context(certificates),
            )
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        if reflect_admin_services:
            reflection.enable_server_reflection(
                (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
            )
        else:
            reflection.enable_server_reflection(
                (LICENSING_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME),
                self._server,
                pool=_pool_of(PUBLIC_FILES),
            )
        self.port = 0
        self.admin_port = 0
        self._background: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        fit_open_files(self.limits.open_files_needed)
        self.port = self._bind(self._listen, require_client_cert=False)
        if self._admin_listen:
            self.admin_port = self._bind(self._admin_listen, require_client_cert=True)
        self.ctx.feed.start()
        # Numbering rounds from the start, not from this process's first write: events a
        # process that died between commit and numbering left behind get numbered.
        self.ctx.store.start()
        await self._server.start()
        if self.http is not None:
            try:
                self.http.start()
            except OSError as exc:
                await self._server.stop(None)
                raise OSError(f"cannot listen on {self._http_listen}: {exc.strerror}") from exc
        await self._refresh_health()
        self._background.append(asyncio.create_task(self._watch_readiness()))
        if self.ctx.lapse_sweep_seconds > 0:
            sweeps = run_lapse_sweeps(self.ctx, self.ctx.lapse_sweep_seconds)
            self._background.append(asyncio.create_task(sweeps))
        if self.dispatcher is not None:
            self._background.append(asyncio.create_task(self.dispatcher.run()))
        if self.webhooks is not None:
            self._background.append(asyncio.create_task(self.webhooks.run()))

    def _bind(self, listen: str, *, require_client_cert: bool) -> int:
        try:
            if self._certificates is None:
                port = self._server.add_insecure_port(listen)
            else:
                credentials = server_credentials(
                    self._certificates, require_client_cert=require_client_cert
                )
                port = self._server.add_secure_port(listen, credentials)
        except RuntimeError:  # grpc's "Failed to bind": taken, or not an address of this host
            port = 0
        if port == 0:
            raise OSError(f"cannot listen on {listen}: in use, or not an address here")
        return port

    @property
    def address(self) -> str:
        host = self._listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    @property
    def admin_address(self) -> str:
        """HOST:PORT of the mutual-TLS port; empty without one."""
        if not self._admin_listen:
            return ""
        host = self._admin_listen.rpartition(":")[0]
        return f"{host}:{self.admin_port}"

    @property
    def http_address(self) -> str:
        """HOST:PORT of the HTTP port; empty when it is off."""
        return self.http.address if self.http is not None else ""

    async def _set_health(self, serving: bool) -> None:
        self._serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, status)

    async def _refresh_health(self) -> None:
        await self._set_health(await self.ctx.is_ready())

    async def _watch_readiness(self) -> None:
        while True:
            await asyncio.sleep(READINESS_INTERVAL_SECONDS)
            await self._refresh_health()

    async def stop(self, grace: float) -> None:
        """NOT_SERVING first, then let in-flight calls finish (up to `grace`), then close."""
        await self._health.enter_graceful_shutdown()
        self._serving = False
        self.ctx.stopping.set()  # change streams end now rather than hold the drain
        await self.ctx.feed.stop()  # wakes them to see it
        for task in self._background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        http_stopped = self.http.stop() if self.http is not None else asyncio.sleep(0)
        await asyncio.gather(self._server.stop(grace), http_stopped)
        await self.authenticator.uses.close(TOKEN_USE_DRAIN_SECONDS)
        await self.console_authenticator.uses.close(TOKEN_USE_DRAIN_SECONDS)
        await self.ctx.identity_uses.close(TOKEN_USE_DRAIN_SECONDS)
        await self.ctx.close()

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


@functools.cache
def _openapi_once() -> dict[str, Any]:
    """The OpenAPI document: the same for the process's life, so built at the first GET."""
    return openapi_document()
