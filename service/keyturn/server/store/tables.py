"""The schema, as SQLAlchemy Core tables (Alembic migrations create it)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
    }
)

products = Table(
    "products",
    metadata,
    Column("product_id", String(64), primary_key=True),
    Column("display_name", String(200), nullable=False),
    Column("editions", JSON, nullable=False),
    Column("etag", String(64), nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
)

skus = Table(
    "skus",
    metadata,
    Column("sku_id", String(128), primary_key=True),
    Column("product_id", String(64), ForeignKey("products.product_id"), nullable=False),
    Column("display_name", String(200), nullable=False),
    Column("operations", JSON, nullable=False),
    Column("etag", String(64), nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
)

orders = Table(
    "orders",
    metadata,
    Column("source", String(64), primary_key=True),
    Column("order_id", String(128), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("request", JSON, nullable=False),
    Column("results", JSON, nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
)

entitlements = Table(
    "entitlements",
    metadata,
    Column("entitlement_id", String(64), primary_key=True),
    Column("product_id", String(64), nullable=False, index=True),
    Column("edition_id", String(64), nullable=False),
    Column("customer_id", String(128), nullable=False, index=True),
    Column("customer_name", String(200), nullable=False),
    Column("customer_email", String(254), nullable=False, index=True),
    Column("ship_to_email", String(254), nullable=False, index=True),
    Column("seats", Integer, nullable=False),
    Column("features", JSON, nullable=False),
    Column("start_time", UtcDateTime, nullable=False),
    Column("end_time", UtcDateTime, nullable=True),
    Column("trial", Boolean, nullable=False),
    Column("cancel_time", UtcDateTime, nullable=True),
    Column("grace_seconds", Integer, nullable=False),
    Column("usable_until", UtcDateTime, nullable=True, index=True),
    Column("addon_features", JSON, nullable=False, server_default="[]"),
    Column("removed_features", JSON, nullable=False, server_default="[]"),
    Column("license_model", String(16), nullable=False),
    Column("overage", String(24), nullable=False, server_default="none"),
    Column("lease_duration_seconds", Integer, nullable=False),
    Column("dispatch", String(16), nullable=False),
    Column("key_hash", String(64), nullable=True, unique=True),
    # Activations that hold a seat unless their lapse is pending: unreleased, no lapse
    # recorded. Kept under the entitlement's row lock by every seat write.
    Column("seats_held", Integer, nullable=False, server_default="0"),
    Column("key_sealed", LargeBinary, nullable=True),
    Column("order_source", String(64), nullable=False),
    Column("order_id", String(128), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    Column("suspend_time", UtcDateTime, nullable=True),  # None: not suspended
    # The SKU's limit on deactivations per period (None: none), from its create operation.
    Column("deactivation_limit", Integer, nullable=True),
    Column("deactivation_period_seconds", Integer, nullable=True),
    # Devices' own releases count against that limit too.
    Column("deactivation_counts_releases", Boolean, nullable=False, server_default=false()),
)

external_references = Table(
    "external_references",
    metadata,
    Column("external_reference", String(200), primary_key=True),
    Column(
        "entitlement_id",
        String(64),
        ForeignKey("entitlements.entitlement_id"),
        nullable=False,
        index=True,
    ),
)

activations = Table(
    "activations",
    metadata,
    Column("activation_id", String(64), primary_key=True),
    Column("entitlement_id", String(64), ForeignKey("entitlements.entitlement_id"), nullable=False),
    Column("fingerprint", String(256), nullable=False),
    Column("label", String(200), nullable=False),
    Column("lease_jti", String(64), nullable=False),
    Column("lease_expire_time", UtcDateTime, nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    Column("released_time", UtcDateTime, nullable=True),
    Column("seat_time", UtcDateTime, nullable=True),  # when it last took its seat
    # When its lapse was written to the event log (None: live, or lapse not yet noticed).
    Column("lapse_recorded_time", UtcDateTime, nullable=True),
    Column("user_id", String(64), nullable=True),  # the named user who activated, if any
    Column("released_by", String(128), nullable=True),  # the actor that released it
    Column("release_reason", String(500), nullable=True),  # an administrator's reason
    # An administrator took the seat back: its renewal is refused with SEAT_DEACTIVATED.
    Column("deactivated", Boolean, nullable=False, server_default=false()),
    UniqueConstraint("entitlement_id", "fingerprint"),
    # What counting seats reads: the activations that may hold one, by lease expiry.
    Index(
        "ix_activations_unlapsed",
        "entitlement_id",
        "lease_expire_time",
        postgresql_where=text("released_time IS NULL AND lapse_recorded_time IS NULL"),
        sqlite_where=text("released_time IS NULL AND lapse_recorded_time IS NULL"),
    ),
)

named_users = Table(
    "named_users",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("entitlement_id", String(64), ForeignKey("entitlements.entitlement_id"), nullable=False),
    Column("email", String(254), nullable=False),
    # The invitation code: keyed hash for lookup, sealed copy for resend.
    Column("invitation_hash", String(64), nullable=False, unique=True),
    Column("invitation_sealed", LargeBinary, nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("redeem_time", UtcDateTime, nullable=True),
    # The jti of the one identity token that is valid (None: not redeemed).
    Column("identity_jti", String(64), nullable=True),
    # When the identity token was last used (None: not since 0008, or not redeemed).
    Column("identity_used_time", UtcDateTime, nullable=True),
    Column("order_source", String(64), nullable=False),  # the order that assigned the seat
    Column("order_id", String(128), nullable=False),
    UniqueConstraint("entitlement_id", "email"),
)

events = Table(
    "entitlement_events",
    metadata,
    # Insertion order; the order in which committed events are numbered.
    Column(
        "event_id",
        BigInteger().with_variant(Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    # The change stream's position: set after commit (PostgreSQL) or at insert (SQLite).
    Column("sequence", BigInteger, nullable=True, unique=True),
    Column("entitlement_id", String(64), nullable=False),
    Column("type", String(32), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("order_source", String(64), nullable=False),
    Column("order_id", String(128), nullable=False),
    Column("activation_id", String(64), nullable=False),
    Column("snapshot", JSON, nullable=False),
    Column("actor", String(128), nullable=True),  # who made the change (None: before 0010)
    # When the change took effect, where that is before create_time (a lapse is recorded
    # after its lease ran out); None: at create_time.
    Column("effective_time", UtcDateTime, nullable=True),
    Index("ix_entitlement_events_entitlement_id_sequence", "entitlement_id", "sequence"),
    Index(
        "ix_entitlement_events_entitlement_id_type_create_time",
        "entitlement_id",
        "type",
        "create_time",
    ),
    Index(
        "ix_entitlement_events_pending",
        "event_id",
        postgresql_where=text("sequence IS NULL"),
        sqlite_where=text("sequence IS NULL"),
    ),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("token_id", String(64), primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("scopes", String(200), nullable=False),
    Column("description", Text, nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("revoke_time", UtcDateTime, nullable=True),
    Column("last_used_time", UtcDateTime, nullable=True),  # None: never used
    Column("expire_time", UtcDateTime, nullable=True),  # None: never expires
)

outbox = Table(
    "outbox",
    metadata,
    Column("message_id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("entitlement_id", String(64), ForeignKey("entitlements.entitlement_id"), nullable=False),
    Column("user_id", String(64), nullable=True),  # the named user of an invitation
    Column("to_email", String(254), nullable=False),
    # The order whose GetOrder shows it (for a resend: the entitlement's first order).
    Column("order_source", String(64), nullable=False),
    Column("order_id", String(128), nullable=False),
    Column("state", String(8), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_time", UtcDateTime, nullable=True),
    # A dispatcher is sending it until then; after that another may take it over.
    Column("claimed_until", UtcDateTime, nullable=True),
    Column("last_error", Text, nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("sent_time", UtcDateTime, nullable=True),
    Index("ix_outbox_state_next_attempt_time", "state", "next_attempt_time"),
    Index("ix_outbox_order", "order_source", "order_id"),
)

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("private_key_sealed", LargeBinary, nullable=False),
    Column("public_key", String(64), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("retire_time", UtcDateTime, nullable=True),
)

# Wrong credentials from each peer, per fixed window (domain.abuse_limits).
credential_failures = Table(
    "credential_failures",
    metadata,
    Column("peer", String(64), primary_key=True),
    Column("window_start", UtcDateTime, primary_key=True),
    Column("failures", Integer, nullable=False),
    Index("ix_credential_failures_window_start", "window_start"),
)

# Every change of every kind, with the actor that made it (app/audit.py).
audit_events = Table(
    "audit_events",
    metadata,
    Column(
        "audit_id",
        BigInteger().with_variant(Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    Column("create_time", UtcDateTime, nullable=False),
    Column("actor", String(128), nullable=False),  # token:ID, device:ID, system:JOB, cli:USER
    Column("action", String(64), nullable=False),  # e.g. order.fulfil, sku.put, token.revoke
    Column("resource", String(300), nullable=False),  # what it changed: skus/ID, orders/SRC/ID
    Column("entitlement_id", String(64), nullable=True),  # the entitlement it changed, if one
    Column("details", JSON, nullable=False),
    Index("ix_audit_events_create_time", "create_time"),
    Index("ix_audit_events_entitlement_id_audit_id", "entitlement_id", "audit_id"),
    Index("ix_audit_events_actor_audit_id", "actor", "audit_id"),
)

# Outbound webhooks: each subscription's own cursor into entitlement_events (the events
# are read from there, never copied) and the claim of the one sender at work on it.
webhook_subscriptions = Table(
    "webhook_subscriptions",
    metadata,
    Column("subscription_id", String(64), primary_key=True),
    Column("url", Text, nullable=False),
    Column("secret_sealed", LargeBinary, nullable=False),
    Column("event_types", JSON, nullable=False),  # [] : every type
    Column("product_ids", JSON, nullable=False),  # [] : every product
    Column("description", Text, nullable=False),
    Column("state", String(8), nullable=False),  # active, paused
    Column("pause_reason", Text, nullable=False),
    Column("cursor", BigInteger, nullable=False),  # the last sequence delivered or skipped
    Column("attempts", Integer, nullable=False),  # failed in a row on the next event
    Column("next_attempt_time", UtcDateTime, nullable=True),
    Column("failing_since", UtcDateTime, nullable=True),
    # A sender is at work on it until then; its writes name its claim, so one that lost
    # the claim (ran out, or a call reset the subscription) writes nothing more.
    Column("claim_id", String(64), nullable=True),
    Column("claimed_until", UtcDateTime, nullable=True),
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    Index("ix_webhook_subscriptions_state_next_attempt_time", "state", "next_attempt_time"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column(
        "delivery_id",
        BigInteger().with_variant(Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    Column("subscription_id", String(64), nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("attempt_time", UtcDateTime, nullable=False),
    Column("http_status", Integer, nullable=False),  # 0: no answer
    Column("delivered", Boolean, nullable=False),
    Column("response_excerpt", Text, nullable=False),
    Column("redelivery", Boolean, nullable=False),
    Index("ix_webhook_deliveries_subscription_id_delivery_id", "subscription_id", "delivery_id"),
)
