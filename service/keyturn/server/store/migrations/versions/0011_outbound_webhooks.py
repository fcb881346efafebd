"""Outbound webhooks: subscriptions with their own cursor into the event log, and a log
of delivery attempts

- `webhook_subscriptions`: the URL, the Standard Webhooks secret (sealed), the event
  type and product filters, active or paused, and the delivery state: `cursor` (the
  last sequence delivered or skipped by the filters; the events themselves stay in
  `entitlement_events`, read from there), failed attempts in a row, the next attempt,
  since when it is failing, and the claim of the one sender working on it.
- `webhook_deliveries`: one row per attempt (sequence, HTTP status, an excerpt of the
  answer), for ListWebhookDeliveries and redelivery by webhook id.

Expand only: two new tables; the server of the revision before neither reads nor writes
them, and no table it uses changes.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 07:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "webhook_subscriptions",
        sa.Column("subscription_id", sa.String(64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("event_types", sa.JSON(), nullable=False),
        sa.Column("product_ids", sa.JSON(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("pause_reason", sa.Text(), nullable=False),
        sa.Column("cursor", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claim_id", sa.String(64), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("subscription_id", name="pk_webhook_subscriptions"),
    )
    op.create_index(
        "ix_webhook_subscriptions_state_next_attempt_time",
        "webhook_subscriptions",
        ["state", "next_attempt_time"],
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column(
            "delivery_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("subscription_id", sa.String(64), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("attempt_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=False),
        sa.Column("delivered", sa.Boolean(), nullable=False),
        sa.Column("response_excerpt", sa.Text(), nullable=False),
        sa.Column("redelivery", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("delivery_id", name="pk_webhook_deliveries"),
    )
    op.create_index(
        "ix_webhook_deliveries_subscription_id_delivery_id",
        "webhook_deliveries",
        ["subscription_id", "delivery_id"],
    )


def downgrade() -> None:
    op.drop_index(
        "ix_webhook_deliveries_subscription_id_delivery_id", table_name="webhook_deliveries"
    )
    op.drop_table("webhook_deliveries")
    op.drop_index(
        "ix_webhook_subscriptions_state_next_attempt_time", table_name="webhook_subscriptions"
    )
    op.drop_table("webhook_subscriptions")
