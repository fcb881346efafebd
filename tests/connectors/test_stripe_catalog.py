"""The shipped catalog carries, for each base SKU it sells on subscription (the Stripe lookup
keys), the seven SKUs that a subscription's later changes order, and each does what its
change means: a renewal adds the base SKU's term, a quantity change moves seats by the
base's seats per unit, a switch goes to the base's edition, a cancellation cancels, a
suspension suspends and a reinstatement reinstates."""

from __future__ import annotations

from connector_harness import PRO, STANDARD

from keyturn.client.connectors.lifecycle import (
    ADD_SEATS,
    CANCEL,
    LIFECYCLE_SUFFIXES,
    REINSTATE,
    REMOVE_SEATS,
    RENEW,
    SUSPEND,
    SWITCH,
    lifecycle_sku,
)
from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.server.api.catalog_convert import sku_out
from keyturn.server.catalog_file import read_catalog_file

from support.catalog import SHIPPED_CATALOG
from support.rpc import PRODUCT_ID


def shipped_skus() -> dict[str, cat.Sku]:
    return {sku.sku_id: sku_out(sku) for sku in read_catalog_file(SHIPPED_CATALOG).skus}


def test_the_stripe_lookup_keys_are_the_documented_ones() -> None:
    derived = {sku_id.rpartition(":") for sku_id in shipped_skus() if ":" in sku_id}
    assert {key for key, _, _ in derived} == {STANDARD, PRO}
    assert {suffix for _, _, suffix in derived} == set(LIFECYCLE_SUFFIXES)


def test_each_lifecycle_sku_does_what_its_event_means() -> None:
    skus = shipped_skus()
    for key in (STANDARD, PRO):
        [base] = skus[key].operations
        create = base.create
        assert base.WhichOneof("kind") == "create"
        assert create.term, f"{key}: a subscription has a term"
        expected = {
            RENEW: cat.Operation(
                renew=cat.RenewOperation(
                    term=create.term, anchor=cat.RENEWAL_ANCHOR_FROM_NOW_IF_EXPIRED
                )
            ),
            ADD_SEATS: cat.Operation(
                add_seats=cat.AddSeatsOperation(seats_per_unit=create.seats_per_unit)
            ),
            REMOVE_SEATS: cat.Operation(
                remove_seats=cat.RemoveSeatsOperation(seats_per_unit=create.seats_per_unit)
            ),
            SWITCH: cat.Operation(
                change_edition=cat.ChangeEditionOperation(edition_id=create.edition_id)
            ),
            CANCEL: cat.Operation(cancel=cat.CancelOperation()),
            SUSPEND: cat.Operation(suspend=cat.SuspendOperation()),
            REINSTATE: cat.Operation(reinstate=cat.ReinstateOperation()),
        }
        for suffix, operation in expected.items():
            sku = skus[lifecycle_sku(key, suffix)]
            assert (sku.product_id, list(sku.operations)) == (PRODUCT_ID, [operation]), sku.sku_id
