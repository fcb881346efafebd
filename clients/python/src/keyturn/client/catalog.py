"""CatalogClient: products and SKUs, for the tools that keep the catalog (scope `catalog`)."""

from __future__ import annotations

import functools
from collections.abc import Iterator

from keyturn.fulfillment.v1 import catalog_pb2, catalog_pb2_grpc

from .bearer import BearerClient
from .calls import paged


class CatalogClient(BearerClient):
    """Thin sync wrapper of CatalogService: protobuf messages in and out, typed errors."""

    @functools.cached_property
    def _stub(self) -> catalog_pb2_grpc.CatalogServiceStub:
        return catalog_pb2_grpc.CatalogServiceStub(self._channel)

    def put_product(self, product: catalog_pb2.Product) -> catalog_pb2.Product:
        """Create or replace a product; send the etag you read to replace only that version."""
        request = catalog_pb2.PutProductRequest(product=product)
        return self._call(self._stub.PutProduct, request).product

    def list_products(self, *, page_size: int = 0) -> Iterator[catalog_pb2.Product]:
        """Every product, fetching page after page as the iteration goes."""

        def fetch(token: str) -> tuple[list[catalog_pb2.Product], str]:
            request = catalog_pb2.ListProductsRequest(page_size=page_size, page_token=token)
            response = self._call(self._stub.ListProducts, request)
            return list(response.products), response.next_page_token

        return paged(fetch)

    def put_sku(self, sku: catalog_pb2.Sku) -> catalog_pb2.Sku:
        """Create or replace a SKU; send the etag you read to replace only that version."""
        return self._call(self._stub.PutSku, catalog_pb2.PutSkuRequest(sku=sku)).sku

    def get_sku(self, sku_id: str) -> catalog_pb2.Sku:
        return self._call(self._stub.GetSku, catalog_pb2.GetSkuRequest(sku_id=sku_id)).sku

    def list_skus(self, product_id: str = "", *, page_size: int = 0) -> Iterator[catalog_pb2.Sku]:
        """Every SKU (of one product, when given), page after page."""

        def fetch(token: str) -> tuple[list[catalog_pb2.Sku], str]:
            request = catalog_pb2.ListSkusRequest(
                page_size=page_size, page_token=token, product_id=product_id
            )
            response = self._call(self._stub.ListSkus, request)
            return list(response.skus), response.next_page_token

        return paged(fetch)

    def delete_sku(self, sku_id: str, etag: str = "") -> None:
        """Delete a SKU; with an etag, only the version you read."""
        request = catalog_pb2.DeleteSkuRequest(sku_id=sku_id, etag=etag)
        self._call(self._stub.DeleteSku, request)
