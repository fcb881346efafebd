"""Putting a catalog and fulfilling an order through the real API, for test set-up."""

from __future__ import annotations

from pathlib import Path

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.server.api.catalog_convert import product_out, sku_out
from keyturn.server.catalog_file import CatalogFile, read_catalog_file

from .rpc import create_sku, order, product

Metadata = tuple[tuple[str, str], ...]
SHIPPED_CATALOG = Path(__file__).resolve().parents[2] / "examples" / "catalog.yaml"


async def put_shipped_catalog(
    catalog: catalog_pb2_grpc.CatalogServiceStub, auth: Metadata
) -> CatalogFile:
    """`examples/catalog.yaml` as shipped, read with the server's own catalog-file reader
    and put through CatalogService: a broken example file fails the tests that use it."""
    shipped = read_catalog_file(SHIPPED_CATALOG)
    for item in shipped.products:
        await catalog.PutProduct(cat.PutProductRequest(product=product_out(item)), metadata=auth)
    for sku in shipped.skus:
        await catalog.PutSku(cat.PutSkuRequest(sku=sku_out(sku)), metadata=auth)
    return shipped


async def put_catalog(
    catalog: catalog_pb2_grpc.CatalogServiceStub, auth: Metadata, *skus: cat.Sku
) -> None:
    await catalog.PutProduct(cat.PutProductRequest(product=product()), metadata=auth)
    for sku in skus:
        await catalog.PutSku(cat.PutSkuRequest(sku=sku), metadata=auth)


async def new_license(
    catalog: catalog_pb2_grpc.CatalogServiceStub,
    fulfillment: fulfillment_pb2_grpc.FulfillmentServiceStub,
    catalog_auth: Metadata,
    fulfill_auth: Metadata,
    seats: int,
    model: int = cat.LICENSE_MODEL_FLOATING,
) -> ful.Entitlement:
    """A fresh entitlement of `seats` seats, with its license key."""
    sku_id = f"SEATS-{seats}-{model}"
    await put_catalog(catalog, catalog_auth, create_sku(sku_id, seats=seats, model=model))
    response = await fulfillment.FulfillOrder(
        order(f"order-{sku_id}", sku_id), metadata=fulfill_auth
    )
    return response.entitlements[0]
