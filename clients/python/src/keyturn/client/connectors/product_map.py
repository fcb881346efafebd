"""The vendor's map from each billing system's product identifiers to base SKUs.

One YAML file (`KEYTURN_PRODUCT_MAP`, example in examples/product-map.yaml) with
one section per system, each `PRODUCT_ID: BASE_SKU`:

    salesforce:        # Product2.ProductCode
      CAD-STD: CAD-STD-1Y
    netsuite:          # the item's internal id
      "1234": CAD-STD-1Y
    chargify:          # the product's handle
      acme-cad-standard: CAD-STD-1Y

A product the map does not name is not guessed: the connector refuses the order
in the way that makes its system retry and show it, so adding the product to the
map (and restarting the connector) lets the next retry through.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import yaml

SYSTEMS = ("salesforce", "netsuite", "chargify")


class ProductMapError(ValueError):
    """The map file cannot be read, or is not of the documented form."""


@dataclass(frozen=True)
class ProductMap:
    """Base SKU by system and product id."""

    skus: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def sku(self, system: str, product_id: str) -> str | None:
        """The base SKU `system` sells as `product_id`, or None when the map lacks it."""
        return self.skus.get(system, {}).get(product_id)


def parse_product_map(text: str, origin: str = "the product map") -> ProductMap:
    """A map from its YAML text; ProductMapError naming what is wrong."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProductMapError(f"{origin} is not YAML: {exc}") from None
    if document is None:
        return ProductMap()
    if not isinstance(document, dict):
        raise ProductMapError(f"{origin}: expected sections {', '.join(SYSTEMS)}")
    unknown = sorted(str(name) for name in document if name not in SYSTEMS)
    if unknown:
        raise ProductMapError(f"{origin}: unknown section {unknown}; choose from {SYSTEMS}")
    skus: dict[str, Mapping[str, str]] = {}
    for system, section in document.items():
        skus[system] = MappingProxyType(_section(system, section or {}, origin))
    return ProductMap(MappingProxyType(skus))


def _section(system: str, section: object, origin: str) -> dict[str, str]:
    if not isinstance(section, dict):
        raise ProductMapError(f"{origin}: {system} must map product ids to SKUs")
    entries: dict[str, str] = {}
    for product_id, sku in section.items():
        if isinstance(product_id, bool) or not isinstance(product_id, str | int):
            raise ProductMapError(f"{origin}: {system}: {product_id!r} is not a product id")
        if not isinstance(sku, str) or not sku.strip():
            raise ProductMapError(f"{origin}: {system}: {product_id}: the SKU must be text")
        entries[str(product_id)] = sku.strip()
    return entries


def load_product_map(path: str | Path) -> ProductMap:
    """The map in file `path`; ProductMapError when it cannot be read or is malformed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ProductMapError(f"cannot read the product map {path}: {exc.strerror}") from None
    return parse_product_map(text, origin=str(path))
