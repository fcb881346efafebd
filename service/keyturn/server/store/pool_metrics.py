"""How full this process's database connection pool is, as Prometheus gauges.

Maintained by SQLAlchemy's pool events rather than read at scrape time: with
several workers the scrape is answered by the supervisor, which cannot look
into the workers' pools, only at the values they keep in the shared metrics
folder. `livesum` adds up the workers that are alive.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine


def instrument_pool(engine: AsyncEngine, registry: CollectorRegistry) -> None:
    """Count connections checked out of `engine`'s pool and publish the pool's size."""
    checked_out = Gauge(
        "keyturn_db_pool_checked_out",
        "Database connections in use (checked out of the pool), summed over live workers",
        registry=registry,
        multiprocess_mode="livesum",
    )
    size = Gauge(
        "keyturn_db_pool_size",
        "Connections the pool keeps open (checked out may exceed it by the pool's overflow), "
        "summed over live workers",
        registry=registry,
        multiprocess_mode="livesum",
    )
    pool_size = getattr(engine.sync_engine.pool, "size", None)
    if callable(pool_size):
        size.set(pool_size())

    def on_checkout(*_: Any) -> None:
        checked_out.inc()

    def on_checkin(*_: Any) -> None:
        checked_out.dec()

    event.listen(engine.sync_engine, "checkout", on_checkout)
    event.listen(engine.sync_engine, "checkin", on_checkin)
