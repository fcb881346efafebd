"""seat counts kept on the entitlement, and events numbered after commit

`entitlements.seats_held` counts the activations that hold a seat unless their
lapse is pending: unreleased and with no lapse recorded. A floating
entitlement's seats in use are that count minus its lapses not yet recorded,
which a partial index on activations finds without reading released or
recorded history.

Events no longer take their sequence from the single `event_sequence` row in
the writing transaction. They get an `event_id` in insertion order and, on
PostgreSQL, their `sequence` after commit from `keyturn_number_events()`,
which numbers every committed, unnumbered event under one advisory lock, in
event_id order. SQLite, which has one writer at a time, numbers at insert.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NUMBERING_LOCK = 7_461_227_302  # any fixed number: numberers of all replicas take turns

NUMBER_EVENTS = f"""
CREATE FUNCTION keyturn_number_events(max_rows integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    base bigint;
    numbered integer;
BEGIN
    -- Each statement below takes a new snapshot (READ COMMITTED), so once the
    -- lock is held the numbers of the previous holder are visible.
    PERFORM pg_advisory_xact_lock({NUMBERING_LOCK});
    SELECT coalesce(max(sequence), 0) INTO base FROM entitlement_events;
    WITH pending AS (
        SELECT event_id, row_number() OVER (ORDER BY event_id) AS position
        FROM entitlement_events
        WHERE sequence IS NULL
        ORDER BY event_id
        LIMIT max_rows
    )
    UPDATE entitlement_events AS e
    SET sequence = base + pending.position
    FROM pending
    WHERE e.event_id = pending.event_id;
    GET DIAGNOSTICS numbered = ROW_COUNT;
    RETURN numbered;
END
$$
"""

EVENT_COLUMNS = (
    "entitlement_id",
    "type",
    "create_time",
    "order_source",
    "order_id",
    "activation_id",
    "snapshot",
)


def _event_table(name: str, sequence_nullable: bool) -> None:
    op.create_table(
        name,
        sa.Column(
            "event_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("sequence", sa.BigInteger(), nullable=sequence_nullable),
        sa.Column("entitlement_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("order_source", sa.String(length=64), nullable=False),
        sa.Column("order_id", sa.String(length=128), nullable=False),
        sa.Column("activation_id", sa.String(length=64), nullable=False),
        sa.Column("snapshot", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_entitlement_events"),
        sa.UniqueConstraint("sequence", name="uq_entitlement_events_sequence"),
    )


def _upgrade_events_sqlite() -> None:
    op.execute("ALTER TABLE entitlement_events RENAME TO entitlement_events_0005")
    op.execute("DROP INDEX ix_entitlement_events_entitlement_id_sequence")
    _event_table("entitlement_events", sequence_nullable=True)
    columns = ", ".join(EVENT_COLUMNS)
    op.execute(
        f"INSERT INTO entitlement_events (event_id, sequence, {columns}) "
        f"SELECT sequence, sequence, {columns} FROM entitlement_events_0005"
    )
    op.drop_table("entitlement_events_0005")
    op.create_index(
        "ix_entitlement_events_entitlement_id_sequence",
        "entitlement_events",
        ["entitlement_id", "sequence"],
        unique=False,
    )


def _upgrade_events_postgresql() -> None:
    op.execute("ALTER TABLE entitlement_events DROP CONSTRAINT pk_entitlement_events")
    op.execute("ALTER TABLE entitlement_events ALTER COLUMN sequence DROP DEFAULT")
    op.execute("DROP SEQUENCE IF EXISTS entitlement_events_sequence_seq")
    op.execute("ALTER TABLE entitlement_events ALTER COLUMN sequence DROP NOT NULL")
    op.execute("ALTER TABLE entitlement_events ADD COLUMN event_id BIGSERIAL NOT NULL")
    op.execute(
        "ALTER TABLE entitlement_events ADD CONSTRAINT pk_entitlement_events PRIMARY KEY (event_id)"
    )
    op.execute(
        "ALTER TABLE entitlement_events ADD CONSTRAINT uq_entitlement_events_sequence "
        "UNIQUE (sequence)"
    )
    op.execute(NUMBER_EVENTS)


def upgrade() -> None:
    bind = op.get_bind()
    with op.batch_alter_table("entitlements", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("seats_held", sa.Integer(), nullable=False, server_default="0")
        )
    op.execute(
        "UPDATE entitlements SET seats_held = (SELECT count(*) FROM activations AS a "
        "WHERE a.entitlement_id = entitlements.entitlement_id "
        "AND a.released_time IS NULL AND a.lapse_recorded_time IS NULL)"
    )
    op.create_index(
        "ix_activations_unlapsed",
        "activations",
        ["entitlement_id", "lease_expire_time"],
        unique=False,
        postgresql_where=sa.text("released_time IS NULL AND lapse_recorded_time IS NULL"),
        sqlite_where=sa.text("released_time IS NULL AND lapse_recorded_time IS NULL"),
    )
    if bind.dialect.name == "postgresql":
        _upgrade_events_postgresql()
    else:
        _upgrade_events_sqlite()
    op.create_index(
        "ix_entitlement_events_pending",
        "entitlement_events",
        ["event_id"],
        unique=False,
        postgresql_where=sa.text("sequence IS NULL"),
        sqlite_where=sa.text("sequence IS NULL"),
    )
    op.drop_table("event_sequence")


def downgrade() -> None:
    bind = op.get_bind()
    event_sequence = op.create_table(
        "event_sequence",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_sequence")),
    )
    op.drop_index("ix_entitlement_events_pending", table_name="entitlement_events")
    op.drop_index("ix_entitlement_events_entitlement_id_sequence", table_name="entitlement_events")
    if bind.dialect.name == "postgresql":
        op.execute("SELECT keyturn_number_events(2147483647)")
        op.execute("DROP FUNCTION keyturn_number_events(integer)")
    op.execute("DELETE FROM entitlement_events WHERE sequence IS NULL")
    columns = ", ".join(EVENT_COLUMNS)
    op.execute("ALTER TABLE entitlement_events RENAME TO entitlement_events_0006")
    if bind.dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE entitlement_events_0006 RENAME CONSTRAINT pk_entitlement_events "
            "TO pk_entitlement_events_0006"
        )
        op.execute(
            "ALTER TABLE entitlement_events_0006 RENAME CONSTRAINT "
            "uq_entitlement_events_sequence TO uq_entitlement_events_0006_sequence"
        )
    op.create_table(
        "entitlement_events",
        sa.Column(
            "sequence",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        *(
            sa.Column(name, type_, nullable=False)
            for name, type_ in (
                ("entitlement_id", sa.String(length=64)),
                ("type", sa.String(length=32)),
                ("create_time", sa.DateTime(timezone=True)),
                ("order_source", sa.String(length=64)),
                ("order_id", sa.String(length=128)),
                ("activation_id", sa.String(length=64)),
                ("snapshot", sa.JSON()),
            )
        ),
        sa.PrimaryKeyConstraint("sequence", name="pk_entitlement_events"),
    )
    op.execute(
        f"INSERT INTO entitlement_events (sequence, {columns}) "
        f"SELECT sequence, {columns} FROM entitlement_events_0006"
    )
    op.drop_table("entitlement_events_0006")
    if bind.dialect.name == "postgresql":
        op.execute(
            "SELECT setval(pg_get_serial_sequence('entitlement_events', 'sequence'), "
            "coalesce(max(sequence), 0) + 1, false) FROM entitlement_events"
        )
    op.create_index(
        "ix_entitlement_events_entitlement_id_sequence",
        "entitlement_events",
        ["entitlement_id", "sequence"],
        unique=False,
    )
    last = bind.execute(sa.text("SELECT COALESCE(MAX(sequence), 0) FROM entitlement_events"))
    op.bulk_insert(event_sequence, [{"id": 1, "last_sequence": int(last.scalar_one())}])
    op.drop_index("ix_activations_unlapsed", table_name="activations")
    with op.batch_alter_table("entitlements", schema=None) as batch_op:
        batch_op.drop_column("seats_held")
