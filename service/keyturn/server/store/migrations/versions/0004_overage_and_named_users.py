"""overage policy per entitlement, named users with invitations, activations by user

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("entitlements", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("overage", sa.String(length=24), server_default="none", nullable=False)
        )
    with op.batch_alter_table("activations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("user_id", sa.String(length=64), nullable=True))
    op.create_table(
        "named_users",
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("entitlement_id", sa.String(length=64), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("invitation_hash", sa.String(length=64), nullable=False),
        sa.Column("invitation_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("redeem_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("identity_jti", sa.String(length=64), nullable=True),
        sa.Column("order_source", sa.String(length=64), nullable=False),
        sa.Column("order_id", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(["entitlement_id"], ["entitlements.entitlement_id"]),
        sa.PrimaryKeyConstraint("user_id"),
        sa.UniqueConstraint("entitlement_id", "email"),
        sa.UniqueConstraint("invitation_hash"),
    )


def downgrade() -> None:
    op.drop_table("named_users")
    with op.batch_alter_table("activations", schema=None) as batch_op:
        batch_op.drop_column("user_id")
    with op.batch_alter_table("entitlements", schema=None) as batch_op:
        batch_op.drop_column("overage")
