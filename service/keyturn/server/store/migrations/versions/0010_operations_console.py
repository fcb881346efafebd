"""Running Keyturn day to day: suspensions, deactivations and their limits, actors, audit

- `entitlements.suspend_time`: set while an entitlement is suspended (no seat taken or
  renewed), cleared on reinstate. `deactivation_limit`, `deactivation_period_seconds`
  and `deactivation_counts_releases`: the SKU's limit on deactivations per period,
  copied from its `create` operation like the lease duration (None: no limit).
- `activations.released_by` (the actor that released the seat: the device, an API
  token, the system), `release_reason` (an administrator's reason) and `deactivated`
  (an administrator took the seat back: the device's next renewal is refused with
  SEAT_DEACTIVATED rather than LEASE_SUPERSEDED).
- `entitlement_events.actor` (who made the change) and `effective_time` (when it took
  effect, where that is before the event was written: a lapse is recorded after the
  lease ran out), with an index by entitlement, type and time for counting
  deactivations in a period and for usage reports.
- `audit_events`: every change of every kind (orders, catalog, tokens, signing keys,
  seats taken back, suspensions) with its actor.

Expand only: nullable columns or columns with a server default, a new table and index;
the server of the revision before neither reads nor writes any of them.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("entitlements") as table:
        table.add_column(sa.Column("suspend_time", sa.DateTime(timezone=True), nullable=True))
        table.add_column(sa.Column("deactivation_limit", sa.Integer(), nullable=True))
        table.add_column(sa.Column("deactivation_period_seconds", sa.Integer(), nullable=True))
        table.add_column(
            sa.Column(
                "deactivation_counts_releases",
                sa.Boolean(),
                nullable=False,
                server_default=sa.false(),
            )
        )
    with op.batch_alter_table("activations") as table:
        table.add_column(sa.Column("released_by", sa.String(128), nullable=True))
        table.add_column(sa.Column("release_reason", sa.String(500), nullable=True))
        table.add_column(
            sa.Column("deactivated", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("entitlement_events") as table:
        table.add_column(sa.Column("actor", sa.String(128), nullable=True))
        table.add_column(sa.Column("effective_time", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_entitlement_events_entitlement_id_type_create_time",
        "entitlement_events",
        ["entitlement_id", "type", "create_time"],
    )
    op.create_table(
        "audit_events",
        sa.Column(
            "audit_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("resource", sa.String(300), nullable=False),
        sa.Column("entitlement_id", sa.String(64), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("audit_id", name="pk_audit_events"),
    )
    op.create_index("ix_audit_events_create_time", "audit_events", ["create_time"])
    op.create_index(
        "ix_audit_events_entitlement_id_audit_id", "audit_events", ["entitlement_id", "audit_id"]
    )
    op.create_index("ix_audit_events_actor_audit_id", "audit_events", ["actor", "audit_id"])


def downgrade() -> None:
    op.drop_index("ix_audit_events_actor_audit_id", table_name="audit_events")
    op.drop_index("ix_audit_events_entitlement_id_audit_id", table_name="audit_events")
    op.drop_index("ix_audit_events_create_time", table_name="audit_events")
    op.drop_table("audit_events")
    op.drop_index(
        "ix_entitlement_events_entitlement_id_type_create_time", table_name="entitlement_events"
    )
    with op.batch_alter_table("entitlement_events") as table:
        table.drop_column("effective_time")
        table.drop_column("actor")
    with op.batch_alter_table("activations") as table:
        table.drop_column("deactivated")
        table.drop_column("release_reason")
        table.drop_column("released_by")
    with op.batch_alter_table("entitlements") as table:
        table.drop_column("deactivation_counts_releases")
        table.drop_column("deactivation_period_seconds")
        table.drop_column("deactivation_limit")
        table.drop_column("suspend_time")
