"""Bad input to every implemented RPC, through a real server on both backends.

Every case must come back with its exact code, an ErrorInfo in the keyturn.dev
domain with the right reason, for INVALID_ARGUMENT a BadRequest naming the
offending field, never INTERNAL, and must leave every table as it was.

The cases share one server per backend (module scope) holding a small world: two
products, a SKU for every operation, one entitlement whose single seat is taken
and its lease, a perpetual entitlement, a cancelled one, one of the second
product, two more that only the year-9000 cases aim at, and page tokens issued by
the list calls. Only failing calls are made, so the world does not change unless
a call wrongly writes, which the case that made it reports.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import math
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

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
from keyturn.server.domain.license_key import generate_invitation_code, generate_license_key

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
    "ListEntitlements": (FULFILLMENT, "read"),
    "ListEntitlementEvents": (FULFILLMENT, "read"),
    "WatchEntitlementEvents": (FULFILLMENT, "read"),
    "ActivateSeat": (LICENSING, None),
    "RenewLease": (LICENSING, None),
    "ReleaseSeat": (LICENSING, None),
    "GetSigningKeys": (LICENSING, None),
    "ResendCredentials": (FULFILLMENT, "fulfill"),
    "CheckLicense": (LICENSING, None),
    "RedeemInvitation": (LICENSING, None),
}
# Server-streaming RPCs: a case reads the first message, where the error shows.
STREAMING = {"WatchEntitlementEvents"}

# What the world holds.
TAKEN_REFERENCE = "stripe:sub_taken"
PERPETUAL_REFERENCE = "stripe:sub_perpetual"
CANCELLED_REFERENCE = "stripe:sub_cancelled"
OTHER_REFERENCE = "stripe:sub_other"
OTHER_PRODUCT_ID = "other-app"
UNKNOWN_ENTITLEMENT = "ent_01arz3ndektsv4rrffq69g5fav"
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


def change_sku(sku_id: str, operation: cat.Operation) -> cat.Sku:
    """A SKU that changes an existing entitlement of the main product."""
    return cat.Sku(
        sku_id=sku_id, product_id=PRODUCT_ID, display_name=sku_id, operations=[operation]
    )


def _grace_sku() -> cat.Sku:
    sku = create_sku("GRACE-90D")
    sku.operations[0].create.grace_period.FromSeconds(90 * 86400)
    return sku


WORLD_SKUS = (
    create_sku("STD"),
    create_sku("BIG", seats=100_000),
    create_sku("SPARE"),
    create_sku("PERP", term=""),
    _grace_sku(),
    create_sku("OTHER-STD", product_id=OTHER_PRODUCT_ID),
    change_sku("RENEW", cat.Operation(renew=cat.RenewOperation(term="P1Y"))),
    change_sku("RENEW-100Y", cat.Operation(renew=cat.RenewOperation(term="P100Y"))),
    change_sku(
        "RENEW-50D",
        cat.Operation(renew=cat.RenewOperation(term="P50D", anchor=cat.RENEWAL_ANCHOR_FROM_EXPIRY)),
    ),
    change_sku("ADD-SEATS", cat.Operation(add_seats=cat.AddSeatsOperation(seats_per_unit=100_000))),
    change_sku(
        "REMOVE-SEATS", cat.Operation(remove_seats=cat.RemoveSeatsOperation(seats_per_unit=1))
    ),
    change_sku(
        "CHANGE-EDITION",
        cat.Operation(change_edition=cat.ChangeEditionOperation(edition_id="pro")),
    ),
    change_sku(
        "ADD-FEATURES",
        cat.Operation(add_features=cat.AddFeaturesOperation(features=[cat.Feature(name="extra")])),
    ),
    change_sku(
        "REMOVE-FEATURES",
        cat.Operation(remove_features=cat.RemoveFeaturesOperation(feature_names=["export-pdf"])),
    ),
    change_sku("CONVERT", cat.Operation(convert_trial=cat.ConvertTrialOperation(term="P1Y"))),
    change_sku("CANCEL", cat.Operation(cancel=cat.CancelOperation())),
)
# The SKUs that change an entitlement, one per operation.
CHANGE_SKUS = [
    "RENEW",
    "ADD-SEATS",
    "REMOVE-SEATS",
    "CHANGE-EDITION",
    "ADD-FEATURES",
    "REMOVE-FEATURES",
    "CONVERT",
    "CANCEL",
]


@dataclass
class World:
    app: AppContext
    channel: grpc.aio.Channel
    tokens: Tokens
    entitlement_id: str  # one seat, taken by the lease below
    license_key: str
    lease_token: str
    perpetual_id: str  # has PERPETUAL_REFERENCE
    cancelled_id: str  # has CANCELLED_REFERENCE
    other_product_id: str  # of OTHER_PRODUCT_ID, has OTHER_REFERENCE
    far_id: str  # aimed at only by the renewals into the year 9000
    far_end: datetime
    grace_id: str  # 90 days of grace; aimed at only by a renewal to the end of 9999
    grace_end: datetime
    last_sequence: int  # of the last event written (read again before each case)
    entitlements_page_token: str  # ListEntitlements, customer_id="cust-1", page_size=1
    events_page_token: str  # ListEntitlementEvents of the cancelled entitlement, page_size=1


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
    public = w.app.keys.keyring.find(header["kid"]).jwk()  # type: ignore[union-attr]
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
            for each in (product(), product(OTHER_PRODUCT_ID)):
                await catalog.PutProduct(cat.PutProductRequest(product=each), metadata=auth)
            for sku in WORLD_SKUS:
                await catalog.PutSku(cat.PutSkuRequest(sku=sku), metadata=auth)

            async def fulfilled(
                order_id: str, sku_id: str, reference: str = "", target: str = ""
            ) -> ful.Entitlement:
                request = order(order_id, sku_id, reference=reference)
                request.lines[0].entitlement_id = target
                response = await fulfillment.FulfillOrder(request, metadata=tokens("fulfill"))
                return response.entitlements[0]

            entitlement = await fulfilled(WORLD_ORDER_ID, "STD", TAKEN_REFERENCE)
            perpetual = await fulfilled("order-perpetual", "PERP", PERPETUAL_REFERENCE)
            cancelled = await fulfilled("order-cancelled", "STD", CANCELLED_REFERENCE)
            cancelled = await fulfilled("order-cancel", "CANCEL", target=cancelled.entitlement_id)
            assert cancelled.status == ful.ENTITLEMENT_STATUS_CANCELLED
            other = await fulfilled("order-other", "OTHER-STD", OTHER_REFERENCE)
            far = await fulfilled("order-far", "STD")
            grace = await fulfilled("order-grace", "GRACE-90D")
            activated = await licensing.ActivateSeat(
                lic.ActivateSeatRequest(
                    license_key=entitlement.license_key,
                    product_id=PRODUCT_ID,
                    fingerprint=WORLD_FINGERPRINT,
                    label="laptop",
                )
            )
            listed = await fulfillment.ListEntitlements(
                ful.ListEntitlementsRequest(customer_id="cust-1", page_size=1),
                metadata=tokens("read"),
            )
            events = await fulfillment.ListEntitlementEvents(
                ful.ListEntitlementEventsRequest(
                    entitlement_id=cancelled.entitlement_id, page_size=1
                ),
                metadata=tokens("read"),
            )
            assert listed.next_page_token
            assert events.next_page_token
            async with app.store.read() as tx:
                last_sequence = await tx.events.last_sequence()
            yield World(
                app=app,
                channel=channel,
                tokens=tokens,
                entitlement_id=entitlement.entitlement_id,
                license_key=entitlement.license_key,
                lease_token=activated.lease.token,
                perpetual_id=perpetual.entitlement_id,
                cancelled_id=cancelled.entitlement_id,
                other_product_id=other.entitlement_id,
                far_id=far.entitlement_id,
                far_end=far.end_time.ToDatetime(tzinfo=UTC),
                grace_id=grace.entitlement_id,
                grace_end=grace.end_time.ToDatetime(tzinfo=UTC),
                last_sequence=last_sequence,
                entitlements_page_token=listed.next_page_token,
                events_page_token=events.next_page_token,
            )
    finally:
        await server.stop(grace=1.0)
        await app.store.close()


# --- the cases ------------------------------------------------------------------------------

Request = Message | bytes | Callable[[World], Message | bytes]
Expected = str | Callable[[World], str]  # an ErrorInfo metadata value, or how to get it
DEFAULT = "default"


@dataclass(frozen=True)
class Case:
    rpc: str
    name: str
    request: Request
    code: Code
    reason: str
    fields: tuple[str, ...] = ()  # field paths the BadRequest must name
    metadata: dict[str, Expected] = field(default_factory=dict)  # ErrorInfo metadata expected
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
    **metadata: Expected,
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
    invalid(
        "PutSku",
        "grace-period-negative",
        sku_of(create(grace_period=lease(-86400))),
        cat_op("create.grace_period"),
    ),
    invalid(
        "PutSku",
        "grace-period-minus-1s",
        sku_of(create(grace_period=lease(-1))),
        cat_op("create.grace_period"),
    ),
    invalid(
        "PutSku",
        "grace-period-90d-plus-1s",
        sku_of(create(grace_period=lease(90 * 86400 + 1))),
        cat_op("create.grace_period"),
    ),
    invalid(
        "PutSku",
        "grace-period-90d-plus-999999999ns",
        sku_of(create(grace_period=lease(90 * 86400, 999_999_999))),
        cat_op("create.grace_period"),
    ),
    invalid(
        "PutSku",
        "grace-period-365d",
        sku_of(create(grace_period=lease(365 * 86400))),
        cat_op("create.grace_period"),
    ),
    invalid(
        "PutSku",
        "grace-period-beyond-proto-range",
        sku_of(create(grace_period=lease(10**15))),
        cat_op("create.grace_period"),
    ),
    invalid(
        "PutSku",
        "grace-period-int64-min",
        sku_of(create(grace_period=lease(-(2**63)))),
        cat_op("create.grace_period"),
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


# --- FulfillOrder lines that change an entitlement -------------------------------------------


def change(
    sku_id: str,
    target: Callable[[World], str] | None = None,
    quantity: int = 1,
    reference: str = "",
) -> Callable[[World], ful.FulfillOrderRequest]:
    """An order of one line of `sku_id` aimed at `target(world)` (and/or by `reference`)."""

    def build(w: World) -> ful.FulfillOrderRequest:
        entitlement_id = target(w) if target else ""
        return fulfil(
            [line(sku_id, quantity, entitlement_id=entitlement_id, external_reference=reference)]
        )

    return build


def world_id(w: World) -> str:
    return w.entitlement_id


def perpetual_id(w: World) -> str:
    return w.perpetual_id


def cancelled_id(w: World) -> str:
    return w.cancelled_id


def other_product_id(w: World) -> str:
    return w.other_product_id


def quantity_reaching(end: datetime, target: datetime, days_per_unit: int) -> int:
    """Units of a `days_per_unit` renewal that take `end` to `target` or less than one
    unit past it."""
    return math.ceil((target - end).days / days_per_unit)


def renew_far_into(year: int) -> Callable[[World], ful.FulfillOrderRequest]:
    """RENEW-50D (from expiry) on the far entitlement, enough units to end in `year`."""

    def build(w: World) -> ful.FulfillOrderRequest:
        units = quantity_reaching(w.far_end, datetime(year, 1, 1, tzinfo=UTC), 50)
        return change("RENEW-50D", lambda w: w.far_id, quantity=units)(w)

    return build


def renew_grace_to_end_of_9999(w: World) -> ful.FulfillOrderRequest:
    """An end date in October or November 9999: plus 90 days of grace, past 9999-12-31."""
    units = quantity_reaching(w.grace_end, datetime(9999, 10, 1, tzinfo=UTC), 50)
    end = w.grace_end.toordinal() + 50 * units
    assert datetime(9999, 10, 1).toordinal() <= end <= datetime(9999, 11, 20).toordinal()
    return change("RENEW-50D", lambda w: w.grace_id, quantity=units)(w)


def failing_last_line(last: ful.OrderLine) -> Callable[[World], ful.FulfillOrderRequest]:
    """Three good lines (a create with a new reference, a renewal that attaches another
    reference, added seats), then `last`: nothing of the first three may remain."""

    def build(w: World) -> ful.FulfillOrderRequest:
        return fulfil(
            [
                line("STD", external_reference="stripe:sub_multi_new"),
                line(
                    "RENEW",
                    entitlement_id=w.entitlement_id,
                    external_reference="stripe:sub_multi_attached",
                ),
                line("ADD-SEATS", entitlement_id=w.entitlement_id),
                last,
            ]
        )

    return build


def failing_last_line_to(
    sku_id: str, target: Callable[[World], str]
) -> Callable[[World], ful.FulfillOrderRequest]:
    return lambda w: failing_last_line(line(sku_id, entitlement_id=target(w)))(w)


FULFILL_CHANGES = [
    *[
        invalid(
            "FulfillOrder",
            f"{sku.lower()}-without-target",
            fulfil([line(sku)]),
            "lines[0].entitlement_id",
        )
        for sku in CHANGE_SKUS
    ],
    invalid(
        "FulfillOrder",
        "renew-without-target-on-second-line",
        fulfil([line(), line("RENEW", quantity=2)]),
        "lines[1].entitlement_id",
    ),
    refused(
        "FulfillOrder",
        "renew-unknown-entitlement-id",
        change("RENEW", lambda w: UNKNOWN_ENTITLEMENT),
        Code.NOT_FOUND,
        "ENTITLEMENT_NOT_FOUND",
        entitlement_id=UNKNOWN_ENTITLEMENT,
        line="0",
    ),
    refused(
        "FulfillOrder",
        "cancel-unknown-entitlement-id",
        change("CANCEL", lambda w: "ent_nope"),
        Code.NOT_FOUND,
        "ENTITLEMENT_NOT_FOUND",
        entitlement_id="ent_nope",
        line="0",
    ),
    refused(
        "FulfillOrder",
        "renew-unknown-external-reference",
        change("RENEW", reference="stripe:sub_unknown"),
        Code.NOT_FOUND,
        "ENTITLEMENT_NOT_FOUND",
        external_reference="stripe:sub_unknown",
        line="0",
    ),
    refused(
        "FulfillOrder",
        "add-seats-unknown-external-reference-on-second-line",
        lambda w: fulfil(
            [
                line("RENEW", entitlement_id=w.entitlement_id),
                line("ADD-SEATS", external_reference="stripe:sub_unknown"),
            ]
        ),
        Code.NOT_FOUND,
        "ENTITLEMENT_NOT_FOUND",
        external_reference="stripe:sub_unknown",
        line="1",
    ),
    invalid(
        "FulfillOrder",
        "renew-target-of-another-product",
        change("RENEW", other_product_id),
        "lines[0].entitlement_id",
    ),
    invalid(
        "FulfillOrder",
        "add-seats-reference-of-another-product",
        change("ADD-SEATS", reference=OTHER_REFERENCE),
        "lines[0].external_reference",
    ),
    invalid(
        "FulfillOrder",
        "cancel-target-of-another-product",
        change("CANCEL", other_product_id),
        "lines[0].entitlement_id",
    ),
    refused(
        "FulfillOrder",
        "renew-attaching-a-reference-of-another-entitlement",
        change("RENEW", world_id, reference=PERPETUAL_REFERENCE),
        Code.ALREADY_EXISTS,
        "EXTERNAL_REFERENCE_TAKEN",
        external_reference=PERPETUAL_REFERENCE,
        line="0",
    ),
    refused(
        "FulfillOrder",
        "add-features-attaching-a-reference-of-another-product",
        change("ADD-FEATURES", world_id, reference=OTHER_REFERENCE),
        Code.ALREADY_EXISTS,
        "EXTERNAL_REFERENCE_TAKEN",
        external_reference=OTHER_REFERENCE,
        line="0",
    ),
    refused(
        "FulfillOrder",
        "same-new-reference-attached-to-two-entitlements",
        lambda w: fulfil(
            [
                line("RENEW", entitlement_id=w.entitlement_id, external_reference="stripe:x"),
                line("ADD-SEATS", entitlement_id=w.far_id, external_reference="stripe:x"),
            ]
        ),
        Code.ALREADY_EXISTS,
        "EXTERNAL_REFERENCE_TAKEN",
        external_reference="stripe:x",
        line="1",
    ),
    refused(
        "FulfillOrder",
        "remove-the-only-seat",
        change("REMOVE-SEATS", world_id),
        Code.FAILED_PRECONDITION,
        "SEAT_MINIMUM",
        entitlement_id=world_id,
        seats="1",
        line="0",
    ),
    refused(
        "FulfillOrder",
        "remove-100000-of-1-seat",
        change("REMOVE-SEATS", world_id, quantity=100_000),
        Code.FAILED_PRECONDITION,
        "SEAT_MINIMUM",
        entitlement_id=world_id,
        seats="1",
        line="0",
    ),
    refused(
        "FulfillOrder",
        "remove-seats-by-reference-of-perpetual",
        change("REMOVE-SEATS", reference=PERPETUAL_REFERENCE),
        Code.FAILED_PRECONDITION,
        "SEAT_MINIMUM",
        entitlement_id=perpetual_id,
        seats="1",
        line="0",
    ),
    refused(
        "FulfillOrder",
        "convert-a-paid-entitlement",
        change("CONVERT", world_id),
        Code.FAILED_PRECONDITION,
        "NOT_A_TRIAL",
        entitlement_id=world_id,
        line="0",
    ),
    refused(
        "FulfillOrder",
        "convert-a-perpetual-entitlement",
        change("CONVERT", perpetual_id),
        Code.FAILED_PRECONDITION,
        "NOT_A_TRIAL",
        entitlement_id=perpetual_id,
        line="0",
    ),
    refused(
        "FulfillOrder",
        "renew-a-perpetual-entitlement",
        change("RENEW", perpetual_id),
        Code.FAILED_PRECONDITION,
        "ENTITLEMENT_PERPETUAL",
        entitlement_id=perpetual_id,
        line="0",
    ),
    refused(
        "FulfillOrder",
        "renew-a-perpetual-entitlement-by-reference",
        change("RENEW-100Y", reference=PERPETUAL_REFERENCE, quantity=100_000),
        Code.FAILED_PRECONDITION,
        "ENTITLEMENT_PERPETUAL",
        entitlement_id=perpetual_id,
        line="0",
    ),
    *[
        refused(
            "FulfillOrder",
            f"{sku.lower()}-a-cancelled-entitlement",
            change(sku, cancelled_id),
            Code.FAILED_PRECONDITION,
            "ENTITLEMENT_CANCELLED",
            entitlement_id=cancelled_id,
            line="0",
        )
        for sku in CHANGE_SKUS
    ],
    refused(
        "FulfillOrder",
        "renew-a-cancelled-entitlement-by-reference",
        change("RENEW", reference=CANCELLED_REFERENCE),
        Code.FAILED_PRECONDITION,
        "ENTITLEMENT_CANCELLED",
        entitlement_id=cancelled_id,
        line="0",
    ),
    invalid(
        "FulfillOrder",
        "add-seats-to-1000001",
        change("ADD-SEATS", world_id, quantity=10),
        "lines[0].quantity",
    ),
    invalid(
        "FulfillOrder",
        "add-seats-100000x100000",
        change("ADD-SEATS", world_id, quantity=100_000),
        "lines[0].quantity",
    ),
    invalid(
        "FulfillOrder",
        "add-seats-to-1000001-over-two-lines",
        lambda w: fulfil(
            [
                line("ADD-SEATS", 5, entitlement_id=w.entitlement_id),
                line("ADD-SEATS", 5, entitlement_id=w.entitlement_id),
            ]
        ),
        "lines[1].quantity",
    ),
    invalid(
        "FulfillOrder",
        "renew-100y-x-70-past-year-9000",
        change("RENEW-100Y", world_id, quantity=70),
        "lines[0].quantity",
    ),
    invalid(
        "FulfillOrder",
        "renew-100y-x-100000",
        change("RENEW-100Y", world_id, quantity=100_000),
        "lines[0].quantity",
    ),
    invalid(
        "FulfillOrder",
        "renew-50d-x-100000-past-year-9999",
        change("RENEW-50D", world_id, quantity=100_000),
        "lines[0].quantity",
    ),
    invalid(
        "FulfillOrder",
        "renew-50d-into-year-9500",
        renew_far_into(9500),
        "lines[0].quantity",
    ),
    invalid(
        "FulfillOrder",
        "renew-50d-to-end-of-9999-with-90d-grace",
        renew_grace_to_end_of_9999,
        "lines[0].quantity",
    ),
    refused(
        "FulfillOrder",
        "multi-line-last-renews-a-perpetual",
        failing_last_line_to("RENEW", perpetual_id),
        Code.FAILED_PRECONDITION,
        "ENTITLEMENT_PERPETUAL",
        entitlement_id=perpetual_id,
        line="3",
    ),
    refused(
        "FulfillOrder",
        "multi-line-last-cancels-a-cancelled",
        failing_last_line_to("CANCEL", cancelled_id),
        Code.FAILED_PRECONDITION,
        "ENTITLEMENT_CANCELLED",
        entitlement_id=cancelled_id,
        line="3",
    ),
    refused(
        "FulfillOrder",
        "multi-line-last-removes-the-only-seat",
        failing_last_line(line("REMOVE-SEATS", external_reference=PERPETUAL_REFERENCE)),
        Code.FAILED_PRECONDITION,
        "SEAT_MINIMUM",
        entitlement_id=perpetual_id,
        seats="1",
        line="3",
    ),
    refused(
        "FulfillOrder",
        "multi-line-last-names-an-unknown-entitlement",
        failing_last_line(line("RENEW", entitlement_id=UNKNOWN_ENTITLEMENT)),
        Code.NOT_FOUND,
        "ENTITLEMENT_NOT_FOUND",
        entitlement_id=UNKNOWN_ENTITLEMENT,
        line="3",
    ),
    refused(
        "FulfillOrder",
        "multi-line-last-takes-a-reference-just-created",
        failing_last_line(
            line("STD", external_reference="stripe:sub_multi_new"),
        ),
        Code.ALREADY_EXISTS,
        "EXTERNAL_REFERENCE_TAKEN",
        external_reference="stripe:sub_multi_new",
        line="3",
    ),
    invalid(
        "FulfillOrder",
        "multi-line-last-has-no-target",
        failing_last_line(line("CONVERT")),
        "lines[3].entitlement_id",
    ),
    invalid(
        "FulfillOrder",
        "multi-line-last-aims-at-another-product",
        failing_last_line(line("RENEW", external_reference=OTHER_REFERENCE)),
        "lines[3].external_reference",
    ),
    invalid(
        "FulfillOrder",
        "multi-line-last-adds-too-many-seats",
        failing_last_line(line("ADD-SEATS", 9, external_reference=TAKEN_REFERENCE)),
        "lines[3].quantity",
    ),
]


# --- ListEntitlements, ListEntitlementEvents, WatchEntitlementEvents --------------------------


def entitlements_token_with(**filters: object) -> Callable[[World], ful.ListEntitlementsRequest]:
    """The world's real ListEntitlements token (issued for customer_id=cust-1) with `filters`."""
    return lambda w: ful.ListEntitlementsRequest(
        page_token=w.entitlements_page_token,
        **filters,  # type: ignore[arg-type]
    )


def list_entitlements(**fields: object) -> ful.ListEntitlementsRequest:
    return ful.ListEntitlementsRequest(**fields)  # type: ignore[arg-type]


LIST_ENTITLEMENTS = [
    invalid("ListEntitlements", "negative-page-size", list_entitlements(page_size=-1), "page_size"),
    invalid(
        "ListEntitlements",
        "int32-min-page-size",
        list_entitlements(page_size=-(2**31)),
        "page_size",
    ),
    invalid(
        "ListEntitlements",
        "garbage-page-token",
        list_entitlements(page_token="!!garbage!!"),
        "page_token",
    ),
    invalid(
        "ListEntitlements",
        "page-token-10k-chars",
        list_entitlements(page_token=K10),
        "page_token",
    ),
    invalid(
        "ListEntitlements",
        "page-token-of-another-customer",
        entitlements_token_with(customer_id="cust-2"),
        "page_token",
    ),
    invalid(
        "ListEntitlements",
        "page-token-without-its-filter",
        entitlements_token_with(),
        "page_token",
    ),
    invalid(
        "ListEntitlements",
        "page-token-with-an-extra-filter",
        entitlements_token_with(customer_id="cust-1", status=ful.ENTITLEMENT_STATUS_ACTIVE),
        "page_token",
    ),
    invalid(
        "ListEntitlements",
        "page-token-of-list-entitlement-events",
        lambda w: list_entitlements(page_token=w.events_page_token),
        "page_token",
    ),
    invalid(
        "ListEntitlements",
        "page-token-of-list-products",
        list_entitlements(page_token=page_token({"s": "products", "a": "acme-cad"})),
        "page_token",
    ),
    invalid(
        "ListEntitlements",
        "page-token-forged-nul-cursor",
        list_entitlements(
            page_token=page_token({"s": "entitlements:" + "\x1f" * 4, "a": "ent_\x00"})
        ),
        "page_token",
    ),
    invalid(
        "ListEntitlements",
        "email-not-an-email",
        list_entitlements(email="not-an-email"),
        "email",
    ),
    invalid("ListEntitlements", "email-two-ats", list_entitlements(email="a@b@c.example"), "email"),
    invalid("ListEntitlements", "email-10k-chars", list_entitlements(email=K10), "email"),
    invalid(
        "ListEntitlements",
        "email-255-chars",
        list_entitlements(email="a" * 60 + "@" + "b" * 186 + ".example"),
        "email",
    ),
    invalid(
        "ListEntitlements",
        "email-nul-char",
        list_entitlements(email="it\x00@initech.example"),
        "email",
    ),
    invalid(
        "ListEntitlements",
        "customer-id-129-chars",
        list_entitlements(customer_id="c" * 129),
        "customer_id",
    ),
    invalid(
        "ListEntitlements",
        "customer-id-10k-chars",
        list_entitlements(customer_id=K10),
        "customer_id",
    ),
    invalid(
        "ListEntitlements",
        "customer-id-with-space",
        list_entitlements(customer_id="cust 1"),
        "customer_id",
    ),
    invalid(
        "ListEntitlements",
        "product-id-uppercase",
        list_entitlements(product_id="Acme-CAD"),
        "product_id",
    ),
    invalid(
        "ListEntitlements",
        "product-id-starts-with-digit",
        list_entitlements(product_id="1acme"),
        "product_id",
    ),
    invalid(
        "ListEntitlements",
        "product-id-65-chars",
        list_entitlements(product_id="p" * 65),
        "product_id",
    ),
    invalid(
        "ListEntitlements", "product-id-10k-chars", list_entitlements(product_id=K10), "product_id"
    ),
    invalid(
        "ListEntitlements",
        "external-reference-201-chars",
        list_entitlements(external_reference="r" * 201),
        "external_reference",
    ),
    invalid(
        "ListEntitlements",
        "external-reference-10k-chars",
        list_entitlements(external_reference=K10),
        "external_reference",
    ),
    invalid(
        "ListEntitlements",
        "external-reference-nul-char",
        list_entitlements(external_reference="stripe:\x00"),
        "external_reference",
    ),
    invalid("ListEntitlements", "status-99", list_entitlements(status=99), "status"),
    invalid("ListEntitlements", "status-negative", list_entitlements(status=-1), "status"),
    invalid(
        "ListEntitlements",
        "every-text-filter-bad",
        list_entitlements(
            customer_id=K10, email="not-an-email", product_id="Not A Slug", external_reference=K10
        ),
        "customer_id",
        "email",
        "product_id",
        "external_reference",
    ),
    invalid(
        "ListEntitlements",
        "status-99-and-bad-email",
        list_entitlements(status=99, email="not-an-email"),
        "status",
        "email",
    ),
]


def events_of(
    target: Callable[[World], str], page_size: int = 0, token: str = ""
) -> Callable[[World], ful.ListEntitlementEventsRequest]:
    return lambda w: ful.ListEntitlementEventsRequest(
        entitlement_id=target(w), page_size=page_size, page_token=token
    )


def events_cursor(cursor: str) -> Callable[[World], ful.ListEntitlementEventsRequest]:
    """A token shaped as the server's for the cancelled entitlement, with any cursor."""
    return lambda w: ful.ListEntitlementEventsRequest(
        entitlement_id=w.cancelled_id,
        page_token=page_token({"s": f"events:{w.cancelled_id}", "a": cursor}),
    )


LIST_ENTITLEMENT_EVENTS = [
    invalid(
        "ListEntitlementEvents",
        "empty-request",
        ful.ListEntitlementEventsRequest(),
        "entitlement_id",
    ),
    invalid(
        "ListEntitlementEvents",
        "entitlement-id-65-chars",
        ful.ListEntitlementEventsRequest(entitlement_id="e" * 65),
        "entitlement_id",
    ),
    invalid(
        "ListEntitlementEvents",
        "entitlement-id-10k-chars",
        ful.ListEntitlementEventsRequest(entitlement_id=K10),
        "entitlement_id",
    ),
    invalid(
        "ListEntitlementEvents",
        "entitlement-id-nul-char",
        ful.ListEntitlementEventsRequest(entitlement_id="ent_\x00"),
        "entitlement_id",
    ),
    refused(
        "ListEntitlementEvents",
        "unknown-entitlement",
        ful.ListEntitlementEventsRequest(entitlement_id=UNKNOWN_ENTITLEMENT),
        Code.NOT_FOUND,
        "ENTITLEMENT_NOT_FOUND",
        entitlement_id=UNKNOWN_ENTITLEMENT,
    ),
    invalid(
        "ListEntitlementEvents",
        "negative-page-size",
        events_of(world_id, page_size=-1),
        "page_size",
    ),
    invalid(
        "ListEntitlementEvents",
        "negative-page-size-of-unknown-entitlement",
        ful.ListEntitlementEventsRequest(entitlement_id=UNKNOWN_ENTITLEMENT, page_size=-1),
        "page_size",
    ),
    invalid(
        "ListEntitlementEvents",
        "garbage-page-token",
        events_of(world_id, token="%%%"),
        "page_token",
    ),
    invalid(
        "ListEntitlementEvents",
        "page-token-of-another-entitlement",
        lambda w: events_of(world_id, token=w.events_page_token)(w),
        "page_token",
    ),
    invalid(
        "ListEntitlementEvents",
        "page-token-of-list-entitlements",
        lambda w: events_of(cancelled_id, token=w.entitlements_page_token)(w),
        "page_token",
    ),
    invalid(
        "ListEntitlementEvents",
        "page-token-forged-non-numeric-cursor",
        events_cursor("abc"),
        "page_token",
    ),
    invalid(
        "ListEntitlementEvents",
        "page-token-forged-negative-cursor",
        events_cursor("-1"),
        "page_token",
    ),
    invalid(
        "ListEntitlementEvents",
        "page-token-forged-superscript-digit-cursor",
        events_cursor("\u00b2"),
        "page_token",
    ),
    invalid(
        "ListEntitlementEvents",
        "page-token-forged-30-digit-cursor",
        events_cursor("9" * 30),
        "page_token",
    ),
]


def watch_after(sequence: Callable[[World], int]) -> Callable[[World], Message]:
    return lambda w: ful.WatchEntitlementEventsRequest(after_sequence=sequence(w))


def last_sequence(w: World) -> str:
    return str(w.last_sequence)


WATCH_ENTITLEMENT_EVENTS = [
    invalid(
        "WatchEntitlementEvents",
        "negative-after-sequence",
        ful.WatchEntitlementEventsRequest(after_sequence=-1),
        "after_sequence",
    ),
    invalid(
        "WatchEntitlementEvents",
        "int64-min-after-sequence",
        ful.WatchEntitlementEventsRequest(after_sequence=-(2**63)),
        "after_sequence",
    ),
    refused(
        "WatchEntitlementEvents",
        "after-sequence-one-beyond-the-last",
        watch_after(lambda w: w.last_sequence + 1),
        Code.OUT_OF_RANGE,
        "SEQUENCE_OUT_OF_RANGE",
        last_sequence=last_sequence,
    ),
    refused(
        "WatchEntitlementEvents",
        "int64-max-after-sequence",
        ful.WatchEntitlementEventsRequest(after_sequence=2**63 - 1),
        Code.OUT_OF_RANGE,
        "SEQUENCE_OUT_OF_RANGE",
        last_sequence=last_sequence,
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


def with_identity(
    rpc: str, token: Callable[[World], str]
) -> Callable[[World], lic.ActivateSeatRequest | lic.CheckLicenseRequest]:
    def build(w: World) -> lic.ActivateSeatRequest | lic.CheckLicenseRequest:
        if rpc == "CheckLicense":
            return lic.CheckLicenseRequest(identity_token=token(w), product_id=PRODUCT_ID)
        return lic.ActivateSeatRequest(
            identity_token=token(w), product_id=PRODUCT_ID, fingerprint="device-0003"
        )

    return build


def identity_token_cases(rpc: str) -> list[Case]:
    """Identity tokens that are not ours get the answer of an unknown license key."""
    bad = Code.UNAUTHENTICATED, "INVALID_LICENSE_KEY"
    return [
        refused(rpc, "identity-token-garbage", with_identity(rpc, lambda w: "garbage"), *bad),
        refused(rpc, "identity-token-10k-chars", with_identity(rpc, lambda w: K10), *bad),
        refused(rpc, "lease-as-identity-token", with_identity(rpc, lambda w: w.lease_token), *bad),
        refused(
            rpc, "license-key-as-identity-token", with_identity(rpc, lambda w: w.license_key), *bad
        ),
        refused(rpc, "identity-token-alg-none", with_identity(rpc, alg_none_lease), *bad),
        refused(rpc, "identity-token-hs256", with_identity(rpc, hs256_lease), *bad),
        refused(rpc, "identity-token-foreign-key", with_identity(rpc, foreign_lease), *bad),
    ]


def check(
    license_key: str | None = None, product_id: str = PRODUCT_ID
) -> Callable[[World], lic.CheckLicenseRequest]:
    def build(w: World) -> lic.CheckLicenseRequest:
        key = w.license_key if license_key is None else license_key
        return lic.CheckLicenseRequest(license_key=key, product_id=product_id)

    return build


RESEND_CREDENTIALS = [
    invalid("ResendCredentials", "empty-request", ful.ResendCredentialsRequest(), "entitlement_id"),
    invalid(
        "ResendCredentials",
        "entitlement-id-10k-chars",
        ful.ResendCredentialsRequest(entitlement_id=K10),
        "entitlement_id",
    ),
    refused(
        "ResendCredentials",
        "unknown-entitlement",
        ful.ResendCredentialsRequest(entitlement_id="ent_00000000000000000000000000"),
        Code.NOT_FOUND,
        "ENTITLEMENT_NOT_FOUND",
        entitlement_id="ent_00000000000000000000000000",
    ),
]

CHECK_LICENSE = [
    invalid(
        "CheckLicense", "empty-request", lic.CheckLicenseRequest(), "product_id", "license_key"
    ),
    invalid("CheckLicense", "product-id-10k-chars", check(product_id=K10), "product_id"),
    refused(
        "CheckLicense",
        "malformed-license-key",
        check("not-a-key"),
        Code.UNAUTHENTICATED,
        "INVALID_LICENSE_KEY",
    ),
    refused(
        "CheckLicense",
        "license-key-with-typo",
        lambda w: check(w.license_key[:-1] + ("0" if w.license_key[-1] != "0" else "1"))(w),
        Code.UNAUTHENTICATED,
        "INVALID_LICENSE_KEY",
    ),
    refused(
        "CheckLicense",
        "unknown-license-key",
        check(generate_license_key()),
        Code.UNAUTHENTICATED,
        "INVALID_LICENSE_KEY",
    ),
    refused(
        "CheckLicense",
        "unknown-product",
        check(product_id="other-app"),
        Code.PERMISSION_DENIED,
        "PRODUCT_MISMATCH",
        product_id="other-app",
    ),
    *identity_token_cases("CheckLicense"),
]

REDEEM_INVITATION = [
    invalid("RedeemInvitation", "empty-request", lic.RedeemInvitationRequest(), "invitation_code"),
    *(
        refused(
            "RedeemInvitation",
            name,
            request,
            Code.UNAUTHENTICATED,
            "INVALID_INVITATION",
        )
        for name, request in [
            ("garbage", lic.RedeemInvitationRequest(invitation_code="INVITE-0001")),
            ("10k-chars", lic.RedeemInvitationRequest(invitation_code=K10)),
            ("non-ascii", lic.RedeemInvitationRequest(invitation_code="ÄÖÜß-ÄÖÜß")),
            (
                "unknown-code",
                lic.RedeemInvitationRequest(invitation_code=generate_invitation_code()),
            ),
            (
                "license-key-as-code",
                lambda w: lic.RedeemInvitationRequest(invitation_code=w.license_key),
            ),
            ("lease-as-code", lambda w: lic.RedeemInvitationRequest(invitation_code=w.lease_token)),
        ]
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
    Case("WatchEntitlementEvents", "truncated-varint", b"\x08\xff", *INVALID_UNDECODABLE),
    Case("ListEntitlements", "truncated-request", b"\x12\x05ab", *INVALID_UNDECODABLE),
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
    "ListEntitlements": ful.ListEntitlementsRequest(),
    "ListEntitlementEvents": events_of(world_id),
    "ResendCredentials": lambda w: ful.ResendCredentialsRequest(entitlement_id=w.entitlement_id),
    "WatchEntitlementEvents": ful.WatchEntitlementEventsRequest(after_sequence=0),
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
            "ListEntitlements",
            "catalog-scope-token",
            GOOD_REQUESTS["ListEntitlements"],
            Code.PERMISSION_DENIED,
            "INSUFFICIENT_SCOPE",
            auth="catalog",
            required_scope="read",
        ),
        refused(
            "ListEntitlements",
            "wrong-scope-before-invalid-argument",
            list_entitlements(page_size=-1, email="not-an-email"),
            Code.PERMISSION_DENIED,
            "INSUFFICIENT_SCOPE",
            auth="fulfill",
            required_scope="read",
        ),
        refused(
            "ListEntitlementEvents",
            "wrong-scope-before-not-found",
            ful.ListEntitlementEventsRequest(entitlement_id=UNKNOWN_ENTITLEMENT),
            Code.PERMISSION_DENIED,
            "INSUFFICIENT_SCOPE",
            auth="fulfill",
            required_scope="read",
        ),
        refused(
            "WatchEntitlementEvents",
            "wrong-scope-before-out-of-range",
            ful.WatchEntitlementEventsRequest(after_sequence=2**63 - 1),
            Code.PERMISSION_DENIED,
            "INSUFFICIENT_SCOPE",
            auth="fulfill",
            required_scope="read",
        ),
        refused(
            "WatchEntitlementEvents",
            "catalog-scope-token",
            GOOD_REQUESTS["WatchEntitlementEvents"],
            Code.PERMISSION_DENIED,
            "INSUFFICIENT_SCOPE",
            auth="catalog",
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
    *FULFILL_CHANGES,
    *GET_ORDER,
    *GET_ENTITLEMENT,
    *LIST_ENTITLEMENTS,
    *LIST_ENTITLEMENT_EVENTS,
    *WATCH_ENTITLEMENT_EVENTS,
    *ACTIVATE_SEAT,
    *identity_token_cases("ActivateSeat"),
    *CHECK_LICENSE,
    *RESEND_CREDENTIALS,
    *REDEEM_INVITATION,
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
    path = f"/{service}/{case.rpc}"
    if case.rpc not in STREAMING:
        method = w.channel.unary_unary(
            path, request_serializer=_serialize, response_deserializer=None
        )
        response: bytes = await method(request, metadata=_metadata(w, case), timeout=30)
        return response
    # A stream that wrongly starts sends the events there are: its first one is the answer.
    stream = w.channel.unary_stream(path, request_serializer=_serialize, response_deserializer=None)
    call = stream(request, metadata=_metadata(w, case), timeout=10)
    try:
        first = await call.read()
    finally:
        call.cancel()
    return first if isinstance(first, bytes) else b""  # not bytes: the stream ended


def _expected(w: World, value: Expected) -> str:
    return value(w) if callable(value) else value


def test_case_ids_are_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
    assert {case.rpc for case in CASES} == set(RPCS)


def test_every_implemented_rpc_has_cases() -> None:
    """Each RPC of the three services is either in RPCS (so has cases) or not yet implemented."""
    declared: dict[str, tuple[str, bool]] = {}
    for module in (cat, ful, lic):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                declared[method.name] = (service.full_name, method.server_streaming)
    assert set(RPCS) == set(declared)
    assert {rpc: service for rpc, (service, _) in RPCS.items()} == {
        rpc: declared[rpc][0] for rpc in RPCS
    }
    assert {rpc for rpc, (_, streaming) in declared.items() if streaming} == STREAMING


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_bad_input_is_refused_and_writes_nothing(world: World, case: Case) -> None:
    store = world.app.store
    counts, digests = await row_counts(store), await table_digests(store)
    # A case that wrongly wrote an event must not make the stream cases fail as well.
    async with store.read() as tx:
        world.last_sequence = await tx.events.last_sequence()
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
        for key, expected in case.metadata.items():
            value = _expected(world, expected)
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
