"""Putting a catalog and fulfilling an order through the real API, for test set-up."""

from __future__ import annotations

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

from .rpc import create_sku, order, product

Metadata = tuple[tuple[str, str], ...]


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
