"""The product map every connector reads: the shipped example maps to SKUs of the shipped
catalog, and a malformed file is refused with a line naming what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyturn.client.connectors.lifecycle import LIFECYCLE_SUFFIXES, lifecycle_sku
from keyturn.client.connectors.product_map import (
    SYSTEMS,
    ProductMapError,
    load_product_map,
    parse_product_map,
)
from keyturn.server.catalog_file import read_catalog_file

from support.catalog import SHIPPED_CATALOG

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "product-map.yaml"


def test_the_example_maps_every_system_to_skus_the_catalog_sells_on_subscription() -> None:
    products = load_product_map(EXAMPLE)
    catalog = {sku.sku_id for sku in read_catalog_file(SHIPPED_CATALOG).skus}
    assert set(products.skus) == set(SYSTEMS)
    for system in SYSTEMS:
        assert products.skus[system], system
        for sku in products.skus[system].values():
            missing = [
                lifecycle_sku(sku, s)
                for s in LIFECYCLE_SUFFIXES
                if lifecycle_sku(sku, s) not in catalog
            ]
            assert sku in catalog, (system, sku)
            assert not missing, (system, sku, missing)


def test_lookup_by_system_and_id_and_numbers_read_as_text() -> None:
    products = parse_product_map("netsuite:\n  1041: CAD-STD-1Y\nchargify:\n  a: ' B '\n")
    assert products.sku("netsuite", "1041") == "CAD-STD-1Y"
    assert products.sku("chargify", "a") == "B"
    assert products.sku("chargify", "1041") is None
    assert products.sku("salesforce", "a") is None
    assert parse_product_map("").skus == {}


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("[1, 2]", "expected sections"),
        ("shopify:\n  a: B\n", "unknown section ['shopify']"),
        ("chargify: [a]\n", "chargify must map product ids to SKUs"),
        ("chargify:\n  a: ''\n", "chargify: a: the SKU must be text"),
        ("chargify:\n  a: [B]\n", "chargify: a: the SKU must be text"),
        ("chargify:\n  true: B\n", "True is not a product id"),
        ("chargify: {a: B", "is not YAML"),
    ],
)
def test_a_malformed_map_is_refused_naming_the_fault(text: str, complaint: str) -> None:
    with pytest.raises(ProductMapError) as caught:
        parse_product_map(text)
    assert complaint in str(caught.value)


def test_an_unreadable_map_names_its_path(tmp_path: Path) -> None:
    with pytest.raises(ProductMapError) as caught:
        load_product_map(tmp_path / "absent.yaml")
    assert str(tmp_path / "absent.yaml") in str(caught.value)
