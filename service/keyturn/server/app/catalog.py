"""Catalog use cases: products and SKUs, validated and versioned by etag."""

from __future__ import annotations

import secrets
from dataclasses import replace

from keyturn.server.domain.catalog import Product, Sku
from keyturn.server.domain.errors import (
    etag_mismatch,
    product_not_found,
    raise_if_invalid,
    sku_not_found,
)
from keyturn.server.domain.validation import (
    check_sku_id,
    check_slug,
    validate_product,
    validate_sku_against_product,
    validate_sku_shape,
)
from keyturn.server.store.unit_of_work import DuplicateKeyError

from . import audit
from .context import AppContext
from .paging import next_page_token, page_of, page_request


def _new_etag() -> str:
    return secrets.token_hex(8)


def _check_etag(sent: str, stored: str | None, resource: str) -> None:
    if sent and sent != stored:
        raise etag_mismatch(resource)


async def put_product(ctx: AppContext, product: Product) -> Product:
    raise_if_invalid(validate_product(product))
    try:
        async with ctx.store.write() as tx:
            stored = await tx.catalog.get_product(product.product_id, lock=True)
            _check_etag(product.etag, stored.etag if stored else None, product.product_id)
            now = ctx.clock.now()
            saved = replace(product, etag=_new_etag(), update_time=now)
            await tx.catalog.put_product(saved)
            await audit.record(
                tx,
                now,
                "product.put",
                f"products/{saved.product_id}",
                details={"etag": saved.etag, "created": stored is None},
            )
            return saved
    except DuplicateKeyError as exc:  # created concurrently by another writer
        raise etag_mismatch(product.product_id) from exc


async def list_products(
    ctx: AppContext, page_size: int, page_token: str
) -> tuple[list[Product], str]:
    page = page_request(page_size, page_token, "products")
    async with ctx.store.read() as tx:
        found = await tx.catalog.list_products(page.after, page.size + 1)
    items, more = page_of(found, page.size)
    return items, next_page_token(items[-1].product_id if more else None, "products")


async def put_sku(ctx: AppContext, sku: Sku) -> Sku:
    raise_if_invalid(validate_sku_shape(sku))
    try:
        async with ctx.store.write() as tx:
            product = await tx.catalog.get_product(sku.product_id)
            if product is None:
                raise product_not_found(sku.product_id)
            raise_if_invalid(validate_sku_against_product(sku, product))
            stored = await tx.catalog.get_sku(sku.sku_id, lock=True)
            _check_etag(sku.etag, stored.etag if stored else None, sku.sku_id)
            now = ctx.clock.now()
            saved = replace(sku, etag=_new_etag(), update_time=now)
            await tx.catalog.put_sku(saved)
            await audit.record(
                tx,
                now,
                "sku.put",
                f"skus/{saved.sku_id}",
                details={
                    "product_id": saved.product_id,
                    "etag": saved.etag,
                    "created": stored is None,
                },
            )
            return saved
    except DuplicateKeyError as exc:
        raise etag_mismatch(sku.sku_id) from exc


async def get_sku(ctx: AppContext, sku_id: str) -> Sku:
    raise_if_invalid(check_sku_id("sku_id", sku_id))
    async with ctx.store.read() as tx:
        sku = await tx.catalog.get_sku(sku_id)
    if sku is None:
        raise sku_not_found(sku_id)
    return sku


async def list_skus(
    ctx: AppContext, page_size: int, page_token: str, product_id: str
) -> tuple[list[Sku], str]:
    if product_id:
        raise_if_invalid(check_slug("product_id", product_id, "product id"))
    scope = f"skus:{product_id}"
    page = page_request(page_size, page_token, scope)
    async with ctx.store.read() as tx:
        found = await tx.catalog.list_skus(page.after, page.size + 1, product_id)
    items, more = page_of(found, page.size)
    return items, next_page_token(items[-1].sku_id if more else None, scope)


async def delete_sku(ctx: AppContext, sku_id: str, etag: str) -> None:
    raise_if_invalid(check_sku_id("sku_id", sku_id))
    async with ctx.store.write() as tx:
        stored = await tx.catalog.get_sku(sku_id, lock=True)
        if stored is None:
            raise sku_not_found(sku_id)
        _check_etag(etag, stored.etag, sku_id)
        await tx.catalog.delete_sku(sku_id)
        await audit.record(
            tx,
            ctx.clock.now(),
            "sku.delete",
            f"skus/{sku_id}",
            details={"product_id": stored.product_id, "etag": stored.etag},
        )
