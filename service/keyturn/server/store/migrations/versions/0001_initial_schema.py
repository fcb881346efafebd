"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23 12:52:44.357881
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "api_tokens",
        sa.Column("token_id", sa.String(length=64), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoke_time", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("token_id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_table(
        "entitlement_events",
        sa.Column(
            "sequence",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("entitlement_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("order_source", sa.String(length=64), nullable=False),
        sa.Column("order_id", sa.String(length=128), nullable=False),
        sa.Column("activation_id", sa.String(length=64), nullable=False),
        sa.Column("snapshot", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("sequence", name=op.f("pk_entitlement_events")),
    )
    with op.batch_alter_table("entitlement_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_entitlement_events_entitlement_id_sequence",
            ["entitlement_id", "sequence"],
            unique=False,
        )

    op.create_table(
        "entitlements",
        sa.Column("entitlement_id", sa.String(length=64), nullable=False),
        sa.Column("product_id", sa.String(length=64), nullable=False),
        sa.Column("edition_id", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("customer_name", sa.String(length=200), nullable=False),
        sa.Column("customer_email", sa.String(length=254), nullable=False),
        sa.Column("ship_to_email", sa.String(length=254), nullable=False),
        sa.Column("seats", sa.Integer(), nullable=False),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("trial", sa.Boolean(), nullable=False),
        sa.Column("cancel_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("grace_seconds", sa.Integer(), nullable=False),
        sa.Column("license_model", sa.String(length=16), nullable=False),
        sa.Column("lease_duration_seconds", sa.Integer(), nullable=False),
        sa.Column("dispatch", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=True),
        sa.Column("key_sealed", sa.LargeBinary(), nullable=True),
        sa.Column("order_source", sa.String(length=64), nullable=False),
        sa.Column("order_id", sa.String(length=128), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("entitlement_id", name=op.f("pk_entitlements")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_entitlements_key_hash")),
    )
    with op.batch_alter_table("entitlements", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_entitlements_customer_email"), ["customer_email"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_entitlements_customer_id"), ["customer_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_entitlements_product_id"), ["product_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_entitlements_ship_to_email"), ["ship_to_email"], unique=False
        )

    op.create_table(
        "orders",
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("order_id", sa.String(length=128), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("results", sa.JSON(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source", "order_id", name=op.f("pk_orders")),
    )
    op.create_table(
        "products",
        sa.Column("product_id", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("editions", sa.JSON(), nullable=False),
        sa.Column("etag", sa.String(length=64), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("product_id", name=op.f("pk_products")),
    )
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("private_key_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retire_time", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_signing_keys")),
    )
    op.create_table(
        "activations",
        sa.Column("activation_id", sa.String(length=64), nullable=False),
        sa.Column("entitlement_id", sa.String(length=64), nullable=False),
        sa.Column("fingerprint", sa.String(length=256), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("lease_jti", sa.String(length=64), nullable=False),
        sa.Column("lease_expire_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_time", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["entitlement_id"],
            ["entitlements.entitlement_id"],
            name=op.f("fk_activations_entitlement_id"),
        ),
        sa.PrimaryKeyConstraint("activation_id", name=op.f("pk_activations")),
        sa.UniqueConstraint(
            "entitlement_id", "fingerprint", name=op.f("uq_activations_entitlement_id_fingerprint")
        ),
    )
    op.create_table(
        "external_references",
        sa.Column("external_reference", sa.String(length=200), nullable=False),
        sa.Column("entitlement_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["entitlement_id"],
            ["entitlements.entitlement_id"],
            name=op.f("fk_external_references_entitlement_id"),
        ),
        sa.PrimaryKeyConstraint("external_reference", name=op.f("pk_external_references")),
    )
    with op.batch_alter_table("external_references", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_external_references_entitlement_id"), ["entitlement_id"], unique=False
        )

    op.create_table(
        "skus",
        sa.Column("sku_id", sa.String(length=128), nullable=False),
        sa.Column("product_id", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("operations", sa.JSON(), nullable=False),
        sa.Column("etag", sa.String(length=64), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["product_id"], ["products.product_id"], name=op.f("fk_skus_product_id")
        ),
        sa.PrimaryKeyConstraint("sku_id", name=op.f("pk_skus")),
    )


def downgrade() -> None:

    op.drop_table("skus")
    with op.batch_alter_table("external_references", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_external_references_entitlement_id"))

    op.drop_table("external_references")
    op.drop_table("activations")
    op.drop_table("signing_keys")
    op.drop_table("products")
    op.drop_table("orders")
    with op.batch_alter_table("entitlements", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_entitlements_ship_to_email"))
        batch_op.drop_index(batch_op.f("ix_entitlements_product_id"))
        batch_op.drop_index(batch_op.f("ix_entitlements_customer_id"))
        batch_op.drop_index(batch_op.f("ix_entitlements_customer_email"))

    op.drop_table("entitlements")
    with op.batch_alter_table("entitlement_events", schema=None) as batch_op:
        batch_op.drop_index("ix_entitlement_events_entitlement_id_sequence")

    op.drop_table("entitlement_events")
    op.drop_table("api_tokens")
