"""the transactional outbox of credential emails

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 16:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("entitlement_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=True),
        sa.Column("to_email", sa.String(length=254), nullable=False),
        sa.Column("order_source", sa.String(length=64), nullable=False),
        sa.Column("order_id", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=8), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_time", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["entitlement_id"], ["entitlements.entitlement_id"]),
        sa.PrimaryKeyConstraint("message_id"),
    )
    op.create_index("ix_outbox_state_next_attempt_time", "outbox", ["state", "next_attempt_time"])
    op.create_index("ix_outbox_order", "outbox", ["order_source", "order_id"])


def downgrade() -> None:
    op.drop_index("ix_outbox_order", table_name="outbox")
    op.drop_index("ix_outbox_state_next_attempt_time", table_name="outbox")
    op.drop_table("outbox")
