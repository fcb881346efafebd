"""The Prometheus endpoint (KEYTURN_METRICS_LISTEN): HTTP on its own port, GET /metrics.

One process answers scrapes. Alone, the server exports its own registry. With
several workers, the supervisor exports what the workers wrote to the shared
PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode: counters and
histograms summed over every worker that ever ran, gauges by their own
`multiprocess_mode`), so the one port shows all of them.

Both add the database gauges (seats in use, queued emails, newest event), read
at scrape time. The HTTP server runs in prometheus_client's thread; the reads
run on the process's event loop, where its database engine lives.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .app.context import AppContext
from .app.gauges import read_database_gauges

log = logging.getLogger("keyturn.metrics")
SCRAPE_READ_TIMEOUT_SECONDS = 5.0


class DatabaseGaugeCollector(Collector):
    """Reads the database gauges at every scrape; `keyturn_database_up` 0 when it cannot."""

    def __init__(self, ctx: AppContext, loop: asyncio.AbstractEventLoop) -> None:
        self._ctx = ctx
        self._loop = loop

    def collect(self) -> Iterable[Metric]:
        future = asyncio.run_coroutine_threadsafe(read_database_gauges(self._ctx), self._loop)
        try:
            gauges = future.result(SCRAPE_READ_TIMEOUT_SECONDS)
        except Exception:
            future.cancel()
            log.warning("cannot read the database gauges for this scrape", exc_info=True)
            yield _gauge("keyturn_database_up", "1 when this scrape read the database", 0)
            return
        yield _gauge("keyturn_database_up", "1 when this scrape read the database", 1)
        yield _gauge(
            "keyturn_seats_in_use",
            "Live activations of every entitlement (floating: lease unexpired or within the "
            "lapse grace; node-locked: not released)",
            gauges.seats_in_use,
        )
        yield _gauge(
            "keyturn_outbox_queued_messages",
            "Credential emails waiting in the outbox (due or waiting for a retry)",
            gauges.queued_messages,
        )
        yield _gauge(
            "keyturn_events_last_sequence",
            "Sequence of the newest entitlement event (0: none yet)",
            gauges.last_event_sequence,
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def add_multiprocess_collector(registry: CollectorRegistry, folder: Path) -> None:
    """Adds to `registry` what every worker wrote into `folder` (PROMETHEUS_MULTIPROC_DIR)."""
    MultiProcessCollector(registry, path=str(folder))  # type: ignore[no-untyped-call]


class MetricsExporter:
    """`registry` plus the database gauges, served on `listen` until closed."""

    def __init__(self, listen: str, registry: CollectorRegistry, ctx: AppContext) -> None:
        registry.register(DatabaseGaugeCollector(ctx, asyncio.get_running_loop()))
        host, _, port = listen.rpartition(":")
        self._host = host
        self._httpd, self._thread = start_http_server(
            int(port), host.strip("[]"), registry=registry
        )

    @property
    def address(self) -> str:
        return f"{self._host}:{self._httpd.server_port}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
