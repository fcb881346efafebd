"""operations on entitlements and a commit-ordered event sequence

Entitlements keep their add-ons and removed features (so that an edition
change keeps them) and `usable_until` (end date plus grace) so that status
filters run in SQL. Activations keep `seat_time`, when they last took their
seat, which ranks them when seats are removed below the number in use. `event_sequence` holds the last event sequence number:
writers take it under a row lock at the end of their transaction, which makes
the sequence gap-free and ordered by commit.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def upgrade() -> None:
    with op.batch_alter_table("entitlements", schema=None) as batch_op:
        batch_op.add_column(sa.Column("usable_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("addon_features", sa.JSON(), nullable=False, server_default="[]")
        )
        batch_op.add_column(
            sa.Column("removed_features", sa.JSON(), nullable=False, server_default="[]")
        )
        batch_op.create_index("ix_entitlements_usable_until", ["usable_until"], unique=False)
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT entitlement_id, end_time, grace_seconds FROM entitlements"
            " WHERE end_time IS NOT NULL"
        )
    ).all()
    for entitlement_id, end_time, grace_seconds in rows:
        end = end_time if isinstance(end_time, datetime) else datetime.fromisoformat(end_time)
        until = _aware(end) + timedelta(seconds=grace_seconds)
        if bind.dialect.name == "sqlite":
            until = until.astimezone(UTC).replace(tzinfo=None)
        bind.execute(
            sa.text("UPDATE entitlements SET usable_until = :until WHERE entitlement_id = :id"),
            {"until": until, "id": entitlement_id},
        )
    with op.batch_alter_table("activations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seat_time", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE activations SET seat_time = create_time")
    event_sequence = op.create_table(
        "event_sequence",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_sequence")),
    )
    last = bind.execute(sa.text("SELECT COALESCE(MAX(sequence), 0) FROM entitlement_events"))
    op.bulk_insert(event_sequence, [{"id": 1, "last_sequence": int(last.scalar_one())}])


def downgrade() -> None:
    op.drop_table("event_sequence")
    with op.batch_alter_table("activations", schema=None) as batch_op:
        batch_op.drop_column("seat_time")
    with op.batch_alter_table("entitlements", schema=None) as batch_op:
        batch_op.drop_index("ix_entitlements_usable_until")
        batch_op.drop_column("removed_features")
        batch_op.drop_column("addon_features")
        batch_op.drop_column("usable_until")
