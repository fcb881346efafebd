"""The SKUs a subscription's later orders name, shared by every connector.

A connector maps the billing system's product to a base SKU (the create), and
every later change of that subscription to `BASE:SUFFIX`. Those derived SKUs
are ordinary catalog SKUs, so the catalog alone says what each change does (a
renewal's term, seats per unit, the edition switched to); no connector guesses
from the base SKU. examples/catalog.yaml carries all of them for its base SKUs.
"""

from __future__ import annotations

RENEW = "renew"
ADD_SEATS = "add-seats"
REMOVE_SEATS = "remove-seats"
SWITCH = "switch"
CANCEL = "cancel"
SUSPEND = "suspend"
REINSTATE = "reinstate"
LIFECYCLE_SUFFIXES = (RENEW, ADD_SEATS, REMOVE_SEATS, SWITCH, CANCEL, SUSPEND, REINSTATE)


def lifecycle_sku(base_sku: str, suffix: str) -> str:
    """The SKU a later change of a subscription sold as `base_sku` orders."""
    return f"{base_sku}:{suffix}"


def seat_change_sku(base_sku: str, delta: int) -> tuple[str, int]:
    """The SKU and quantity of a change of `delta` units (non-zero): more or fewer seats."""
    if delta == 0:
        raise ValueError("a seat change of zero units orders nothing")
    suffix = ADD_SEATS if delta > 0 else REMOVE_SEATS
    return lifecycle_sku(base_sku, suffix), abs(delta)
