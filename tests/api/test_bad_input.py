"""Bad input to every implemented RPC, through a real server on both backends.

Every case must come back with its exact code, an ErrorInfo in the keyturn.dev
domain with the right reason, for INVALID_ARGUMENT a BadRequest naming the
offending field, never INTERNAL, and must leave every table as it was.

The cases share one server per backend (module scope) holding a small world: a
product, a few SKUs, one fulfilled order, one entitlement whose single seat is
taken, and its lease. Only failing calls are made, so the world does not change
unless a call wrongly writes, which the case that made it reports.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import duration_pb2
from google.protobuf.message import Message

from keyturn.errors.v1 import error_reason_pb2
from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.api.errors import ERROR_DOMAIN, STATUS_OF
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.context import AppContext
from keyturn.server.app.tokens import create_token
from keyturn.server.bootstrap import build_context
from keyturn.server.domain.errors import Reason
from keyturn.server.domain.license_key import generate_license_key

from conftest import BACKENDS, Tokens, settings_for, sqlite_url
from support.postgres import create_database, drop_database
from support.rows import changed_tables, row_counts, table_digests
from support.rpc import PRODUCT_ID, create_sku, failure_of, order, product
from support.threads import run_in_own_loop

Code = grpc.StatusCode
Metadata = tuple[tuple[str, str], ...]

CATALOG = "keyturn.fulfillment.v1.CatalogService"
FULFILLMENT = "keyturn.fulfillment.v1.FulfillmentService"
LICENSING = "keyturn.licensing.v1.LicensingService"

# RPC -> (service, scope of the token sent by default; None: no bearer token).
RPCS: dict[str, tuple[str, str | None]] = {
    "PutProduct": (CATALOG, "catalog"),
    "ListProducts": (CATALOG, "catalog"),
    "PutSku": (CATALOG, "catalog"),
    "GetSku": (CATALOG, "catalog"),
    "ListSkus": (CATALOG, "catalog"),
    "DeleteSku": (CATALOG, "catalog"),
    "FulfillOrder": (FULFILLMENT, "fulfill"),
    "GetOrder": (FULFILLMENT, "read"),
    "GetEntitlement": (FULFILLMENT, "read"),
    "ActivateSeat": (LICENSING, None),
    "RenewLease": (LICENSING, None),
    "ReleaseSeat": (LICENSING, None),
    "GetSigningKeys": (LICENSING, None),
}

# What the world holds.
TAKEN_REFERENCE = "stripe:sub_taken"
WORLD_ORDER_ID = "order-1"
WORLD_FINGERPRINT = "device-0001"
OTHER_SCOPE = {"catalog": "read", "fulfill": "read", "read": "fulfill"}

# Oversized values. The answer must stay small too: an error that echoes a 10k value
# into its message and ErrorInfo overflows the 16 KiB trailer limit of the client,
# which then sees RESOURCE_EXHAUSTED and no ErrorInfo.
K10 = "a" * 10_000
MB = "x" * (1 << 20)
# The `*-nul-char` cases send text with a NUL character: PostgreSQL can neither store
# nor compare it, so the server must refuse it before it reaches the database.


# --- the world the cases run against -------------------------------------------------------


@dataclass
class World:
    app: AppContext
    channel: grpc.aio.Channel
    tokens: Tokens
    entitlement_id: str
    license_key: str
    lease_token: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json_b64(value: object) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def _lease_parts(w: World) -> tuple[dict[str, object], dict[str, object], str, str]:
    """Header, claims, and the header and payload segments of the world's lease."""
    header = jwt.get_unverified_header(w.lease_token)
    claims = jwt.decode(w.lease_token, options={"verify_signature": False})
    head, payload, _ = w.lease_token.split(".")
    return header, claims, head, payload


def alg_none_lease(w: World) -> str:
    header, _, _, payload = _lease_parts(w)
    return f"{_json_b64({'alg': 'none', 'typ': 'JWT', 'kid': header['kid']})}.{payload}."


def hs256_lease(w: World) -> str:
    """The classic algorithm confusion: HMAC keyed with the published public key."""
    header, _, _, payload = _lease_parts(w)
    public = next(k for k in w.app.keyring.jwks()["keys"] if k["kid"] == header["kid"])
    head = _json_b64({"alg": "HS256", "typ": "JWT", "kid": header["kid"]})
    signature = hmac.new(public["x"].encode(), f"{head}.{payload}".encode(), hashlib.sha256)
    return f"{head}.{payload}.{_b64(signature.digest())}"


def foreign_lease(w: World, kid: str | None = None) -> str:
    header, claims, _, _ = _lease_parts(w)
    headers = {"kid": kid or header["kid"]}
    return jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers=headers)


def tampered_lease(w: World) -> str:
    _, claims, head, _ = _lease_parts(w)
    signature = w.lease_token.split(".")[2]
    forged = dict(claims, features={"export-pdf": None, "projects": 100000})
    return f"{head}.{_json_b64(forged)}.{signature}"


@pytest.fixture(scope="module", params=BACKENDS)
def world_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated, empty database shared by every case of one backend."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("bad-input") / "keyturn.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield sqlite_url(path)
        return
    admin: str = request.getfixturevalue("pg_admin")
    template: str = request.getfixturevalue("pg_template")
    name = f"keyturn_bad_{uuid.uuid4().hex[:12]}"
    yield run_in_own_loop(create_database(admin, name, template=template))
    run_in_own_loop(drop_database(admin, name))


@pytest.fixture(scope="module")
async def world(world_database_url: str) -> AsyncIterator[World]:
    url = world_database_url
    app = await build_context(settings_for(url))
    server = KeyturnServer(app, "127.0.0.1:0")
    await server.start()
    try:
        secrets = {s: (await create_token(app, {s}, f"bad input {s}"))[1] for s in OTHER_SCOPE}
        tokens = Tokens(secrets)
        async with grpc.aio.insecure_channel(server.address) as channel:
            catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
            fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub(channel)
            licensing = licensing_pb2_grpc.LicensingServiceStub(channel)
            auth = tokens("catalog")
            await catalog.PutProduct(cat.PutProductRequest(product=product()), metadata=auth)
            for sku in (create_sku("STD"), create_sku("BIG", seats=100_000), create_sku("SPARE")):
                await catalog.PutSku(cat.PutSkuRequest(sku=sku), metadata=auth)
            fulfilled = await fulfillment.FulfillOrder(
                order(WORLD_ORDER_ID, "STD", reference=TAKEN_REFERENCE),
                metadata=tokens("fulfill"),
            )
            entitlement = fulfilled.entitlements[0]
            activated = await licensing.ActivateSeat(
                lic.ActivateSeatRequest(
                    license_key=entitlement.license_key,
                    product_id=PRODUCT_ID,
                    fingerprint=WORLD_FINGERPRINT,
                    label="laptop",
                )
            )
            yield World(
                app=app,
                channel=channel,
                tokens=tokens,
                entitlement_id=entitlement.entitlement_id,
                license_key=entitlement.license_key,
                lease_token=activated.lease.token,
            )
    finally:
        await server.stop(grace=1.0)
        await app.store.close()


# --- the cases ------------------------------------------------------------------------------

Request = Message | bytes | Callable[[World], Message | bytes]
DEFAULT = "default"


@dataclass(frozen=True)
class Case:
    rpc: str
    name: str
    request: Request
    code: Code
    reason: str
    fields: tuple[str, ...] = ()  # field paths the BadRequest must name
    metadata: dict[str, str] = field(default_factory=dict)  # ErrorInfo metadata expected
    auth: str | Metadata | None = DEFAULT  # a scope, raw metadata, or None for no token

    @property
    def id(self) -> str:
        return f"{self.rpc}:{self.name}"


def invalid(
    rpc: str, name: str, request: Request, *fields: str, auth: str | Metadata | None = DEFAULT
) -> Case:
    return Case(rpc, name, request, Code.INVALID_ARGUMENT, "INVALID_REQUEST", fields, auth=auth)


def refused(
    rpc: str,
    name: str,
    request: Request,
    code: Code,
    reason: str,
    auth: str | Metadata | None = DEFAULT,
    **metadata: str,
) -> Case:
    return Case(rpc, name, request, code, reason, (), metadata, auth)


# Request builders. Each fulfil() gets an order id of its own, so that a case wrongly
# accepted cannot turn a later case into a replay or a conflict.
_order_ids = itertools.count(1)


def new_product(
    editions: list[cat.Edition] | None = None,
    product_id: str = "new-product",
    display_name: str = "New product",
    etag: str = "",
) -> cat.PutProductRequest:
    if editions is None:
        editions = [edition()]
    return cat.PutProductRequest(
        product=cat.Product(
            product_id=product_id, display_name=display_name, editions=editions, etag=etag
        )
    )


def edition(edition_id: str = "standard", *features: cat.Feature) -> cat.Edition:
    return cat.Edition(edition_id=edition_id, display_name=edition_id, features=features)


def feature(name: str, limit: int | None = None) -> cat.Feature:
    return cat.Feature(name=name) if limit is None else cat.Feature(name=name, limit=limit)


def new_sku(
    *operations: cat.Operation,
    sku_id: str = "NEW-SKU",
    product_id: str = PRODUCT_ID,
    display_name: str = "New SKU",
    etag: str = "",
) -> cat.PutSkuRequest:
    return cat.PutSkuRequest(
        sku=cat.Sku(
            sku_id=sku_id,
            product_id=product_id,
            display_name=display_name,
            operations=operations,
            etag=etag,
        )
    )


def create(**fields: object) -> cat.Operation:
    values: dict[str, object] = {"edition_id": "standard", "seats_per_unit": 1, "term": "P1Y"}
    values.update(fields)
    return cat.Operation(create=cat.CreateOperation(**values))  # type: ignore[arg-type]


def lease(seconds: int, nanos: int = 0) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=seconds, nanos=nanos)


def renew(term: str = "P1Y") -> cat.Operation:
    return cat.Operation(renew=cat.RenewOperation(term=term))


def sku_of(create_op: cat.Operation) -> cat.PutSkuRequest:
    return new_sku(create_op)


def line(sku_id: str = "STD", quantity: int = 1, **fields: str) -> ful.OrderLine:
    return ful.OrderLine(sku_id=sku_id, quantity=quantity, **fields)


CUSTOMER = ful.Customer(customer_id="cust-1", name="Initech", email="it@initech.example")


def fulfil(
    lines: list[ful.OrderLine] | None = None,
    order_id: str | None = None,
    source: str = "test",
    customer: ful.Customer | None = CUSTOMER,
    ship_to_email: str = "",
) -> ful.FulfillOrderRequest:
    request = ful.FulfillOrderRequest(
        source=source,
        order_id=order_id if order_id is not None else f"bad-order-{next(_order_ids)}",
        ship_to_email=ship_to_email,
        lines=[line()] if lines is None else lines,
    )
    if customer is not None:
        request.customer.CopyFrom(customer)
    return request


def customer(**changes: str) -> ful.Customer:
    values = {"customer_id": "cust-1", "name": "Initech", "email": "it@initech.example"}
    values.update(changes)
    return ful.Customer(**values)


def activate(
    license_key: str | None = None,
    product_id: str = PRODUCT_ID,
    fingerprint: str = WORLD_FINGERPRINT,
    label: str = "laptop",
) -> Callable[[World], lic.ActivateSeatRequest]:
    def build(w: World) -> lic.ActivateSeatRequest:
        return lic.ActivateSeatRequest(
            license_key=w.license_key if license_key is None else license_key,
            product_id=product_id,
            fingerprint=fingerprint,
            label=label,
        )

    return build


def typo_of_world_key(w: World) -> lic.ActivateSeatRequest:
    key = w.license_key
    typo = key[:-1] + ("0" if key[-1] != "0" else "1")
    return activate(typo)(w)


def lease_request(
    rpc: str, token: Callable[[World], str]
) -> Callable[[World], lic.RenewLeaseRequest | lic.ReleaseSeatRequest]:
    kind = lic.RenewLeaseRequest if rpc == "RenewLease" else lic.ReleaseSeatRequest
    return lambda w: kind(lease_token=token(w))


def page_token(value: object) -> str:
    """A token as the server shapes them (base64url of JSON), with any content."""
    return _json_b64(value)


def cat_op(path: str) -> str:
    return f"sku.operations[0].{path}"


PUT_PRODUCT = [
    invalid("PutProduct", "empty-request", cat.PutProductRequest(), "product"),
    invalid(
        "PutProduct", "product-id-10k-chars", new_product(product_id=K10), "product.product_id"
    ),
    invalid("PutProduct", "product-id-empty", new_product(product_id=""), "product.product_id"),
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
    invalid("PutProduct", "no-editions", new_product(editions=[]), "product.editions"),
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
        "ListProducts", "negative-page-size", cat.ListProductsRequest(page_size=-1), "page_size"
    ),
    invalid(
        "ListProducts",
        "int32-min-page-size",
        cat.ListProductsRequest(page_size=-(2**31)),
        "page_size",
    ),
    invalid(
        "ListProducts",
        "garbage-page-token",
        cat.ListProductsRequest(page_token="!!garbage!!"),
        "page_token",
    ),
    invalid(
        "ListProducts",
        "page-token-10k-chars",
        cat.ListProductsRequest(page_token=K10),
        "page_token",
    ),
    invalid(
        "ListProducts",
        "page-token-not-utf8",
        cat.ListProductsRequest(page_token=_b64(b"\xff\xfe\xfd")),
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
    invalid("PutSku", "empty-request", cat.PutSkuRequest(), "sku"),
    invalid("PutSku", "sku-id-10k-chars", new_sku(create(), sku_id=K10), "sku.sku_id"),
    invalid("PutSku", "sku-id-empty", new_sku(create(), sku_id=""), "sku.sku_id"),
    invalid("PutSku", "sku-id-with-space", new_sku(create(), sku_id="BAD SKU"), "sku.sku_id"),
    invalid("PutSku", "display-name-1mb", new_sku(create(), display_name=MB), "sku.display_name"),
    invalid(
        "PutSku",
        "display-name-nul-char",
        new_sku(create(), display_name="New\x00SKU"),
        "sku.display_name",
    ),
    invalid("PutSku", "product-id-empty", new_sku(create(), product_id=""), "sku.product_id"),
    invalid("PutSku", "product-id-10k-chars", new_sku(create(), product_id=K10), "sku.product_id"),
    refused(
        "PutSku",
        "unknown-product",
        new_sku(create(), product_id="no-such-product"),
        Code.NOT_FOUND,
        "PRODUCT_NOT_FOUND",
        product_id="no-such-product",
    ),
    invalid("PutSku", "no-operations", new_sku(), "sku.operations"),
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
        "PutSku", "edition-id-empty", sku_of(create(edition_id="")), cat_op("create.edition_id")
    ),
    invalid(
        "PutSku",
        "seats-per-unit-0",
        sku_of(create(seats_per_unit=0)),
        cat_op("create.seats_per_unit"),
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
        sku_of(create(lease_duration=lease(0))),
        cat_op("create.lease_duration"),
    ),
    invalid(
        "PutSku",
        "lease-duration-59s",
        sku_of(create(lease_duration=lease(59))),
        cat_op("create.lease_duration"),
    ),
    invalid(
        "PutSku",
        "lease-duration-30d-plus-1s",
        sku_of(create(lease_duration=lease(30 * 86400 + 1))),
        cat_op("create.lease_duration"),
    ),
    invalid(
        "PutSku",
        "lease-duration-negative",
        sku_of(create(lease_duration=lease(-900))),
        cat_op("create.lease_duration"),
    ),
    invalid(
        "PutSku",
        "lease-duration-beyond-proto-range",
        sku_of(create(lease_duration=lease(10**15))),
        cat_op("create.lease_duration"),
    ),
    invalid(
        "PutSku",
        "lease-duration-nanos-out-of-range",
        sku_of(create(lease_duration=lease(0, 2_000_000_000))),
        cat_op("create.lease_duration"),
    ),
    invalid(
        "PutSku",
        "license-model-99",
        sku_of(create(license_model=99)),
        cat_op("create.license_model"),
    ),
    invalid(
        "PutSku",
        "license-model-negative",
        sku_of(create(license_model=-1)),
        cat_op("create.license_model"),
    ),
    invalid("PutSku", "dispatch-99", sku_of(create(dispatch=99)), cat_op("create.dispatch")),
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
    invalid("GetSku", "empty-request", cat.GetSkuRequest(), "sku_id"),
    invalid("GetSku", "sku-id-10k-chars", cat.GetSkuRequest(sku_id=K10), "sku_id"),
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
    invalid("ListSkus", "negative-page-size", cat.ListSkusRequest(page_size=-1), "page_size"),
    invalid("ListSkus", "garbage-page-token", cat.ListSkusRequest(page_token="%%%"), "page_token"),
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
    invalid("ListSkus", "product-id-10k-chars", cat.ListSkusRequest(product_id=K10), "product_id"),
    invalid(
        "ListSkus",
        "product-id-malformed",
        cat.ListSkusRequest(product_id="Not A Slug"),
        "product_id",
    ),
]

DELETE_SKU = [
    invalid("DeleteSku", "empty-request", cat.DeleteSkuRequest(), "sku_id"),
    invalid("DeleteSku", "sku-id-10k-chars", cat.DeleteSkuRequest(sku_id=K10), "sku_id"),
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

FULFILL_ORDER = [
    invalid(
        "FulfillOrder",
        "empty-request",
        ful.FulfillOrderRequest(),
        "source",
        "order_id",
        "customer.customer_id",
        "lines",
    ),
    invalid("FulfillOrder", "source-10k-chars", fulfil(source=K10), "source"),
    invalid("FulfillOrder", "source-uppercase", fulfil(source="Stripe"), "source"),
    invalid("FulfillOrder", "order-id-10k-chars", fulfil(order_id=K10), "order_id"),
    invalid("FulfillOrder", "order-id-with-space", fulfil(order_id="order 1"), "order_id"),
    invalid("FulfillOrder", "customer-missing", fulfil(customer=None), "customer.customer_id"),
    invalid(
        "FulfillOrder",
        "customer-id-10k-chars",
        fulfil(customer=customer(customer_id=K10)),
        "customer.customer_id",
    ),
    invalid(
        "FulfillOrder", "customer-name-1mb", fulfil(customer=customer(name=MB)), "customer.name"
    ),
    invalid(
        "FulfillOrder",
        "customer-name-nul-char",
        fulfil(customer=customer(name="Ini\x00tech")),
        "customer.name",
    ),
    invalid(
        "FulfillOrder",
        "customer-email-not-an-email",
        fulfil(customer=customer(email="not-an-email")),
        "customer.email",
    ),
    invalid(
        "FulfillOrder",
        "customer-email-nul-char",
        fulfil(customer=customer(email="it\x00@initech.example")),
        "customer.email",
    ),
    invalid(
        "FulfillOrder",
        "ship-to-email-not-an-email",
        fulfil(ship_to_email="not-an-email"),
        "ship_to_email",
    ),
    invalid(
        "FulfillOrder", "ship-to-email-no-domain-dot", fulfil(ship_to_email="a@b"), "ship_to_email"
    ),
    invalid(
        "FulfillOrder",
        "ship-to-email-two-ats",
        fulfil(ship_to_email="a@b@c.example"),
        "ship_to_email",
    ),
    invalid(
        "FulfillOrder",
        "ship-to-email-with-space",
        fulfil(ship_to_email="a b@c.example"),
        "ship_to_email",
    ),
    invalid(
        "FulfillOrder",
        "ship-to-email-300-chars",
        fulfil(ship_to_email="a" * 60 + "@" + "b" * 235 + ".example"),
        "ship_to_email",
    ),
    invalid("FulfillOrder", "no-lines", fulfil(lines=[]), "lines"),
    invalid("FulfillOrder", "101-lines", fulfil(lines=[line()] * 101), "lines"),
    invalid("FulfillOrder", "quantity-0", fulfil([line(quantity=0)]), "lines[0].quantity"),
    invalid("FulfillOrder", "quantity-negative", fulfil([line(quantity=-3)]), "lines[0].quantity"),
    invalid(
        "FulfillOrder", "quantity-100001", fulfil([line(quantity=100_001)]), "lines[0].quantity"
    ),
    invalid(
        "FulfillOrder",
        "quantity-negative-on-second-line",
        fulfil([line(), line(quantity=-1)]),
        "lines[1].quantity",
    ),
    invalid("FulfillOrder", "sku-id-empty", fulfil([line(sku_id="")]), "lines[0].sku_id"),
    invalid("FulfillOrder", "sku-id-10k-chars", fulfil([line(sku_id=K10)]), "lines[0].sku_id"),
    refused(
        "FulfillOrder",
        "unknown-sku",
        fulfil([line(sku_id="NO-SUCH-SKU")]),
        Code.NOT_FOUND,
        "SKU_NOT_FOUND",
        sku_id="NO-SUCH-SKU",
    ),
    refused(
        "FulfillOrder",
        "unknown-sku-after-a-good-line",
        fulfil([line(), line(sku_id="NO-SUCH-SKU")]),
        Code.NOT_FOUND,
        "SKU_NOT_FOUND",
        sku_id="NO-SUCH-SKU",
    ),
    invalid(
        "FulfillOrder",
        "entitlement-id-on-a-create-sku",
        fulfil([line(entitlement_id="ent_01ARZ3NDEKTSV4RRFFQ69G5FAV")]),
        "lines[0].entitlement_id",
    ),
    invalid(
        "FulfillOrder",
        "entitlement-id-10k-chars",
        fulfil([line(entitlement_id=K10)]),
        "lines[0].entitlement_id",
    ),
    invalid(
        "FulfillOrder",
        "external-reference-10k-chars",
        fulfil([line(external_reference=K10)]),
        "lines[0].external_reference",
    ),
    invalid(
        "FulfillOrder",
        "seats-overflow-100000x100000",
        fulfil([line(sku_id="BIG", quantity=100_000)]),
        "lines[0].quantity",
    ),
    refused(
        "FulfillOrder",
        "same-order-id-different-content",
        order(WORLD_ORDER_ID, "STD", quantity=2, reference=TAKEN_REFERENCE),
        Code.ALREADY_EXISTS,
        "ORDER_CONFLICT",
        source="test",
        order_id=WORLD_ORDER_ID,
    ),
    refused(
        "FulfillOrder",
        "external-reference-reused",
        fulfil([line(external_reference=TAKEN_REFERENCE)]),
        Code.ALREADY_EXISTS,
        "EXTERNAL_REFERENCE_TAKEN",
        external_reference=TAKEN_REFERENCE,
    ),
    refused(
        "FulfillOrder",
        "external-reference-twice-in-one-order",
        fulfil(
            [line(external_reference="stripe:sub_new"), line(external_reference="stripe:sub_new")]
        ),
        Code.ALREADY_EXISTS,
        "EXTERNAL_REFERENCE_TAKEN",
        external_reference="stripe:sub_new",
    ),
]

GET_ORDER = [
    invalid("GetOrder", "empty-request", ful.GetOrderRequest(), "source", "order_id"),
    invalid(
        "GetOrder", "source-10k-chars", ful.GetOrderRequest(source=K10, order_id="o1"), "source"
    ),
    invalid(
        "GetOrder",
        "order-id-10k-chars",
        ful.GetOrderRequest(source="test", order_id=K10),
        "order_id",
    ),
    invalid(
        "GetOrder",
        "order-id-nul-char",
        ful.GetOrderRequest(source="test", order_id="order\x001"),
        "order_id",
    ),
    refused(
        "GetOrder",
        "unknown-order",
        ful.GetOrderRequest(source="test", order_id="no-such-order"),
        Code.NOT_FOUND,
        "ORDER_NOT_FOUND",
        source="test",
        order_id="no-such-order",
    ),
]

GET_ENTITLEMENT = [
    invalid("GetEntitlement", "empty-request", ful.GetEntitlementRequest(), "entitlement_id"),
    invalid(
        "GetEntitlement",
        "entitlement-id-10k-chars",
        ful.GetEntitlementRequest(entitlement_id=K10),
        "entitlement_id",
    ),
    invalid(
        "GetEntitlement",
        "entitlement-id-nul-char",
        ful.GetEntitlementRequest(entitlement_id="ent_\x00"),
        "entitlement_id",
    ),
    refused(
        "GetEntitlement",
        "unknown-entitlement",
        ful.GetEntitlementRequest(entitlement_id="ent_01ARZ3NDEKTSV4RRFFQ69G5FAV"),
        Code.NOT_FOUND,
        "ENTITLEMENT_NOT_FOUND",
        entitlement_id="ent_01ARZ3NDEKTSV4RRFFQ69G5FAV",
    ),
]

ACTIVATE_SEAT = [
    invalid(
        "ActivateSeat",
        "empty-request",
        lic.ActivateSeatRequest(),
        "product_id",
        "license_key",
        "fingerprint",
    ),
    refused(
        "ActivateSeat",
        "malformed-license-key",
        activate("not-a-key"),
        Code.UNAUTHENTICATED,
        "INVALID_LICENSE_KEY",
    ),
    refused(
        "ActivateSeat",
        "license-key-with-typo",
        typo_of_world_key,
        Code.UNAUTHENTICATED,
        "INVALID_LICENSE_KEY",
    ),
    refused(
        "ActivateSeat",
        "license-key-10k-chars",
        activate(K10),
        Code.UNAUTHENTICATED,
        "INVALID_LICENSE_KEY",
    ),
    refused(
        "ActivateSeat",
        "unknown-license-key",
        activate(generate_license_key()),
        Code.UNAUTHENTICATED,
        "INVALID_LICENSE_KEY",
    ),
    refused(
        "ActivateSeat",
        "license-key-non-ascii",
        activate("ÄÖÜßÄ-ÖÜßÄÖ-Üß\x00ÄÖ-ÜßÄÖÜ-ßÄÖÜß-ÄÖÜßÄ"),
        Code.UNAUTHENTICATED,
        "INVALID_LICENSE_KEY",
    ),
    invalid("ActivateSeat", "license-key-empty", activate(""), "license_key"),
    invalid("ActivateSeat", "product-id-empty", activate(product_id=""), "product_id"),
    invalid("ActivateSeat", "product-id-10k-chars", activate(product_id=K10), "product_id"),
    refused(
        "ActivateSeat",
        "unknown-product",
        activate(product_id="other-app"),
        Code.PERMISSION_DENIED,
        "PRODUCT_MISMATCH",
        product_id="other-app",
    ),
    invalid("ActivateSeat", "fingerprint-empty", activate(fingerprint=""), "fingerprint"),
    invalid("ActivateSeat", "fingerprint-7-chars", activate(fingerprint="abcdefg"), "fingerprint"),
    invalid("ActivateSeat", "fingerprint-10k-chars", activate(fingerprint=K10), "fingerprint"),
    invalid(
        "ActivateSeat", "fingerprint-with-space", activate(fingerprint="device 0001"), "fingerprint"
    ),
    invalid("ActivateSeat", "label-1mb", activate(label=MB), "label"),
    invalid("ActivateSeat", "label-nul-char", activate(label="lap\x00top"), "label"),
    refused(
        "ActivateSeat",
        "no-free-seat",
        activate(fingerprint="device-0002"),
        Code.RESOURCE_EXHAUSTED,
        "SEATS_EXHAUSTED",
        seats="1",
    ),
]


def lease_cases(rpc: str) -> list[Case]:
    request = lic.RenewLeaseRequest if rpc == "RenewLease" else lic.ReleaseSeatRequest
    bad = Code.UNAUTHENTICATED, "INVALID_LEASE"
    return [
        invalid(rpc, "empty-request", request(), "lease_token"),
        refused(rpc, "garbage", request(lease_token="garbage"), *bad),
        refused(rpc, "three-dots", request(lease_token="..."), *bad),
        refused(rpc, "not-base64-segments", request(lease_token="a!.b!.c!"), *bad),
        refused(rpc, "10k-chars", request(lease_token=K10), *bad),
        refused(rpc, "alg-none", lease_request(rpc, alg_none_lease), *bad),
        refused(rpc, "alg-hs256-keyed-with-public-key", lease_request(rpc, hs256_lease), *bad),
        refused(rpc, "foreign-key-with-real-kid", lease_request(rpc, foreign_lease), *bad),
        refused(
            rpc,
            "unknown-kid",
            lease_request(rpc, lambda w: foreign_lease(w, kid="no-such-kid")),
            *bad,
        ),
        refused(rpc, "tampered-claims", lease_request(rpc, tampered_lease), *bad),
        refused(rpc, "license-key-as-lease", lease_request(rpc, lambda w: w.license_key), *bad),
        # Field 1 sent as a varint: protobuf keeps it as an unknown field, the token is empty.
        invalid(rpc, "lease-token-sent-as-varint", b"\x08\x01", "lease_token"),
        # Field 1 as length-delimited bytes that are not UTF-8: the request does not decode.
        Case(rpc, "lease-token-not-utf8", b"\x0a\x04\xff\xfe\xfd\xfc", *INVALID_UNDECODABLE),
    ]


# A request that does not decode: no field can be named, but the answer is still
# INVALID_ARGUMENT with an ErrorInfo, never a bare INTERNAL.
INVALID_UNDECODABLE = (Code.INVALID_ARGUMENT, "INVALID_REQUEST")

UNDECODABLE = [
    Case("GetSigningKeys", "undecodable-request", b"\xff\xff\xff", *INVALID_UNDECODABLE),
    Case("PutSku", "undecodable-request", b"\x0a\xff\xff\xff\xff\x0f", *INVALID_UNDECODABLE),
    Case("FulfillOrder", "truncated-request", b"\x0a\x10test", *INVALID_UNDECODABLE),
]

# Requests that would succeed with the right token: a skipped check shows as a success.
GOOD_REQUESTS: dict[str, Request] = {
    "PutProduct": new_product(),
    "ListProducts": cat.ListProductsRequest(),
    "PutSku": new_sku(create()),
    "GetSku": cat.GetSkuRequest(sku_id="STD"),
    "ListSkus": cat.ListSkusRequest(),
    "DeleteSku": cat.DeleteSkuRequest(sku_id="SPARE"),
    "FulfillOrder": fulfil(),
    "GetOrder": ful.GetOrderRequest(source="test", order_id=WORLD_ORDER_ID),
    "GetEntitlement": lambda w: ful.GetEntitlementRequest(entitlement_id=w.entitlement_id),
}


def auth_cases() -> list[Case]:
    cases: list[Case] = []
    for rpc, good in GOOD_REQUESTS.items():
        scope = RPCS[rpc][1]
        assert scope is not None
        cases += [
            refused(rpc, "no-token", good, Code.UNAUTHENTICATED, "MISSING_CREDENTIALS", auth=None),
            refused(
                rpc,
                "garbage-token",
                good,
                Code.UNAUTHENTICATED,
                "INVALID_TOKEN",
                auth=(("authorization", "Bearer kt_garbage"),),
            ),
            refused(
                rpc,
                f"{OTHER_SCOPE[scope]}-scope-token",
                good,
                Code.PERMISSION_DENIED,
                "INSUFFICIENT_SCOPE",
                auth=OTHER_SCOPE[scope],
                required_scope=scope,
            ),
        ]
    bearer = Code.UNAUTHENTICATED, "MISSING_CREDENTIALS"
    return [
        *cases,
        refused(
            "PutSku",
            "basic-auth",
            GOOD_REQUESTS["PutSku"],
            *bearer,
            auth=(("authorization", "Basic a2V5OnR1cm4="),),
        ),
        refused(
            "PutSku",
            "bearer-without-token",
            GOOD_REQUESTS["PutSku"],
            *bearer,
            auth=(("authorization", "Bearer "),),
        ),
        refused(
            "FulfillOrder",
            "catalog-scope-token",
            GOOD_REQUESTS["FulfillOrder"],
            Code.PERMISSION_DENIED,
            "INSUFFICIENT_SCOPE",
            auth="catalog",
            required_scope="fulfill",
        ),
        # PERMISSION_DENIED is decided before NOT_FOUND and before the request is checked.
        refused(
            "GetSku",
            "wrong-scope-before-not-found",
            cat.GetSkuRequest(sku_id="NO-SUCH-SKU"),
            Code.PERMISSION_DENIED,
            "INSUFFICIENT_SCOPE",
            auth="read",
            required_scope="catalog",
        ),
        refused(
            "GetOrder",
            "wrong-scope-before-not-found",
            ful.GetOrderRequest(source="test", order_id="no-such-order"),
            Code.PERMISSION_DENIED,
            "INSUFFICIENT_SCOPE",
            auth="fulfill",
            required_scope="read",
        ),
        refused(
            "FulfillOrder",
            "wrong-scope-before-invalid-argument",
            ful.FulfillOrderRequest(),
            Code.PERMISSION_DENIED,
            "INSUFFICIENT_SCOPE",
            auth="read",
            required_scope="fulfill",
        ),
        # LicensingService takes no bearer token: a garbage one changes nothing.
        invalid(
            "RenewLease",
            "garbage-bearer-token-is-ignored",
            lic.RenewLeaseRequest(),
            "lease_token",
            auth=(("authorization", "Bearer kt_garbage"),),
        ),
    ]


CASES = [
    *PUT_PRODUCT,
    *LIST_PRODUCTS,
    *PUT_SKU,
    *GET_SKU,
    *LIST_SKUS,
    *DELETE_SKU,
    *FULFILL_ORDER,
    *GET_ORDER,
    *GET_ENTITLEMENT,
    *ACTIVATE_SEAT,
    *lease_cases("RenewLease"),
    *lease_cases("ReleaseSeat"),
    *UNDECODABLE,
    *auth_cases(),
]


# --- running a case -------------------------------------------------------------------------


def _serialize(request: Message | bytes) -> bytes:
    return request if isinstance(request, bytes) else request.SerializeToString()


def _metadata(w: World, case: Case) -> Metadata | None:
    auth = RPCS[case.rpc][1] if case.auth == DEFAULT else case.auth
    if auth is None or isinstance(auth, tuple):
        return auth
    return w.tokens(auth)


async def _call(w: World, case: Case) -> bytes:
    service, _ = RPCS[case.rpc]
    request = case.request(w) if callable(case.request) else case.request
    method = w.channel.unary_unary(
        f"/{service}/{case.rpc}", request_serializer=_serialize, response_deserializer=None
    )
    response: bytes = await method(request, metadata=_metadata(w, case), timeout=30)
    return response


def test_case_ids_are_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
    assert {case.rpc for case in CASES} == set(RPCS)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_bad_input_is_refused_and_writes_nothing(world: World, case: Case) -> None:
    store = world.app.store
    counts, digests = await row_counts(store), await table_digests(store)
    problems: list[str] = []
    try:
        response = await _call(world, case)
    except grpc.aio.AioRpcError as error:
        failure = failure_of(error)
        got = f"{failure.code.name} {failure.reason or '(no ErrorInfo)'} {failure.fields} {failure.message!r}"
        if failure.code is Code.INTERNAL:
            problems.append(f"INTERNAL for bad input: {got}")
        if (failure.code, failure.reason) != (case.code, case.reason):
            problems.append(f"expected {case.code.name} {case.reason}, got {got}")
        if failure.domain != ERROR_DOMAIN:
            problems.append(f"ErrorInfo domain is {failure.domain!r}, not {ERROR_DOMAIN!r}")
        missing = [f for f in case.fields if f not in failure.fields]
        if missing:
            problems.append(f"BadRequest lacks {missing}; it names {failure.fields}")
        if case.code is Code.INVALID_ARGUMENT and failure.fields:
            first = failure.metadata.get("field")
            if first != failure.fields[0]:
                problems.append(f"metadata field={first!r}, first violation {failure.fields[0]!r}")
        for key, value in case.metadata.items():
            if failure.metadata.get(key) != value:
                problems.append(f"metadata {key}={failure.metadata.get(key)!r}, expected {value!r}")
    else:
        problems.append(
            f"expected {case.code.name} {case.reason}, but the call succeeded "
            f"({len(response)} bytes of response)"
        )
    counts_after = await row_counts(store)
    written = changed_tables(counts, counts_after) or {
        table: "rows changed" for table in changed_tables(digests, await table_digests(store))
    }
    if written:
        problems.append(f"the call wrote: {written}")
    assert not problems, f"{case.id}:\n  " + "\n  ".join(problems)


# --- the error reasons ----------------------------------------------------------------------


def test_error_reasons_match_the_proto_enum_and_have_a_status() -> None:
    in_proto = set(error_reason_pb2.ErrorReason.keys()) - {"ERROR_REASON_UNSPECIFIED"}
    in_domain = {reason.name for reason in Reason}
    assert in_domain == in_proto, (
        f"only in the proto: {sorted(in_proto - in_domain)}; "
        f"only in the server: {sorted(in_domain - in_proto)}"
    )
    assert all(reason.value == reason.name for reason in Reason)
    assert set(STATUS_OF) == set(Reason), f"no status for {sorted(set(Reason) - set(STATUS_OF))}"
    for name in in_proto:
        assert STATUS_OF[Reason[name]] is not Code.OK
