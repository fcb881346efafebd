"""What the gRPC transport measures: every call, and how change streams keep up.

The metric objects belong to one registry per server, so that an in-process
server (tests) starts from zero; with several workers each process writes its
values to the shared PROMETHEUS_MULTIPROC_DIR and the supervisor adds them up.
Only Keyturn's own services are counted (health checks and reflection are not).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from keyturn.server.app.event_views import EventView
from keyturn.server.clock import Clock

# Delivery lag: from well under one poll interval (0.5 s) to a consumer many seconds behind.
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def split_method(method: str) -> tuple[str, str]:
    """'/pkg.Service/Method' -> ('pkg.Service', 'Method')."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


class RpcMetrics:
    """Calls by method, status code and ErrorInfo reason, and their duration."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._calls = Counter(
            "keyturn_rpc_calls",
            "Finished calls by service, method, gRPC status code and ErrorInfo reason "
            "(empty for OK and for calls cancelled by the client)",
            ["service", "method", "code", "reason"],
            registry=registry,
        )
        self._duration = Histogram(
            "keyturn_rpc_duration_seconds",
            "Time from the call's arrival to its last message (streams: their whole life)",
            ["service", "method", "code"],
            registry=registry,
        )

    def observe(self, method: str, code: str, reason: str, seconds: float) -> None:
        service, name = split_method(method)
        self._calls.labels(service, name, code, reason).inc()
        self._duration.labels(service, name, code).observe(seconds)


class WatchMetrics:
    """How change streams keep up with the event log.

    - open streams (`keyturn_watch_streams_open`, summed over live workers);
    - the highest sequence any stream delivered (`keyturn_watch_delivered_sequence`);
      compared with `keyturn_events_last_sequence` it says how many events the most
      advanced consumer has not received yet;
    - delivery lag (`keyturn_watch_delivery_lag_seconds`): for each event written after
      its stream opened, the seconds from the event's create_time to its delivery. Events
      replayed from history are left out: their age says nothing about the stream.
    """

    def __init__(self, registry: CollectorRegistry, clock: Clock) -> None:
        self._clock = clock
        self._highest = 0
        self._open = Gauge(
            "keyturn_watch_streams_open",
            "WatchEntitlementEvents streams open now",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._delivered = Gauge(
            "keyturn_watch_delivered_sequence",
            "Highest event sequence delivered on any change stream (0: none yet)",
            registry=registry,
            multiprocess_mode="max",
        )
        self._lag = Histogram(
            "keyturn_watch_delivery_lag_seconds",
            "Seconds from an event's create_time to its delivery on a stream that was "
            "already open when the event was written",
            registry=registry,
            buckets=LAG_BUCKETS,
        )

    async def track(self, views: AsyncIterator[EventView]) -> AsyncGenerator[EventView, None]:
        """`views` unchanged, counted on the way out."""
        opened = self._clock.now()
        self._open.inc()
        try:
            async for view in views:
                self._delivered_one(view.event.sequence, view.event.create_time, opened)
                yield view
        finally:
            self._open.dec()

    def _delivered_one(self, sequence: int, create_time: datetime, opened: datetime) -> None:
        now = self._clock.now()
        if sequence > self._highest:
            self._highest = sequence
            self._delivered.set(sequence)
        if create_time >= opened:
            self._lag.observe(max(0.0, (now - create_time).total_seconds()))
