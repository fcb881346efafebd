"""CatalogService: PutProduct, ListProducts, PutSku, GetSku, ListSkus, DeleteSku.

The generated cases (generated.py) cover every string, enum, paging and required
field of these requests; the cases here are the rules of products and SKUs.
"""

from __future__ import annotations

from keyturn.fulfillment.v1 import catalog_pb2 as cat

from .builders import (
    cat_op,
    create,
    duration,
    edition,
    feature,
    new_product,
    new_sku,
    renew,
    sku_of,
)
from .cases import K10, MB, Code, b64, invalid, page_token, refused
from .generated import generated_cases
from .running import refusal_test
from support.rpc import PRODUCT_ID

PUT_PRODUCT = [
    invalid(
        "PutProduct", "product-id-uppercase", new_product(product_id="Acme"), "product.product_id"
    ),
    invalid("PutProduct", "display-name-1mb", new_product(display_name=MB), "product.display_name"),
    invalid(
        "PutProduct",
        "display-name-nul-char",
        new_product(display_name="Acme\x00CAD"),
        "product.display_name",
    ),
    invalid(
        "PutProduct",
        "101-editions",
        new_product(editions=[edition(f"e{i}") for i in range(101)]),
        "product.editions",
    ),
    invalid(
        "PutProduct",
        "edition-id-empty",
        new_product([edition("")]),
        "product.editions[0].edition_id",
    ),
    invalid(
        "PutProduct",
        "edition-id-10k-chars",
        new_product([edition(K10)]),
        "product.editions[0].edition_id",
    ),
    invalid(
        "PutProduct",
        "edition-display-name-1mb",
        new_product([cat.Edition(edition_id="standard", display_name=MB)]),
        "product.editions[0].display_name",
    ),
    invalid(
        "PutProduct",
        "duplicate-edition-id",
        new_product([edition("pro"), edition("pro")]),
        "product.editions[1].edition_id",
    ),
    invalid(
        "PutProduct",
        "duplicate-feature-name",
        new_product([edition("pro", feature("export"), feature("export", 3))]),
        "product.editions[0].features[1].name",
    ),
    invalid(
        "PutProduct",
        "feature-name-10k-chars",
        new_product([edition("pro", feature(K10))]),
        "product.editions[0].features[0].name",
    ),
    invalid(
        "PutProduct",
        "negative-feature-limit",
        new_product([edition("pro", feature("projects", -1))]),
        "product.editions[0].features[0].limit",
    ),
    refused(
        "PutProduct",
        "stale-etag",
        new_product(product_id=PRODUCT_ID, etag="0123456789abcdef"),
        Code.ABORTED,
        "ETAG_MISMATCH",
        resource=PRODUCT_ID,
    ),
    refused(
        "PutProduct",
        "stale-etag-10k-chars",
        new_product(product_id=PRODUCT_ID, etag=K10),
        Code.ABORTED,
        "ETAG_MISMATCH",
        resource=PRODUCT_ID,
    ),
]

LIST_PRODUCTS = [
    invalid(
        "ListProducts",
        "page-token-not-utf8",
        cat.ListProductsRequest(page_token=b64(b"\xff\xfe\xfd")),
        "page_token",
    ),
    invalid(
        "ListProducts",
        "page-token-json-list",
        cat.ListProductsRequest(page_token=page_token([1, 2])),
        "page_token",
    ),
    invalid(
        "ListProducts",
        "page-token-of-list-skus",
        cat.ListProductsRequest(page_token=page_token({"s": "skus:", "a": "STD"})),
        "page_token",
    ),
    invalid(
        "ListProducts",
        "page-token-forged-nul-cursor",
        cat.ListProductsRequest(page_token=page_token({"s": "products", "a": "a\x00b"})),
        "page_token",
    ),
]

PUT_SKU = [
    invalid("PutSku", "sku-id-with-space", new_sku(create(), sku_id="BAD SKU"), "sku.sku_id"),
    invalid("PutSku", "display-name-1mb", new_sku(create(), display_name=MB), "sku.display_name"),
    invalid(
        "PutSku",
        "display-name-nul-char",
        new_sku(create(), display_name="New\x00SKU"),
        "sku.display_name",
    ),
    refused(
        "PutSku",
        "unknown-product",
        new_sku(create(), product_id="no-such-product"),
        Code.NOT_FOUND,
        "PRODUCT_NOT_FOUND",
        product_id="no-such-product",
    ),
    invalid("PutSku", "17-operations", new_sku(create(), *[renew()] * 16), "sku.operations"),
    invalid("PutSku", "operation-kind-unset", new_sku(cat.Operation()), "sku.operations[0]"),
    invalid(
        "PutSku",
        "operation-kind-unset-after-create",
        new_sku(create(), cat.Operation()),
        "sku.operations[1]",
    ),
    invalid("PutSku", "create-not-first", new_sku(renew(), create()), "sku.operations[1].create"),
    invalid("PutSku", "two-creates", new_sku(create(), create()), "sku.operations[1].create"),
    invalid("PutSku", "term-P", sku_of(create(term="P")), cat_op("create.term")),
    invalid("PutSku", "term-1Y", sku_of(create(term="1Y")), cat_op("create.term")),
    invalid("PutSku", "term-PT0S", sku_of(create(term="PT0S")), cat_op("create.term")),
    invalid("PutSku", "term-P-1D", sku_of(create(term="P-1D")), cat_op("create.term")),
    invalid("PutSku", "term-PT", sku_of(create(term="PT")), cat_op("create.term")),
    invalid("PutSku", "term-P1.5Y", sku_of(create(term="P1.5Y")), cat_op("create.term")),
    invalid("PutSku", "term-lowercase", sku_of(create(term="p1y")), cat_op("create.term")),
    invalid(
        "PutSku",
        "term-10k-chars",
        sku_of(create(term="P" + "1" * 9999 + "D")),
        cat_op("create.term"),
    ),
    invalid("PutSku", "term-past-year-9999", sku_of(create(term="P9000Y")), cat_op("create.term")),
    invalid(
        "PutSku",
        "term-and-perpetual",
        sku_of(create(term="P1Y", perpetual=True)),
        cat_op("create.term"),
    ),
    invalid("PutSku", "neither-term-nor-perpetual", sku_of(create(term="")), cat_op("create.term")),
    invalid(
        "PutSku",
        "trial-and-perpetual",
        sku_of(create(term="", perpetual=True, trial=True)),
        cat_op("create.perpetual"),
    ),
    invalid(
        "PutSku",
        "unknown-edition",
        sku_of(create(edition_id="platinum")),
        cat_op("create.edition_id"),
    ),
    invalid(
        "PutSku",
        "seats-per-unit-negative",
        sku_of(create(seats_per_unit=-5)),
        cat_op("create.seats_per_unit"),
    ),
    invalid(
        "PutSku",
        "seats-per-unit-100001",
        sku_of(create(seats_per_unit=100_001)),
        cat_op("create.seats_per_unit"),
    ),
    invalid(
        "PutSku",
        "duplicate-feature-names",
        sku_of(create(features=[feature("export"), feature("export", 2)])),
        cat_op("create.features[1].name"),
    ),
    invalid(
        "PutSku",
        "feature-negative-limit",
        sku_of(create(features=[feature("projects", -1)])),
        cat_op("create.features[0].limit"),
    ),
    invalid(
        "PutSku",
        "lease-duration-zero",
        sku_of(create(lease_duration=duration(0))),
        cat_op("create.lease_duration"),
    ),
    invalid(
        "PutSku",
        "lease-duration-59s",
        sku_of(create(lease_duration=duration(59))),
        cat_op("create.lease_duration"),
    ),
    invalid(
        "PutSku",
        "lease-duration-30d-plus-1s",
        sku_of(create(lease_duration=duration(30 * 86400 + 1))),
        cat_op("create.lease_duration"),
    ),
    invalid(
        "PutSku",
        "lease-duration-negative",
        sku_of(create(lease_duration=duration(-900))),
        cat_op("create.lease_duration"),
    ),
    invalid(
        "PutSku",
        "lease-duration-beyond-proto-range",
        sku_of(create(lease_duration=duration(10**15))),
        cat_op("create.lease_duration"),
    ),
    invalid(
        "PutSku",
        "lease-duration-nanos-out-of-range",
        sku_of(create(lease_duration=duration(0, 2_000_000_000))),
        cat_op("create.lease_duration"),
    ),
    invalid("PutSku", "renew-term-P", new_sku(renew("P")), cat_op("renew.term")),
    invalid("PutSku", "renew-term-empty", new_sku(renew("")), cat_op("renew.term")),
    invalid(
        "PutSku",
        "add-seats-0",
        new_sku(cat.Operation(add_seats=cat.AddSeatsOperation(seats_per_unit=0))),
        cat_op("add_seats.seats_per_unit"),
    ),
    invalid(
        "PutSku",
        "remove-seats-negative",
        new_sku(cat.Operation(remove_seats=cat.RemoveSeatsOperation(seats_per_unit=-1))),
        cat_op("remove_seats.seats_per_unit"),
    ),
    invalid(
        "PutSku",
        "change-edition-unknown",
        new_sku(cat.Operation(change_edition=cat.ChangeEditionOperation(edition_id="platinum"))),
        cat_op("change_edition.edition_id"),
    ),
    invalid(
        "PutSku",
        "add-features-empty",
        new_sku(cat.Operation(add_features=cat.AddFeaturesOperation())),
        cat_op("add_features.features"),
    ),
    invalid(
        "PutSku",
        "add-features-duplicate",
        new_sku(
            cat.Operation(
                add_features=cat.AddFeaturesOperation(features=[feature("a1"), feature("a1")])
            )
        ),
        cat_op("add_features.features[1].name"),
    ),
    invalid(
        "PutSku",
        "remove-features-empty",
        new_sku(cat.Operation(remove_features=cat.RemoveFeaturesOperation())),
        cat_op("remove_features.feature_names"),
    ),
    invalid(
        "PutSku",
        "remove-features-bad-name",
        new_sku(
            cat.Operation(remove_features=cat.RemoveFeaturesOperation(feature_names=["Bad Name"]))
        ),
        cat_op("remove_features.feature_names[0]"),
    ),
    invalid(
        "PutSku",
        "convert-trial-term-and-perpetual",
        new_sku(cat.Operation(convert_trial=cat.ConvertTrialOperation(term="P1Y", perpetual=True))),
        cat_op("convert_trial.term"),
    ),
    invalid(
        "PutSku",
        "convert-trial-no-term",
        new_sku(cat.Operation(convert_trial=cat.ConvertTrialOperation())),
        cat_op("convert_trial.term"),
    ),
    invalid(
        "PutSku",
        "convert-trial-term-1Y",
        new_sku(cat.Operation(convert_trial=cat.ConvertTrialOperation(term="1Y"))),
        cat_op("convert_trial.term"),
    ),
    invalid(
        "PutSku",
        "grace-period-negative",
        sku_of(create(grace_period=duration(-86400))),
        cat_op("create.grace_period"),
    ),
    invalid(
        "PutSku",
        "grace-period-minus-1s",
        sku_of(create(grace_period=duration(-1))),
        cat_op("create.grace_period"),
    ),
    invalid(
        "PutSku",
        "grace-period-90d-plus-1s",
        sku_of(create(grace_period=duration(90 * 86400 + 1))),
        cat_op("create.grace_period"),
    ),
    invalid(
        "PutSku",
        "grace-period-90d-plus-999999999ns",
        sku_of(create(grace_period=duration(90 * 86400, 999_999_999))),
        cat_op("create.grace_period"),
    ),
    invalid(
        "PutSku",
        "grace-period-365d",
        sku_of(create(grace_period=duration(365 * 86400))),
        cat_op("create.grace_period"),
    ),
    invalid(
        "PutSku",
        "grace-period-beyond-proto-range",
        sku_of(create(grace_period=duration(10**15))),
        cat_op("create.grace_period"),
    ),
    invalid(
        "PutSku",
        "grace-period-int64-min",
        sku_of(create(grace_period=duration(-(2**63)))),
        cat_op("create.grace_period"),
    ),
    invalid(
        "PutSku",
        "deactivation-limit-zero-per-calendar-month",
        sku_of(create(deactivation_limit=cat.DeactivationLimit(count=0, period="P1M"))),
        cat_op("create.deactivation_limit.count"),
        cat_op("create.deactivation_limit.period"),
    ),
    invalid(
        "PutSku",
        "deactivation-limit-without-a-period",
        sku_of(create(deactivation_limit=cat.DeactivationLimit(count=3))),
        cat_op("create.deactivation_limit.period"),
    ),
    invalid(
        "PutSku",
        "deactivation-limit-period-10k-chars",
        sku_of(create(deactivation_limit=cat.DeactivationLimit(count=3, period=K10))),
        cat_op("create.deactivation_limit.period"),
    ),
    invalid(
        "PutSku",
        "deactivation-limit-period-a-minute",
        sku_of(create(deactivation_limit=cat.DeactivationLimit(count=3, period="PT1M"))),
        cat_op("create.deactivation_limit.period"),
    ),
    invalid(
        "PutSku",
        "renew-anchor-99",
        new_sku(cat.Operation(renew=cat.RenewOperation(term="P1Y", anchor=99))),  # type: ignore[arg-type]
        cat_op("renew.anchor"),
    ),
    invalid(
        "PutSku",
        "renew-anchor-negative",
        new_sku(cat.Operation(renew=cat.RenewOperation(term="P1Y", anchor=-1))),  # type: ignore[arg-type]
        cat_op("renew.anchor"),
    ),
    invalid(
        "PutSku",
        "renew-anchor-99-after-create",
        new_sku(
            create(),
            cat.Operation(renew=cat.RenewOperation(term="P1Y", anchor=99)),  # type: ignore[arg-type]
        ),
        "sku.operations[1].renew.anchor",
    ),
    refused(
        "PutSku",
        "stale-etag",
        new_sku(create(), sku_id="STD", etag="0123456789abcdef"),
        Code.ABORTED,
        "ETAG_MISMATCH",
        resource="STD",
    ),
    refused(
        "PutSku",
        "stale-etag-10k-chars",
        new_sku(create(), sku_id="STD", etag=K10),
        Code.ABORTED,
        "ETAG_MISMATCH",
        resource="STD",
    ),
]

GET_SKU = [
    invalid("GetSku", "sku-id-with-space", cat.GetSkuRequest(sku_id="BAD SKU"), "sku_id"),
    refused(
        "GetSku",
        "unknown-sku",
        cat.GetSkuRequest(sku_id="NO-SUCH-SKU"),
        Code.NOT_FOUND,
        "SKU_NOT_FOUND",
        sku_id="NO-SUCH-SKU",
    ),
]

LIST_SKUS = [
    invalid(
        "ListSkus",
        "page-token-of-list-products",
        cat.ListSkusRequest(page_token=page_token({"s": "products", "a": "acme-cad"})),
        "page_token",
    ),
    invalid(
        "ListSkus",
        "page-token-of-another-product",
        cat.ListSkusRequest(
            product_id=PRODUCT_ID, page_token=page_token({"s": "skus:other", "a": "STD"})
        ),
        "page_token",
    ),
    invalid(
        "ListSkus",
        "product-id-malformed",
        cat.ListSkusRequest(product_id="Not A Slug"),
        "product_id",
    ),
]

DELETE_SKU = [
    refused(
        "DeleteSku",
        "unknown-sku",
        cat.DeleteSkuRequest(sku_id="NO-SUCH-SKU"),
        Code.NOT_FOUND,
        "SKU_NOT_FOUND",
        sku_id="NO-SUCH-SKU",
    ),
    refused(
        "DeleteSku",
        "stale-etag",
        cat.DeleteSkuRequest(sku_id="STD", etag="0123456789abcdef"),
        Code.ABORTED,
        "ETAG_MISMATCH",
        resource="STD",
    ),
    refused(
        "DeleteSku",
        "stale-etag-10k-chars",
        cat.DeleteSkuRequest(sku_id="STD", etag=K10),
        Code.ABORTED,
        "ETAG_MISMATCH",
        resource="STD",
    ),
]


CASES = [
    *generated_cases("PutProduct", "ListProducts", "PutSku", "GetSku", "ListSkus", "DeleteSku"),
    *PUT_PRODUCT,
    *LIST_PRODUCTS,
    *PUT_SKU,
    *GET_SKU,
    *LIST_SKUS,
    *DELETE_SKU,
]

test_bad_input_is_refused_and_writes_nothing = refusal_test(CASES)
