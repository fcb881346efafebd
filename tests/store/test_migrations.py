"""The Alembic migrations, on both backends: the schema they build is the one the code
declares, and upgrading a database that holds data keeps it and fills the new columns.

Each test starts from an empty database of its own (not the migrated template), and
runs the migrations the way the server does (`keyturn.server.store.migrate.upgrade`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import JSON, insert, select
from sqlalchemy.engine import Connection

from keyturn.server.domain.entitlement import Status
from keyturn.server.store.entitlement_repository import EntitlementFilter
from keyturn.server.store.event_repository import NewEvent
from keyturn.server.store.migrate import current_revision, head_revision, upgrade
from keyturn.server.store.tables import (
    activations,
    entitlements,
    events,
    external_references,
    metadata,
    orders,
)
from keyturn.server.store.unit_of_work import Store

from conftest import BACKENDS
from support.empty_database import empty_database

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


async def test_migrated_schema_matches_the_declared_tables(
    empty_database_url: str, store_of: Store
) -> None:
    assert await current_revision(store_of.engine) is None
    assert not await store_of.is_ready()
    await migrate(empty_database_url)
    assert await current_revision(store_of.engine) == head_revision()
    assert await store_of.is_ready()
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
