"""Failed credentials are counted per peer and window

`credential_failures` holds, for each peer (an address) and fixed window, how many
calls from it presented a wrong license key, identity token, invitation code, lease
or API token (domain.abuse_limits). Every replica counts into the same rows, so the
budget of failures holds across workers and replicas. Rows of past windows are
deleted as new failures are counted.

Expand only: the server of the revision before never touches the table.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-22 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "credential_failures",
        sa.Column("peer", sa.String(64), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("peer", "window_start", name="pk_credential_failures"),
    )
    op.create_index("ix_credential_failures_window_start", "credential_failures", ["window_start"])


def downgrade() -> None:
    op.drop_index("ix_credential_failures_window_start", table_name="credential_failures")
    op.drop_table("credential_failures")
