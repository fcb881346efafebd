"""Products and SKUs."""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from keyturn.server.domain.catalog import Product, Sku

from .codec import editions_from_json, editions_to_json, operation_from_json, operation_to_json
from .tables import products, skus
from .upsert import upsert


def _product(row: RowMapping) -> Product:
    return Product(
        product_id=row["product_id"],
        display_name=row["display_name"],
        editions=editions_from_json(row["editions"]),
        etag=row["etag"],
        update_time=row["update_time"],
    )


def _sku(row: RowMapping) -> Sku:
    return Sku(
        sku_id=row["sku_id"],
        product_id=row["product_id"],
        display_name=row["display_name"],
        operations=tuple(operation_from_json(op) for op in row["operations"]),
        etag=row["etag"],
        update_time=row["update_time"],
    )


class CatalogRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._db = connection

    async def get_product(self, product_id: str, lock: bool = False) -> Product | None:
        query = select(products).where(products.c.product_id == product_id)
        if lock:
            query = query.with_for_update()
        row = (await self._db.execute(query)).mappings().first()
        return None if row is None else _product(row)

    async def put_product(self, product: Product) -> None:
        await upsert(
            self._db,
            products,
            {
                "product_id": product.product_id,
                "display_name": product.display_name,
                "editions": editions_to_json(product.editions),
                "etag": product.etag,
                "update_time": product.update_time,
            },
            key=["product_id"],
        )

    async def list_products(self, after: str, limit: int) -> list[Product]:
        query = (
            select(products)
            .where(products.c.product_id > after)
            .order_by(products.c.product_id)
            .limit(limit)
        )
        return [_product(row) for row in (await self._db.execute(query)).mappings()]

    async def get_sku(self, sku_id: str, lock: bool = False) -> Sku | None:
        query = select(skus).where(skus.c.sku_id == sku_id)
        if lock:
            query = query.with_for_update()
        row = (await self._db.execute(query)).mappings().first()
        return None if row is None else _sku(row)

    async def get_skus(self, sku_ids: set[str]) -> dict[str, Sku]:
        rows = (await self._db.execute(select(skus).where(skus.c.sku_id.in_(sku_ids)))).mappings()
        return {row["sku_id"]: _sku(row) for row in rows}

    async def put_sku(self, sku: Sku) -> None:
        await upsert(
            self._db,
            skus,
            {
                "sku_id": sku.sku_id,
                "product_id": sku.product_id,
                "display_name": sku.display_name,
                "operations": [operation_to_json(op) for op in sku.operations],
                "etag": sku.etag,
                "update_time": sku.update_time,
            },
            key=["sku_id"],
        )

    async def list_skus(self, after: str, limit: int, product_id: str = "") -> list[Sku]:
        query = select(skus).where(skus.c.sku_id > after)
        if product_id:
            query = query.where(skus.c.product_id == product_id)
        query = query.order_by(skus.c.sku_id).limit(limit)
        return [_sku(row) for row in (await self._db.execute(query)).mappings()]

    async def delete_sku(self, sku_id: str) -> None:
        await self._db.execute(delete(skus).where(skus.c.sku_id == sku_id))

    async def count_skus_of(self, product_id: str) -> int:
        query = select(func.count()).select_from(skus).where(skus.c.product_id == product_id)
        return int((await self._db.execute(query)).scalar_one())
