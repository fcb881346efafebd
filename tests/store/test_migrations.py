"""The Alembic migrations, on both backends: the schema they build is the one the code
declares, and upgrading a database that holds data keeps it and fills the new columns.

Each test starts from an empty database of its own (not the migrated template), and
runs the migrations the way the server does (`keyturn.server.store.migrate.upgrade`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from google.protobuf import json_format
from sqlalchemy import JSON, insert, inspect, select, text
from sqlalchemy.engine import Connection

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.fulfillment.v1 import fulfillment_pb2_grpc
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.tokens import hash_token
from keyturn.server.bootstrap import build_context
from keyturn.server.domain.entitlement import Status
from keyturn.server.domain.ids import new_id
from keyturn.server.domain.license_key import generate_license_key
from keyturn.server.leases.keyring import new_signing_key
from keyturn.server.sealing import Sealer
from keyturn.server.store.entitlement_repository import EntitlementFilter
from keyturn.server.store.event_repository import NewEvent
from keyturn.server.store.migrate import MIGRATIONS, current_revision, head_revision, upgrade
from keyturn.server.store.tables import (
    activations,
    api_tokens,
    entitlements,
    events,
    external_references,
    metadata,
    named_users,
    orders,
)
from keyturn.server.store.unit_of_work import Store

from conftest import BACKENDS, TEST_SECRET, settings_for
from support.empty_database import empty_database
from support.rpc import PRODUCT_ID, failure_of

FIRST_REVISION = "0001"
# Times with and without microseconds: a value whose microseconds are 0 is written by
# some drivers without a fraction, which must not change how it compares.
CREATED = datetime(2026, 3, 14, 15, 9, 26, 535897, tzinfo=UTC)
END = datetime(2027, 3, 14, 15, 0, 0, tzinfo=UTC)
GRACE_SECONDS = 7 * 86400
OTHER_END = datetime(2026, 9, 1, 8, 30, 0, 250000, tzinfo=UTC)
SEAT_1 = datetime(2026, 3, 15, 9, 0, 0, 1, tzinfo=UTC)
SEAT_2 = datetime(2026, 3, 16, 10, 0, 0, tzinfo=UTC)
EVENT_SEQUENCES = (1, 2, 3, 9)  # gaps are possible in 0001 (a rolled-back insert)


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database, no table in it."""
    with empty_database(request, request.param, tmp_path, "mig") as url:
        yield url


@pytest.fixture
async def store_of(empty_database_url: str) -> AsyncIterator[Store]:
    """A store on the (not yet migrated) database; closed at the end."""
    store = Store.from_url(empty_database_url)
    yield store
    await store.close()


async def migrate(url: str, revision: str = "head") -> None:
    # Alembic's env.py runs its own event loop: give it a thread.
    await asyncio.to_thread(upgrade, url, revision)


def _default_text(text: str | None) -> str | None:
    """A server default without its quotes and casts: `'[]'::json` -> `[]`."""
    if text is None:
        return None
    return text.split("::")[0].strip("()").strip("'")


def _compare_json_default(
    context: MigrationContext,
    inspected_column: Any,
    metadata_column: Any,
    inspected_default: str | None,
    metadata_default: Any,
    rendered_metadata_default: str | None,
) -> bool | None:
    """Alembic cannot compare JSON defaults on PostgreSQL (it runs `'[]'::json = '[]'`,
    which has no operator): compare their text. Other columns: Alembic's own comparison."""
    if not isinstance(metadata_column.type, JSON):
        return None
    return _default_text(inspected_default) != _default_text(rendered_metadata_default)


async def schema_differences(store: Store) -> list[Any]:
    """What autogenerate would write into a new migration; as env.py configures it,
    plus server defaults."""

    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "compare_server_default": _compare_json_default,
                "render_as_batch": connection.dialect.name == "sqlite",
            },
        )
        return list(compare_metadata(context, metadata))

    async with store.engine.connect() as connection:
        return await connection.run_sync(compare)


async def test_readiness_serves_the_newest_schema_and_newer_ones_but_not_older_ones(
    empty_database_url: str, store_of: Store
) -> None:
    """A replica not yet upgraded stays ready while a newer Keyturn migrates the database
    ahead of it (expand, then contract); one behind its database's schema does not."""
    await migrate(empty_database_url)
    assert await store_of.is_ready(5.0)
    for revision, ready in (("0099_from_a_newer_keyturn", True), ("0005", False)):
        async with store_of.engine.begin() as connection:
            await connection.execute(
                text("UPDATE alembic_version SET version_num = :revision"), {"revision": revision}
            )
        assert await store_of.is_ready(5.0) is ready, revision


async def test_migrated_schema_matches_the_declared_tables(
    empty_database_url: str, store_of: Store
) -> None:
    assert await current_revision(store_of.engine) is None
    assert not await store_of.is_ready(5.0)
    await migrate(empty_database_url)
    assert await current_revision(store_of.engine) == head_revision()
    assert await store_of.is_ready(5.0)
    differences = await schema_differences(store_of)
    assert differences == []
    # Migrating again is a no-op.
    await migrate(empty_database_url)
    assert await schema_differences(store_of) == []


def _entitlement_row(entitlement_id: str, end: datetime | None, grace: int) -> dict[str, Any]:
    """An entitlements row with only the columns revision 0001 has."""
    return {
        "entitlement_id": entitlement_id,
        "product_id": "acme-cad",
        "edition_id": "standard",
        "customer_id": "cust-1",
        "customer_name": "Initech",
        "customer_email": "it@initech.example",
        "ship_to_email": "ops@initech.example",
        "seats": 3,
        "features": [{"name": "export-pdf", "limit": None}],
        "start_time": CREATED,
        "end_time": end,
        "trial": False,
        "cancel_time": None,
        "grace_seconds": grace,
        "license_model": "floating",
        "lease_duration_seconds": 900,
        "dispatch": "license_key",
        "key_hash": f"hash-{entitlement_id}",
        "key_sealed": b"sealed",
        "order_source": "test",
        "order_id": "order-1",
        "create_time": CREATED,
        "update_time": CREATED,
    }


def _activation_row(activation_id: str, fingerprint: str, created: datetime) -> dict[str, Any]:
    return {
        "activation_id": activation_id,
        "entitlement_id": "ent_grace",
        "fingerprint": fingerprint,
        "label": "laptop",
        "lease_jti": f"jti-{activation_id}",
        "lease_expire_time": created + timedelta(minutes=15),
        "create_time": created,
        "update_time": created + timedelta(minutes=5),
        "released_time": None,
    }


def _event_row(sequence: int) -> dict[str, Any]:
    return {
        "sequence": sequence,
        "entitlement_id": "ent_grace" if sequence % 2 else "ent_plain",
        "type": "created" if sequence < 3 else "seat_activated",
        "create_time": CREATED + timedelta(seconds=sequence),
        "order_source": "test",
        "order_id": "order-1",
        "activation_id": "",
        "snapshot": {"seats": 3, "sequence": sequence},
    }


ENTITLEMENT_ROWS = [
    _entitlement_row("ent_grace", END, GRACE_SECONDS),
    _entitlement_row("ent_plain", OTHER_END, 0),
    _entitlement_row("ent_perpetual", None, 3600),
]
ACTIVATION_ROWS = [
    _activation_row("act_1", "device-0001", SEAT_1),
    _activation_row("act_2", "device-0002", SEAT_2),
]
EVENT_ROWS = [_event_row(sequence) for sequence in EVENT_SEQUENCES]


async def _fill_revision_0001(store: Store) -> None:
    """Data as a 0001 server wrote it: the tables of today, with 0001's columns only."""
    async with store.engine.begin() as connection:
        await connection.execute(
            insert(orders).values(
                source="test",
                order_id="order-1",
                fingerprint="f" * 64,
                request={"lines": []},
                results=[],
                create_time=CREATED,
            )
        )
        await connection.execute(insert(entitlements), ENTITLEMENT_ROWS)
        await connection.execute(
            insert(external_references).values(
                external_reference="stripe:sub_1", entitlement_id="ent_grace"
            )
        )
        await connection.execute(insert(activations), ACTIVATION_ROWS)
        await connection.execute(insert(events), EVENT_ROWS)


async def _rows(store: Store, table: Any, key: Any) -> list[dict[str, Any]]:
    async with store.read() as tx:
        result = await tx.connection.execute(select(table).order_by(key))
        return [dict(row) for row in result.mappings()]


async def test_upgrade_from_0001_keeps_data_and_fills_the_new_columns(
    empty_database_url: str, store_of: Store
) -> None:
    store = store_of
    await migrate(empty_database_url, FIRST_REVISION)
    assert await current_revision(store.engine) == FIRST_REVISION
    await _fill_revision_0001(store)

    await migrate(empty_database_url)
    assert await current_revision(store.engine) == head_revision()
    assert await schema_differences(store) == []

    # Every old column kept its value; the new ones are filled.
    stored = await _rows(store, entitlements, entitlements.c.entitlement_id)
    assert [row["entitlement_id"] for row in stored] == ["ent_grace", "ent_perpetual", "ent_plain"]
    by_id = {row["entitlement_id"]: row for row in stored}
    for old in ENTITLEMENT_ROWS:
        row = by_id[old["entitlement_id"]]
        assert {key: row[key] for key in old} == old
        assert row["addon_features"] == []
        assert row["removed_features"] == []
    assert by_id["ent_grace"]["usable_until"] == END + timedelta(seconds=GRACE_SECONDS)
    assert by_id["ent_plain"]["usable_until"] == OTHER_END
    assert by_id["ent_perpetual"]["usable_until"] is None

    stored_activations = await _rows(store, activations, activations.c.activation_id)
    assert [
        {k: row[k] for k in old}
        for row, old in zip(stored_activations, ACTIVATION_ROWS, strict=True)
    ] == (ACTIVATION_ROWS)
    assert [row["seat_time"] for row in stored_activations] == [SEAT_1, SEAT_2]
    stored_events = await _rows(store, events, events.c.sequence)
    assert [
        {k: row[k] for k in old} for row, old in zip(stored_events, EVENT_ROWS, strict=True)
    ] == (EVENT_ROWS)
    async with store.read() as tx:
        entitlement = await tx.entitlements.get("ent_grace")
        assert entitlement is not None
        assert entitlement.external_references == ("stripe:sub_1",)
        assert entitlement.usable_until() == by_id["ent_grace"]["usable_until"]
        order = await tx.connection.execute(select(orders.c.order_id))
        assert order.scalars().all() == ["order-1"]

    # The backfilled usable_until drives the status filter, to the microsecond.
    until = END + timedelta(seconds=GRACE_SECONDS)
    expired = EntitlementFilter(status=Status.EXPIRED)
    active = EntitlementFilter(status=Status.ACTIVE)
    async with store.read() as tx:
        before = until - timedelta(microseconds=1)
        assert [e.entitlement_id for e in await tx.entitlements.list(active, before, "", 10)] == [
            "ent_grace",
            "ent_perpetual",
        ]
        assert [e.entitlement_id for e in await tx.entitlements.list(expired, until, "", 10)] == [
            "ent_grace",
            "ent_plain",
        ]
        assert [
            e.entitlement_id
            for e in await tx.entitlements.list(
                expired, OTHER_END - timedelta(microseconds=1), "", 10
            )
        ] == []

    # New events continue the sequence after the highest one, without a gap.
    async with store.write() as tx:
        for kind in ("renewed", "seats_changed"):
            await tx.events.append(
                NewEvent(
                    entitlement_id="ent_grace",
                    type=kind,
                    create_time=CREATED + timedelta(days=1),
                    snapshot={"seats": 4},
                    order_source="test",
                    order_id="order-2",
                )
            )
    async with store.read() as tx:
        written = await tx.events.after(max(EVENT_SEQUENCES), 10)
        assert [(e.sequence, e.type) for e in written] == [(10, "renewed"), (11, "seats_changed")]
        assert await tx.events.last_sequence() == 11


async def test_upgrade_from_0001_without_events_starts_the_sequence_at_one(
    empty_database_url: str, store_of: Store
) -> None:
    store = store_of
    await migrate(empty_database_url, FIRST_REVISION)
    await migrate(empty_database_url)
    async with store.write() as tx:
        await tx.events.append(
            NewEvent(entitlement_id="ent_x", type="created", create_time=CREATED, snapshot={})
        )
    async with store.read() as tx:
        assert [e.sequence for e in await tx.events.after(0, 10)] == [1]


# --- forward from every earlier revision, with the data a server of that revision wrote ---

REVISIONS = [s.revision for s in reversed(list(ScriptDirectory(str(MIGRATIONS)).walk_revisions()))]
SKU_ID = "CAD-STD-3-1Y"
ORDER_REQUEST = {
    "source": "test",
    "order_id": "order-1",
    "customer": {"customer_id": "cust-1", "name": "Initech", "email": "it@initech.example"},
    "ship_to_email": "",
    "lines": [
        {
            "sku_id": SKU_ID,
            "quantity": 1,
            "entitlement_id": "",
            "external_reference": "stripe:sub_1",
        }
    ],
}


def at_least(revision: str, introduced: str) -> bool:
    return REVISIONS.index(revision) >= REVISIONS.index(introduced)


@dataclass(frozen=True)
class Written:
    """The rows a server of one revision wrote (full rows; each table keeps the columns it
    had then), and the secrets that use them."""

    rows: dict[str, list[dict[str, Any]]]
    license_key: str
    token: str
    kid: str
    entitlement_id: str
    live_activation_id: str


def written_by(revision: str, now: datetime) -> Written:
    """What a server of `revision` had stored after selling one 3-seat floating entitlement
    with an external reference, a device holding a seat and one that released it, in the
    JSON shapes of that revision."""
    sealer = Sealer(TEST_SECRET)
    key = generate_license_key()
    token = "kt_" + "t" * 43
    created = now - timedelta(days=10)
    end = created + timedelta(days=365)
    ent = new_id("ent", created)
    live, other, gone = (new_id("act", created + timedelta(seconds=n)) for n in range(3))
    features = [{"name": "export-pdf", "limit": None}, {"name": "projects", "limit": 10}]
    create: dict[str, Any] = {
        "edition_id": "standard",
        "seats_per_unit": 3,
        "term": "P1Y",
        "trial": False,
        "features": [],
        "license_model": "floating",
        "lease_duration_seconds": 900,
        "dispatch": "license_key",
    }
    if at_least(revision, "0002"):
        create["grace_seconds"] = 0
    if at_least(revision, "0004"):
        create["overage"] = "none"
    request: dict[str, Any] = json.loads(json.dumps(ORDER_REQUEST))
    fingerprint = hashlib.sha256(
        json.dumps(request, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    if at_least(revision, "0004"):
        request["lines"][0]["named_user_emails"] = []
    signing = new_signing_key(sealer, created)

    def snapshot(seats_in_use: int) -> dict[str, Any]:
        shown = {
            "edition_id": "standard",
            "seats": 3,
            "features": {f["name"]: f["limit"] for f in features},
            "start_time": created.isoformat(),
            "end_time": end.isoformat(),
            "trial": False,
            "status": "active",
        }
        if at_least(revision, "0002"):
            shown |= {
                "seats_in_use": seats_in_use,
                "cancel_time": None,
                "external_references": ["stripe:sub_1"],
                "update_time": created.isoformat(),
            }
        return shown

    def event(sequence: int, kind: str, activation: str, in_use: int) -> dict[str, Any]:
        return {
            "sequence": sequence,
            "entitlement_id": ent,
            "type": kind,
            "create_time": created + timedelta(minutes=sequence),
            "order_source": "test" if kind == "created" else "",
            "order_id": "order-1" if kind == "created" else "",
            "activation_id": activation,
            "snapshot": snapshot(in_use),
        }

    def activation(activation_id: str, device: str, released: datetime | None) -> dict[str, Any]:
        return {
            "activation_id": activation_id,
            "entitlement_id": ent,
            "fingerprint": device,
            "label": "laptop",
            "lease_jti": new_id("lease", now),
            "lease_expire_time": now + timedelta(minutes=10),
            "create_time": now - timedelta(hours=1),
            "update_time": now - timedelta(minutes=5),
            "released_time": released,
            "seat_time": now - timedelta(hours=1),
            "lapse_recorded_time": None,
            "user_id": None,
        }

    rows: dict[str, list[dict[str, Any]]] = {
        "products": [
            {
                "product_id": PRODUCT_ID,
                "display_name": "Acme CAD",
                "editions": [
                    {"edition_id": "standard", "display_name": "Standard", "features": features}
                ],
                "etag": "etag-product",
                "update_time": created,
            }
        ],
        "skus": [
            {
                "sku_id": SKU_ID,
                "product_id": PRODUCT_ID,
                "display_name": "Standard, 3 seats, 1 year",
                "operations": [{"create": create}],
                "etag": "etag-sku",
                "update_time": created,
            }
        ],
        "orders": [
            {
                "source": "test",
                "order_id": "order-1",
                "fingerprint": fingerprint,
                "request": request,
                "results": [
                    {
                        "line_index": 0,
                        "sku_id": SKU_ID,
                        "entitlement_id": ent,
                        "operations": ["create"],
                    }
                ],
                "create_time": created,
            }
        ],
        "entitlements": [
            {
                "entitlement_id": ent,
                "product_id": PRODUCT_ID,
                "edition_id": "standard",
                "customer_id": "cust-1",
                "customer_name": "Initech",
                "customer_email": "it@initech.example",
                "ship_to_email": "it@initech.example",
                "seats": 3,
                "seats_held": 2,  # 0006 on: the two live activations, as its server keeps it
                "features": features,
                "start_time": created,
                "end_time": end,
                "trial": False,
                "cancel_time": None,
                "grace_seconds": 0,
                "usable_until": end,
                "addon_features": [],
                "removed_features": [],
                "license_model": "floating",
                "overage": "none",
                "lease_duration_seconds": 900,
                "dispatch": "license_key",
                "key_hash": sealer.hash_secret(key),
                "key_sealed": sealer.seal(key.encode()),
                "order_source": "test",
                "order_id": "order-1",
                "create_time": created,
                "update_time": created,
            }
        ],
        "external_references": [{"external_reference": "stripe:sub_1", "entitlement_id": ent}],
        "activations": [
            activation(live, "device-live", None),
            activation(other, "device-other", None),
            activation(gone, "device-gone", now - timedelta(minutes=30)),
        ],
        "entitlement_events": [
            event(1, "created", "", 0),
            event(2, "seat_activated", live, 1),
            event(3, "seat_activated", other, 2),
            event(4, "seat_activated", gone, 3),
            event(5, "seat_released", gone, 2),
        ],
        "api_tokens": [
            {
                "token_id": new_id("tok", created),
                "token_hash": hash_token(token),
                "scopes": "catalog fulfill read",
                "description": f"made at {revision}",
                "create_time": created,
                "revoke_time": None,
            }
        ],
        "signing_keys": [
            {
                "kid": signing.kid,
                "private_key_sealed": signing.private_key_sealed,
                "public_key": signing.public_key,
                "create_time": signing.create_time,
                "retire_time": None,
            }
        ],
        "named_users": [
            {
                "user_id": new_id("usr", created),
                "entitlement_id": ent,
                "email": "ann@initech.example",
                "invitation_hash": sealer.hash_secret("invitation"),
                "invitation_sealed": sealer.seal(b"invitation"),
                "create_time": created,
                "redeem_time": None,
                "identity_jti": None,
                "order_source": "test",
                "order_id": "order-1",
            },
            {  # redeemed: 0008 counts its identity token as used at the upgrade
                "user_id": new_id("usr", created + timedelta(seconds=1)),
                "entitlement_id": ent,
                "email": "bob@initech.example",
                "invitation_hash": sealer.hash_secret("invitation-2"),
                "invitation_sealed": sealer.seal(b"invitation-2"),
                "create_time": created,
                "redeem_time": created + timedelta(days=1),
                "identity_jti": new_id("idt", created + timedelta(days=1)),
                "order_source": "test",
                "order_id": "order-1",
            },
        ],
        "outbox": [
            {
                "message_id": new_id("msg", created),
                "kind": "license_key",
                "entitlement_id": ent,
                "user_id": None,
                "to_email": "it@initech.example",
                "order_source": "test",
                "order_id": "order-1",
                "state": "sent",
                "attempts": 1,
                "next_attempt_time": None,
                "claimed_until": None,
                "last_error": "",
                "create_time": created,
                "sent_time": created + timedelta(seconds=2),
            }
        ],
    }
    return Written(rows, key, token, signing.kid, ent, live)


async def _columns_now(store: Store) -> dict[str, set[str]]:
    """Each table of the database, with its columns."""

    def read(connection: Connection) -> dict[str, set[str]]:
        inspector = inspect(connection)
        return {
            t: {c["name"] for c in inspector.get_columns(t)} for t in inspector.get_table_names()
        }

    async with store.engine.connect() as connection:
        return await connection.run_sync(read)


async def _write_as_of(store: Store, written: Written) -> dict[str, list[dict[str, Any]]]:
    """Insert the rows into the tables the database has, with the columns it has; what
    was inserted, by table."""
    columns = await _columns_now(store)
    inserted: dict[str, list[dict[str, Any]]] = {}
    async with store.engine.begin() as connection:
        for name, rows in written.rows.items():
            if name not in columns:
                continue
            kept = [{k: v for k, v in row.items() if k in columns[name]} for row in rows]
            await connection.execute(insert(metadata.tables[name]), kept)
            inserted[name] = kept
        if "event_sequence" in columns:  # 0002..0005: the last sequence number handed out
            last = max(row["sequence"] for row in written.rows["entitlement_events"])
            await connection.execute(
                text("UPDATE event_sequence SET last_sequence = :last WHERE id = 1"),
                {"last": last},
            )
    return inserted


async def _stored(store: Store, name: str, row: dict[str, Any]) -> dict[str, Any]:
    """The stored row with the same primary key, as the code of today reads it."""
    table = metadata.tables[name]
    # Events are told apart by their sequence (their event_id came with 0006).
    key_names = ["sequence"] if name == "entitlement_events" else table.primary_key.columns.keys()
    keys = [table.c[key] for key in key_names]
    async with store.read() as tx:
        result = await tx.connection.execute(
            select(table).where(*(column == row[column.name] for column in keys))
        )
        return dict(result.mappings().one())


@pytest.mark.parametrize("revision", REVISIONS[:-1])
async def test_upgrade_from_every_revision_keeps_the_data_and_serves_it(
    empty_database_url: str, store_of: Store, revision: str
) -> None:
    store = store_of
    await migrate(empty_database_url, revision)
    assert await current_revision(store.engine) == revision
    written = written_by(revision, datetime.now(UTC))
    inserted = await _write_as_of(store, written)
    assert "entitlements" in inserted

    migrated = datetime.now(UTC).replace(microsecond=0)
    await migrate(empty_database_url)
    assert await current_revision(store.engine) == head_revision()
    assert await schema_differences(store) == []
    for name, rows in inserted.items():
        for row in rows:
            stored = await _stored(store, name, row)
            assert {k: stored[k] for k in row} == row, name
    [entitlement] = await _rows(store, entitlements, entitlements.c.entitlement_id)
    full = written.rows["entitlements"][0]
    assert (entitlement["usable_until"], entitlement["addon_features"]) == (
        full["usable_until"],
        [],
    )
    assert entitlement["seats_held"] == 2, "the live activations hold their seats"
    for activation in await _rows(store, activations, activations.c.activation_id):
        assert activation["seat_time"] == activation["create_time"]  # filled by 0002 if need be
    [token] = await _rows(store, api_tokens, api_tokens.c.token_id)
    assert token["last_used_time"] is None, "never used, as far as 0007 knows"
    assert token["expire_time"] is None, "a token made before 0008 never expires"
    if "named_users" in inserted:
        unredeemed, redeemed = await _rows(store, named_users, named_users.c.email)
        assert unredeemed["identity_used_time"] is None, "no token, nothing used"
        if not at_least(revision, "0008"):  # 0008 itself fills it in
            assert redeemed["identity_used_time"] is not None
            assert redeemed["identity_used_time"] >= migrated, "its idle period starts at 0008"
    await _serve_migrated(empty_database_url, written)
    [token] = await _rows(store, api_tokens, api_tokens.c.token_id)
    assert token["last_used_time"] is not None, "its calls of today were recorded"


async def _serve_migrated(database_url: str, written: Written) -> None:
    """A server of today on the migrated database: the old token, license key, signing key,
    order and events work."""
    ctx = await build_context(settings_for(database_url))
    server = KeyturnServer(ctx, "127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            licensing = licensing_pb2_grpc.LicensingServiceStub(channel)
            fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub(channel)
            auth = (("authorization", f"Bearer {written.token}"),)
            check = await licensing.CheckLicense(
                lic.CheckLicenseRequest(license_key=written.license_key, product_id=PRODUCT_ID)
            )
            assert (check.entitlement.seats, check.entitlement.seats_in_use) == (3, 2)
            assert [f.name for f in check.entitlement.features] == ["export-pdf", "projects"]
            again = await licensing.ActivateSeat(_activation(written.license_key, "device-live"))
            assert again.activation_id == written.live_activation_id
            assert again.entitlement.seats_in_use == 2
            new = await licensing.ActivateSeat(_activation(written.license_key, "device-new"))
            assert new.entitlement.seats_in_use == 3
            assert jwt.get_unverified_header(new.lease.token)["kid"] == written.kid
            renewed = await licensing.RenewLease(lic.RenewLeaseRequest(lease_token=new.lease.token))
            assert renewed.entitlement.seats_in_use == 3
            with pytest.raises(grpc.aio.AioRpcError) as full:
                await licensing.ActivateSeat(_activation(written.license_key, "device-extra"))
            assert failure_of(full.value).reason == "SEATS_EXHAUSTED", "no seat oversold"

            replay = await fulfillment.FulfillOrder(
                json_format.ParseDict(ORDER_REQUEST, ful.FulfillOrderRequest()), metadata=auth
            )
            assert [e.entitlement_id for e in replay.entitlements] == [written.entitlement_id]
            got = await fulfillment.GetEntitlement(
                ful.GetEntitlementRequest(entitlement_id=written.entitlement_id), metadata=auth
            )
            assert list(got.entitlement.external_references) == ["stripe:sub_1"]
            listed = await fulfillment.ListEntitlementEvents(
                ful.ListEntitlementEventsRequest(entitlement_id=written.entitlement_id),
                metadata=auth,
            )
            sequences = [e.sequence for e in listed.events]
            assert sequences == list(range(1, len(sequences) + 1))
            assert len(sequences) > len(written.rows["entitlement_events"]), "new events follow"
            old = [(e.sequence, e.activation_id) for e in listed.events[:5]]
            assert old == [
                (r["sequence"], r["activation_id"]) for r in written.rows["entitlement_events"]
            ]
            assert listed.events[1].entitlement.seats == 3
        await server.authenticator.uses.settle()
    finally:
        await server.stop(grace=1.0)
        await ctx.close()


def _activation(key: str, fingerprint: str) -> lic.ActivateSeatRequest:
    return lic.ActivateSeatRequest(
        license_key=key, product_id=PRODUCT_ID, fingerprint=fingerprint, label="laptop"
    )
