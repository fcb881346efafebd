"""CatalogService through a real server: products, SKUs, validation, etags, paging."""

from __future__ import annotations

import grpc
import pytest

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc

from conftest import Tokens
from support.rpc import create_sku, failure_of, product

Catalog = catalog_pb2_grpc.CatalogServiceStub


async def test_products_round_trip_and_page(catalog_stub: Catalog, tokens: Tokens) -> None:
    auth = tokens("catalog")
    for name in ("p-a", "p-b", "p-c"):
        saved = await catalog_stub.PutProduct(
            cat.PutProductRequest(product=product(name)), metadata=auth
        )
        assert saved.product.etag
        assert saved.product.HasField("update_time")
    first = await catalog_stub.ListProducts(cat.ListProductsRequest(page_size=2), metadata=auth)
    assert [p.product_id for p in first.products] == ["p-a", "p-b"]
    assert first.next_page_token
    rest = await catalog_stub.ListProducts(
        cat.ListProductsRequest(page_size=2, page_token=first.next_page_token), metadata=auth
    )
    assert [p.product_id for p in rest.products] == ["p-c"]
    assert rest.next_page_token == ""
    features = {
        f.name: (f.limit if f.HasField("limit") else None)
        for f in rest.products[0].editions[0].features
    }
    assert features == {"export-pdf": None, "projects": 10}


async def test_sku_put_get_list_delete_with_etags(catalog_stub: Catalog, tokens: Tokens) -> None:
    auth = tokens("catalog")
    await catalog_stub.PutProduct(cat.PutProductRequest(product=product()), metadata=auth)
    saved = (
        await catalog_stub.PutSku(
            cat.PutSkuRequest(sku=create_sku("SUB-1Y", seats=2)), metadata=auth
        )
    ).sku
    got = (await catalog_stub.GetSku(cat.GetSkuRequest(sku_id="SUB-1Y"), metadata=auth)).sku
    assert got == saved
    assert got.operations[0].create.seats_per_unit == 2
    assert got.operations[0].create.lease_duration.seconds == 900

    changed = create_sku("SUB-1Y", seats=3)
    changed.etag = saved.etag
    replaced = (await catalog_stub.PutSku(cat.PutSkuRequest(sku=changed), metadata=auth)).sku
    assert replaced.etag != saved.etag

    stale = create_sku("SUB-1Y", seats=4)
    stale.etag = saved.etag
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await catalog_stub.PutSku(cat.PutSkuRequest(sku=stale), metadata=auth)
    assert (failure_of(caught.value).code, failure_of(caught.value).reason) == (
        grpc.StatusCode.ABORTED,
        "ETAG_MISMATCH",
    )

    listed = await catalog_stub.ListSkus(cat.ListSkusRequest(product_id="acme-cad"), metadata=auth)
    assert [s.sku_id for s in listed.skus] == ["SUB-1Y"]
    await catalog_stub.DeleteSku(
        cat.DeleteSkuRequest(sku_id="SUB-1Y", etag=replaced.etag), metadata=auth
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await catalog_stub.GetSku(cat.GetSkuRequest(sku_id="SUB-1Y"), metadata=auth)
    assert (failure_of(caught.value).code, failure_of(caught.value).reason) == (
        grpc.StatusCode.NOT_FOUND,
        "SKU_NOT_FOUND",
    )


async def test_inconsistent_sku_lists_every_violation(
    catalog_stub: Catalog, tokens: Tokens
) -> None:
    auth = tokens("catalog")
    await catalog_stub.PutProduct(cat.PutProductRequest(product=product()), metadata=auth)
    sku = cat.Sku(
        sku_id="BAD",
        product_id="acme-cad",
        operations=[
            cat.Operation(renew=cat.RenewOperation(term="one year")),
            cat.Operation(
                create=cat.CreateOperation(edition_id="standard", seats_per_unit=0, term="P1Y")
            ),
        ],
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await catalog_stub.PutSku(cat.PutSkuRequest(sku=sku), metadata=auth)
    failure = failure_of(caught.value)
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert set(failure.fields) == {
        "sku.operations[0].renew.term",
        "sku.operations[1].create",
        "sku.operations[1].create.seats_per_unit",
    }


async def test_sku_naming_an_unknown_edition_or_product(
    catalog_stub: Catalog, tokens: Tokens
) -> None:
    auth = tokens("catalog")
    await catalog_stub.PutProduct(cat.PutProductRequest(product=product()), metadata=auth)
    sku = create_sku("ULTRA")
    sku.operations[0].create.edition_id = "ultra"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await catalog_stub.PutSku(cat.PutSkuRequest(sku=sku), metadata=auth)
    assert failure_of(caught.value).fields == ["sku.operations[0].create.edition_id"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await catalog_stub.PutSku(
            cat.PutSkuRequest(sku=create_sku("X", product_id="ghost")), metadata=auth
        )
    assert (failure_of(caught.value).code, failure_of(caught.value).reason) == (
        grpc.StatusCode.NOT_FOUND,
        "PRODUCT_NOT_FOUND",
    )
