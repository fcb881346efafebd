"""API tokens and identity tokens end

`api_tokens.expire_time` is nullable: NULL means the token never expires, which every
token that exists when this runs keeps (an upgrade must not stop a running connector;
an operator replaces old tokens on their own schedule, `keyturn tokens list` shows
which). `named_users.identity_used_time` is when the user's identity token was last
used; an identity token expires after KEYTURN_IDENTITY_TOKEN_IDLE_DAYS without a use.
Users who redeemed their invitation before this runs are counted as using it now, so
that each gets the whole idle period from the upgrade instead of expiring at once.

Expand only: the server of the revision before reads neither column and writes tokens
and redemptions without them (NULL: a token that never expires, an identity whose idle
period starts at its next use), so it keeps working beside today's.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-15 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expire_time", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("named_users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("identity_used_time", sa.DateTime(timezone=True), nullable=True)
        )
    now = datetime.now(UTC)
    if op.get_bind().dialect.name == "sqlite":
        now = now.replace(tzinfo=None)  # SQLite keeps UTC without a zone (tables.UtcDateTime)
    users = sa.table(
        "named_users",
        sa.column("redeem_time", sa.DateTime(timezone=True)),
        sa.column("identity_used_time", sa.DateTime(timezone=True)),
    )
    op.execute(
        users.update().where(users.c.redeem_time.is_not(None)).values(identity_used_time=now)
    )


def downgrade() -> None:
    with op.batch_alter_table("named_users", schema=None) as batch_op:
        batch_op.drop_column("identity_used_time")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("expire_time")
