"""Fulfilled orders, keyed by (source, order_id)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from keyturn.server.domain.orders import LineResult, OrderRequest

from .codec import order_from_json, order_to_json, results_from_json, results_to_json
from .tables import orders


@dataclass(frozen=True)
class StoredOrder:
    request: OrderRequest
    fingerprint: str
    results: tuple[LineResult, ...]
    create_time: datetime


class OrderRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._db = connection

    async def get(self, source: str, order_id: str) -> StoredOrder | None:
        query = select(orders).where(orders.c.source == source, orders.c.order_id == order_id)
        row = (await self._db.execute(query)).mappings().first()
        if row is None:
            return None
        return StoredOrder(
            request=order_from_json(row["request"]),
            fingerprint=row["fingerprint"],
            results=results_from_json(row["results"]),
            create_time=row["create_time"],
        )

    async def add(self, order: StoredOrder) -> None:
        """Insert the order; a concurrent insert of the same key raises IntegrityError."""
        await self._db.execute(
            insert(orders).values(
                source=order.request.source,
                order_id=order.request.order_id,
                fingerprint=order.fingerprint,
                request=order_to_json(order.request),
                results=results_to_json(order.results),
                create_time=order.create_time,
            )
        )

    async def set_results(
        self, source: str, order_id: str, results: tuple[LineResult, ...]
    ) -> None:
        await self._db.execute(
            update(orders)
            .where(orders.c.source == source, orders.c.order_id == order_id)
            .values(results=results_to_json(results))
        )
