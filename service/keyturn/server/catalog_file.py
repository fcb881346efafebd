"""Catalog files: YAML holding the JSON form of the API's Product and Sku messages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from google.protobuf import json_format

from keyturn.fulfillment.v1 import catalog_pb2

from .api.catalog_convert import product_in, sku_in
from .app import catalog
from .app.context import AppContext
from .domain.catalog import Product, Sku
from .domain.errors import DomainError

M = TypeVar("M", catalog_pb2.Product, catalog_pb2.Sku)


class CatalogFileError(Exception):
    """The file cannot be read as a catalog; the message says where and why."""


@dataclass(frozen=True)
class CatalogFile:
    products: list[Product]
    skus: list[Sku]


def _entries(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    entries = data.get(key) or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise CatalogFileError(f"'{key}' must be a list of mappings")
    return entries


def _parse(entry: dict[str, Any], message: M, where: str) -> M:
    try:
        return json_format.ParseDict(entry, message)
    except json_format.ParseError as exc:
        raise CatalogFileError(f"{where}: {exc}") from exc


def read_catalog_file(path: Path) -> CatalogFile:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogFileError(f"{path}: {exc}") from exc
    if not isinstance(data, dict) or not set(data) <= {"products", "skus"}:
        raise CatalogFileError(f"{path}: expected a mapping with 'products' and 'skus'")
    products = [
        product_in(_parse(entry, catalog_pb2.Product(), f"products[{i}]"))
        for i, entry in enumerate(_entries(data, "products"))
    ]
    skus = []
    for i, entry in enumerate(_entries(data, "skus")):
        message = _parse(entry, catalog_pb2.Sku(), f"skus[{i}]")
        try:
            skus.append(sku_in(message))
        except DomainError as exc:
            raise CatalogFileError(f"skus[{i}] ({message.sku_id}): {exc.message}") from exc
    return CatalogFile(products, skus)


async def apply_catalog_file(ctx: AppContext, path: Path) -> CatalogFile:
    """Put every product, then every SKU, replacing what is stored under the same ids."""
    parsed = read_catalog_file(path)
    for product in parsed.products:
        try:
            await catalog.put_product(ctx, product)
        except DomainError as exc:
            raise CatalogFileError(f"product {product.product_id}: {exc.message}") from exc
    for sku in parsed.skus:
        try:
            await catalog.put_sku(ctx, sku)
        except DomainError as exc:
            raise CatalogFileError(f"SKU {sku.sku_id}: {exc.message}") from exc
    return parsed
