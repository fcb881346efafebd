"""One serving process: `keyturn serve --workers 1`, or one worker of a supervisor.

Alone, it prints the listening line and exports its own metrics. As a worker,
it reports to its supervisor instead (ready, or why it could not start), binds
the supervisor's port beside the other workers, stops when the supervisor goes
away, and leaves the database's migration, the first signing key and the
metrics endpoint to the supervisor. Only worker 0 runs the lapse sweep (see
README "Workers and metrics").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from datetime import timedelta

from prometheus_client import CollectorRegistry

from .bootstrap import build_context, build_dispatcher, build_webhook_sender
from .config import Settings, SettingsError
from .metrics_exporter import MetricsExporter
from .port_reservation import ADMIN_LISTEN, HTTP_LISTEN, check_port_free
from .sealing import SecretError
from .signals import stop_on_signal
from .tls import CertificateFiles, TlsFileError, TlsFiles
from .worker_link import WorkerEnd

log = logging.getLogger("keyturn")


@dataclass(frozen=True)
class WorkerRole:
    """This process is worker `index` of a supervisor, linked to it by `link`."""

    index: int
    link: WorkerEnd

    @property
    def sweeps_lapses(self) -> bool:
        """Worker 0 alone runs the lapse sweep: any worker could (an entitlement is swept
        under its row lock and each lapse is recorded once), but N sweeps on one host would
        only repeat the same reads and take the same locks. The email dispatcher runs in
        every worker instead: claims keep each email to one sender, and a worker sends the
        emails it queued at once, without waiting for another's poll."""
        return self.index == 0


def certificates_of(settings: Settings) -> CertificateFiles | None:
    """The server's TLS files, read and checked (SettingsError naming the file that cannot
    be served); None without TLS."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    files = TlsFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
    try:
        return CertificateFiles(files)
    except TlsFileError as exc:
        raise SettingsError(str(exc)) from None


async def serve(settings: Settings, role: WorkerRole | None = None) -> int:
    """Serve until SIGTERM/SIGINT (or, for a worker, until the supervisor is gone)."""
    from .api.abuse_limits import abuse_limits_of
    from .api.console.session import SessionLimits
    from .api.server import KeyturnServer
    from .api.transport_limits import TransportLimits

    if role is not None and not role.sweeps_lapses:
        settings = settings.model_copy(update={"lapse_sweep_seconds": 0.0})
    stop = stop_on_signal()
    exporter: MetricsExporter | None = None
    try:
        certificates = certificates_of(settings)
        if role is None:
            check_port_free(settings.listen)
            if settings.admin_listen:
                check_port_free(settings.admin_listen, ADMIN_LISTEN)
            if settings.http_listen:
                check_port_free(settings.http_listen, HTTP_LISTEN)
        ctx = await build_context(settings)
        dispatcher = build_dispatcher(ctx, settings) if settings.dispatch_in_server else None
        server = KeyturnServer(
            ctx,
            settings.listen,
            dispatcher,
            webhooks=build_webhook_sender(ctx, settings),
            registry=CollectorRegistry(),
            reuse_port=role is not None,
            worker_id=str(os.getpid()) if role is not None else "",
            reflect_admin_services=settings.reflect_admin_services,
            limits=TransportLimits.from_settings(settings),
            abuse=abuse_limits_of(settings, ctx),
            certificates=certificates,
            admin_listen=settings.admin_listen,
            http_listen=settings.http_listen,
            shutdown_grace_seconds=settings.shutdown_grace_seconds,
            console_sessions=SessionLimits(
                idle=timedelta(minutes=settings.console_session_idle_minutes),
                absolute=timedelta(hours=settings.console_session_hours),
            ),
        )
        if role is None and settings.metrics_listen:
            exporter = MetricsExporter(settings.metrics_listen, server.registry, ctx)
        await server.start()
    except BaseException as exc:
        if role is not None:
            mistake = isinstance(exc, SettingsError | SecretError)
            role.link.failed(str(exc) if mistake else f"{type(exc).__name__}: {exc}")
        if exporter is not None:
            exporter.close()
        raise
    if dispatcher is None and (role is None or role.index == 0):
        log.warning(
            "no email dispatcher runs here (KEYTURN_SMTP_HOST is empty or "
            "KEYTURN_DISPATCH_IN_SERVER=false): credential emails stay queued"
        )
    lifeline = None
    if role is None:
        if exporter is not None:
            print(f"keyturn metrics on {exporter.address}", flush=True)
        if server.admin_address:
            print(f"keyturn admin port (mutual TLS) on {server.admin_address}", flush=True)
        if server.http is not None:
            print(f"keyturn http on {server.http_address}", flush=True)
        # One parseable line, so that scripts and tests can learn a port chosen with :0.
        print(f"keyturn listening on {server.address}", flush=True)
    else:
        role.link.ready(server.port)
        lifeline = asyncio.create_task(_stop_when_supervisor_gone(role.link, stop))
    await stop.wait()
    log.info(
        "shutting down: draining in-flight calls for up to %ss", settings.shutdown_grace_seconds
    )
    await server.stop(settings.shutdown_grace_seconds)
    if exporter is not None:  # after the drain, which scrapes may watch
        exporter.close()
    if lifeline is not None:
        lifeline.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lifeline
    log.info("stopped")
    return 0


async def _stop_when_supervisor_gone(link: WorkerEnd, stop: asyncio.Event) -> None:
    await link.supervisor_gone()
    if not stop.is_set():
        log.warning("the supervisor is gone: shutting down")
        stop.set()
