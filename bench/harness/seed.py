"""The seeded scale: a few entitlements through the real Fulfillment API, the bulk by SQL.

The entitlements the load drives (and whose license keys it needs) are made by
FulfillOrder, which alone returns a key. The background, 10,000+ entitlements
and 1,000,000 activations at full scale, is inserted with INSERT ... SELECT
generate_series: entitlement rows copy every column of an API-made one (the
column list comes from store/tables.py), activation rows are released or
lapsed-and-recorded, except on the 'big' entitlement, whose rows hold live
seats with leases far in the future.

Entitlements seeded by SQL are `ent_seed_<n>`, n from 0: number 0 gets no
activations (pgbench's one hot row), 1..N are pgbench's random rows. Their
key_hash is `seedkey` and n padded to 64 characters, so that pgbench can look
them up by key hash as the server does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import asyncpg
import grpc
from google.protobuf import duration_pb2

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.server.store.tables import entitlements

from .scale import Scale

PRODUCT_ID = "bench-cad"
SKU_ID = "BENCH-SEATS-1000"
LEASE_SECONDS = 3600  # outlives the run, so leases taken early can be renewed or released late
SEATS_PER_UNIT = 1_000  # one SKU; an order line's quantity sets the seats
HOT_SEATS = 1_000_000
DRIVEN_SEATS = 10_000
MAX_LINES = 100  # lines per order (domain/orders.py)
SEED_PREFIX = "ent_seed_"
PGBENCH_HOT = 0  # ent_seed_0: no background activations

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Licensed:
    """An entitlement the load calls with its license key."""

    entitlement_id: str
    license_key: str


@dataclass(frozen=True)
class Seeded:
    driven: tuple[Licensed, ...]  # many seats each; the spread ActivateSeat/CheckLicense rows
    history: Licensed  # scale.history_released released activations
    big: Licensed  # scale.big_live live seats
    fresh: Licensed  # no activations: the hot-entitlement row and the fresh baseline
    bulk: int  # ent_seed_1 .. ent_seed_<bulk>
    entitlement_rows: int
    activation_rows: int


def _sku() -> cat.Sku:
    create = cat.CreateOperation(
        edition_id="standard",
        seats_per_unit=SEATS_PER_UNIT,
        term="P1Y",
        license_model=cat.LICENSE_MODEL_FLOATING,
        lease_duration=duration_pb2.Duration(seconds=LEASE_SECONDS),
        dispatch=cat.DISPATCH_NONE,
    )
    return cat.Sku(
        sku_id=SKU_ID,
        product_id=PRODUCT_ID,
        display_name="Bench seats, 1,000 per unit",
        operations=[cat.Operation(create=create)],
    )


def _product() -> cat.Product:
    features = [cat.Feature(name="export-pdf"), cat.Feature(name="projects", limit=10)]
    edition = cat.Edition(edition_id="standard", display_name="Standard", features=features)
    return cat.Product(product_id=PRODUCT_ID, display_name="Bench CAD", editions=[edition])


def _order(order_id: str, lines: int, seats: int) -> ful.FulfillOrderRequest:
    return ful.FulfillOrderRequest(
        source="bench",
        order_id=order_id,
        customer=ful.Customer(
            customer_id=f"cust-{order_id}", name="Bench Ltd", email=f"{order_id}@bench.example"
        ),
        lines=[
            ful.OrderLine(sku_id=SKU_ID, quantity=max(1, seats // SEATS_PER_UNIT))
            for _ in range(lines)
        ],
    )


def _fulfil(
    stub: fulfillment_pb2_grpc.FulfillmentServiceStub,
    auth: Metadata,
    order_id: str,
    lines: int,
    seats: int,
) -> list[Licensed]:
    response = stub.FulfillOrder(_order(order_id, lines, seats), metadata=auth, timeout=60)
    return [Licensed(e.entitlement_id, e.license_key) for e in response.entitlements]


def create_through_api(
    address: str, token: str, scale: Scale
) -> tuple[list[Licensed], Licensed, Licensed, Licensed]:
    """Catalog and entitlements by CatalogService and FulfillOrder: driven, history, big, fresh."""
    auth: Metadata = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(address) as channel:
        catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
        catalog.PutProduct(cat.PutProductRequest(product=_product()), metadata=auth, timeout=60)
        catalog.PutSku(cat.PutSkuRequest(sku=_sku()), metadata=auth, timeout=60)
        stub = fulfillment_pb2_grpc.FulfillmentServiceStub(channel)
        driven: list[Licensed] = []
        for start in range(0, scale.driven_entitlements, MAX_LINES):
            lines = min(MAX_LINES, scale.driven_entitlements - start)
            driven += _fulfil(stub, auth, f"driven-{start}", lines, DRIVEN_SEATS)
        (history,) = _fulfil(stub, auth, "history", 1, DRIVEN_SEATS)
        (big,) = _fulfil(stub, auth, "big", 1, scale.big_seats)
        (fresh,) = _fulfil(stub, auth, "fresh", 1, HOT_SEATS)
    return driven, history, big, fresh


# --- bulk rows by SQL ---------------------------------------------------------

_ENTITLEMENT_OVERRIDES = {
    "entitlement_id": f"'{SEED_PREFIX}' || g",
    "customer_id": "'seed-customer-' || g",
    "customer_name": "'Seed customer ' || g",
    "customer_email": "'seed' || g || '@bench.example'",
    "ship_to_email": "'seed' || g || '@bench.example'",
    "key_hash": "'seedkey' || lpad(g::text, 57, '0')",
    "key_sealed": "NULL",
    "order_source": "'bench-seed'",
    "order_id": "'seed-' || g",
}


def _copy_entitlements_sql() -> str:
    """INSERT ... SELECT copying template $1 into ent_seed_0 .. ent_seed_$2."""
    names = [column.name for column in entitlements.columns]
    values = [_ENTITLEMENT_OVERRIDES.get(name, f"t.{name}") for name in names]
    return (
        f"INSERT INTO entitlements ({', '.join(names)}) "
        f"SELECT {', '.join(values)} FROM entitlements t, generate_series(0, $2::int) g "
        "WHERE t.entitlement_id = $1"
    )


_ACTIVATION_COLUMNS = (
    "activation_id, entitlement_id, fingerprint, label, lease_jti, lease_expire_time, "
    "create_time, update_time, released_time, seat_time, lapse_recorded_time, user_id"
)

# Released a day after their creation, sometime in the past year.
_RELEASED_ROWS = f"""
INSERT INTO activations ({_ACTIVATION_COLUMNS})
SELECT 'act_' || $2 || '_' || g, $1, $2 || '-device-' || g, 'seeded', 'lease_' || $2 || '_' || g,
       c + interval '15 minutes', c, c + interval '1 day', c + interval '1 day', c, NULL, NULL
FROM generate_series(1, $3::int) g,
     LATERAL (SELECT now() - interval '400 days' + (g % 360) * interval '1 day' AS c) t
"""

# Holding seats, leases renewed until far in the future.
_LIVE_ROWS = f"""
INSERT INTO activations ({_ACTIVATION_COLUMNS})
SELECT 'act_' || $2 || '_' || g, $1, $2 || '-device-' || g, 'seeded', 'lease_' || $2 || '_' || g,
       now() + interval '3650 days', c, c, NULL, c, NULL, NULL
FROM generate_series(1, $3::int) g,
     LATERAL (SELECT now() - interval '30 days' + (g % 30) * interval '1 day' AS c) t
"""

# Spread round-robin over the entitlements in $1: three in four released, the others
# lapsed long ago with the lapse already recorded (so no claim records it again).
_SPREAD_ROWS = f"""
INSERT INTO activations ({_ACTIVATION_COLUMNS})
SELECT 'act_spread_' || g, e.id, 'spread-device-' || g, 'seeded',
       'lease_spread_' || g, c + interval '15 minutes', c, c + interval '1 day',
       CASE WHEN g % 4 = 0 THEN NULL ELSE c + interval '1 day' END, c,
       CASE WHEN g % 4 = 0 THEN c + interval '1 day' ELSE NULL END, NULL
FROM generate_series(1, $2::int) g
JOIN unnest($1::text[]) WITH ORDINALITY AS e(id, n) ON e.n = 1 + g % cardinality($1::text[]),
     LATERAL (SELECT now() - interval '400 days' + (g % 360) * interval '1 day' AS c) t
"""


# The count every seat write keeps (migration 0006), made to match the rows put in here.
_SEATS_HELD = """
UPDATE entitlements AS e SET seats_held = c.held
FROM (SELECT entitlement_id, count(*) AS held FROM activations
      WHERE released_time IS NULL AND lapse_recorded_time IS NULL
      GROUP BY entitlement_id) AS c
WHERE e.entitlement_id = c.entitlement_id
"""


@contextlib.asynccontextmanager
async def _constraints_set_aside(conn: asyncpg.Connection, table: str) -> AsyncIterator[None]:
    """Drop the table's keys, foreign keys and indexes, and make them again at the end.

    A million rows load several times faster without them, and building a
    B-tree from all rows at once beats inserting into it row by row. The
    definitions are read from the catalog, so whatever the migrations made
    comes back as it was (and is checked: the keys are validated).
    """
    constraints = await conn.fetch(
        "SELECT conname, pg_get_constraintdef(oid) AS definition FROM pg_constraint "
        "WHERE conrelid = $1::regclass AND contype IN ('p', 'u', 'f') "
        "ORDER BY contype = 'f' DESC",
        table,
    )
    indexes = await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = $1 AND indexname NOT IN "
        "(SELECT conname FROM pg_constraint WHERE conrelid = $1::regclass)",
        table,
    )
    for row in constraints:
        await conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{row["conname"]}"')
    for row in indexes:
        await conn.execute(f'DROP INDEX "{row["indexname"]}"')
    yield
    await conn.execute("SET maintenance_work_mem = '256MB'")
    for row in reversed(constraints):  # keys first, then the foreign keys that need them
        await conn.execute(
            f'ALTER TABLE {table} ADD CONSTRAINT "{row["conname"]}" {row["definition"]}'
        )
    for row in indexes:
        await conn.execute(row["indexdef"])


async def seed_rows(dsn: str, scale: Scale, api_made: Seeded) -> Seeded:
    """Insert the background rows, then VACUUM ANALYZE; returns the final row counts."""
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        template = api_made.driven[0].entitlement_id
        await conn.execute(_copy_entitlements_sql(), template, scale.bulk_entitlements)
        spread_over: Sequence[str] = [
            *(f"{SEED_PREFIX}{n}" for n in range(1, scale.bulk_entitlements + 1)),
            *(d.entitlement_id for d in api_made.driven),
        ]
        async with conn.transaction(), _constraints_set_aside(conn, "activations"):
            history = api_made.history.entitlement_id
            await conn.execute(_RELEASED_ROWS, history, "hist", scale.history_released)
            await conn.execute(_LIVE_ROWS, api_made.big.entitlement_id, "big", scale.big_live)
            await conn.execute(_SPREAD_ROWS, list(spread_over), scale.spread_activations)
        await conn.execute(_SEATS_HELD)
        for table in ("entitlements", "activations"):
            await conn.execute(f"VACUUM ANALYZE {table}")
        entitlement_rows = int(await conn.fetchval("SELECT count(*) FROM entitlements"))
        activation_rows = int(await conn.fetchval("SELECT count(*) FROM activations"))
    finally:
        await conn.close()
    return Seeded(
        driven=api_made.driven,
        history=api_made.history,
        big=api_made.big,
        fresh=api_made.fresh,
        bulk=scale.bulk_entitlements,
        entitlement_rows=entitlement_rows,
        activation_rows=activation_rows,
    )


def seed(address: str, token: str, dsn: str, scale: Scale) -> Seeded:
    """The whole seeded state of a run."""
    driven, history, big, fresh = create_through_api(address, token, scale)
    api_made = Seeded(tuple(driven), history, big, fresh, 0, 0, 0)
    return asyncio.run(seed_rows(dsn, scale, api_made))


async def _live_seats(dsn: str, entitlement_id: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM activations WHERE entitlement_id = $1 "
            "AND released_time IS NULL AND lease_expire_time > now()) AS live, "
            "(SELECT seats FROM entitlements WHERE entitlement_id = $1) AS seats",
            entitlement_id,
        )
    finally:
        await conn.close()
    assert row is not None
    return int(row["live"]), int(row["seats"])


def live_seats(dsn: str, entitlement_id: str) -> tuple[int, int]:
    """(live activations counted by plain SQL, seats) of one entitlement."""
    return asyncio.run(_live_seats(dsn, entitlement_id))


async def _set_seats(dsn: str, entitlement_id: str, seats: int) -> None:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        await conn.execute(
            "UPDATE entitlements SET seats = $2 WHERE entitlement_id = $1", entitlement_id, seats
        )
    finally:
        await conn.close()


def set_seats(dsn: str, entitlement_id: str, seats: int) -> None:
    """Change an entitlement's seat count directly (the oversell check's limit)."""
    asyncio.run(_set_seats(dsn, entitlement_id, seats))
