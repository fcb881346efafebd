"""Entitlements, their license-key lookup and external references."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import assert_never

from sqlalchemy import ColumnElement, Select, and_, func, insert, not_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from keyturn.server.domain.catalog import Dispatch, LicenseModel, Overage
from keyturn.server.domain.deactivation_limits import DeactivationLimit
from keyturn.server.domain.entitlement import Customer, Entitlement, Status
from keyturn.server.domain.named_users import canonical_email

from .codec import features_from_json, features_to_json
from .rows import Row
from .tables import entitlements, external_references, named_users


@dataclass(frozen=True)
class StoredKey:
    """A license key as kept: keyed hash for lookup, sealed copy for resend."""

    key_hash: str
    key_sealed: bytes


def entitlement_of(row: Row, references: tuple[str, ...]) -> Entitlement:
    return Entitlement(
        entitlement_id=row["entitlement_id"],
        product_id=row["product_id"],
        edition_id=row["edition_id"],
        customer=Customer(row["customer_id"], row["customer_name"], row["customer_email"]),
        ship_to_email=row["ship_to_email"],
        seats=row["seats"],
        features=features_from_json(row["features"]),
        start_time=row["start_time"],
        end_time=row["end_time"],
        trial=row["trial"],
        license_model=LicenseModel(row["license_model"]),
        lease_duration=timedelta(seconds=row["lease_duration_seconds"]),
        dispatch=Dispatch(row["dispatch"]),
        create_time=row["create_time"],
        update_time=row["update_time"],
        cancel_time=row["cancel_time"],
        grace=timedelta(seconds=row["grace_seconds"]),
        external_references=references,
        addons=features_from_json(row["addon_features"]),
        removed_features=tuple(row["removed_features"]),
        overage=Overage(row["overage"]),
        suspend_time=row["suspend_time"],
        deactivation_limit=_deactivation_limit(row),
    )


def _deactivation_limit(row: Row) -> DeactivationLimit | None:
    if row["deactivation_limit"] is None:
        return None
    return DeactivationLimit.of_seconds(
        row["deactivation_limit"],
        row["deactivation_period_seconds"],
        bool(row["deactivation_counts_releases"]),
    )


def _deactivation_columns(limit: DeactivationLimit | None) -> dict[str, object]:
    if limit is None:
        return {}
    return {
        "deactivation_limit": limit.count,
        "deactivation_period_seconds": int(limit.length.total_seconds()),
        "deactivation_counts_releases": limit.count_releases,
    }


def _state(entitlement: Entitlement) -> dict[str, object]:
    """The columns that operations may change."""
    return {
        "edition_id": entitlement.edition_id,
        "seats": entitlement.seats,
        "features": features_to_json(entitlement.features),
        "start_time": entitlement.start_time,
        "end_time": entitlement.end_time,
        "trial": entitlement.trial,
        "cancel_time": entitlement.cancel_time,
        "suspend_time": entitlement.suspend_time,
        "grace_seconds": int(entitlement.grace.total_seconds()),
        "usable_until": entitlement.usable_until(),
        "addon_features": features_to_json(entitlement.addons),
        "removed_features": list(entitlement.removed_features),
        "update_time": entitlement.update_time,
    }


@dataclass(frozen=True)
class EntitlementFilter:
    """ListEntitlements filters; empty ones match everything."""

    customer_id: str = ""
    email: str = ""
    product_id: str = ""
    status: Status | None = None
    external_reference: str = ""


def status_condition(status: Status, now: datetime) -> ColumnElement[bool]:
    """Status as Entitlement.status computes it, in SQL (usable_until = end date + grace):
    cancelled, then suspended, then expired. tests/store/test_entitlement_status.py runs
    both on the same cases."""
    t = entitlements
    live = or_(t.c.usable_until.is_(None), t.c.usable_until > now)
    held = and_(t.c.cancel_time.is_(None), t.c.suspend_time.is_not(None))
    running = and_(t.c.cancel_time.is_(None), t.c.suspend_time.is_(None))
    match status:
        case Status.CANCELLED:
            return t.c.cancel_time.is_not(None)
        case Status.SUSPENDED:
            return held
        case Status.EXPIRED:
            return and_(running, not_(live))
        case Status.TRIAL | Status.ACTIVE:
            return and_(running, live, t.c.trial == (status is Status.TRIAL))
        case unreachable:
            assert_never(unreachable)


class EntitlementRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._db = connection

    async def add(
        self, entitlement: Entitlement, key: StoredKey | None, order_source: str, order_id: str
    ) -> None:
        await self._db.execute(
            insert(entitlements).values(
                entitlement_id=entitlement.entitlement_id,
                product_id=entitlement.product_id,
                customer_id=entitlement.customer.customer_id,
                customer_name=entitlement.customer.name,
                customer_email=entitlement.customer.email,
                ship_to_email=entitlement.ship_to_email,
                license_model=entitlement.license_model.value,
                overage=entitlement.overage.value,
                lease_duration_seconds=int(entitlement.lease_duration.total_seconds()),
                dispatch=entitlement.dispatch.value,
                key_hash=key.key_hash if key else None,
                key_sealed=key.key_sealed if key else None,
                order_source=order_source,
                order_id=order_id,
                create_time=entitlement.create_time,
                **_deactivation_columns(entitlement.deactivation_limit),
                **_state(entitlement),
            )
        )
        for reference in entitlement.external_references:
            await self._db.execute(
                insert(external_references).values(
                    external_reference=reference, entitlement_id=entitlement.entitlement_id
                )
            )

    async def touch(self, entitlement_id: str, now: datetime) -> None:
        """Mark the entitlement changed at `now`, for a change of what it holds (a named
        user removed) rather than of its own columns: a seat claim that read it before
        then loses its conditional write and decides again under the lock (pg_seats)."""
        await self._db.execute(
            update(entitlements)
            .where(entitlements.c.entitlement_id == entitlement_id)
            .values(update_time=now)
        )

    async def save(self, entitlement: Entitlement) -> None:
        """Write back the state an operation changed."""
        await self._db.execute(
            update(entitlements)
            .where(entitlements.c.entitlement_id == entitlement.entitlement_id)
            .values(**_state(entitlement))
        )

    async def attach_reference(self, reference: str, entitlement_id: str) -> None:
        await self._db.execute(
            insert(external_references).values(
                external_reference=reference, entitlement_id=entitlement_id
            )
        )

    async def _many(self, query: Select[tuple[object, ...]]) -> list[Entitlement]:
        rows = list((await self._db.execute(query)).mappings())
        if not rows:
            return []
        refs = await self._db.execute(
            select(external_references.c.entitlement_id, external_references.c.external_reference)
            .where(external_references.c.entitlement_id.in_([r["entitlement_id"] for r in rows]))
            .order_by(external_references.c.external_reference)
        )
        by_entitlement: dict[str, list[str]] = {}
        for entitlement_id, reference in refs:
            by_entitlement.setdefault(entitlement_id, []).append(reference)
        return [
            entitlement_of(row, tuple(by_entitlement.get(row["entitlement_id"], ())))
            for row in rows
        ]

    async def _one(self, query: Select[tuple[object, ...]]) -> Entitlement | None:
        found = await self._many(query.limit(1))
        return found[0] if found else None

    async def lock_in_order(self, entitlement_ids: set[str]) -> None:
        """Row-lock these entitlements in id order (PostgreSQL; SQLite holds the write lock)."""
        if not entitlement_ids or self._db.dialect.name == "sqlite":
            return
        query = (
            select(entitlements.c.entitlement_id)
            .where(entitlements.c.entitlement_id.in_(entitlement_ids))
            .order_by(entitlements.c.entitlement_id)
            .with_for_update()
        )
        await self._db.execute(query)

    async def get_many(self, entitlement_ids: set[str]) -> dict[str, Entitlement]:
        query = select(entitlements).where(entitlements.c.entitlement_id.in_(entitlement_ids))
        return {e.entitlement_id: e for e in await self._many(query)}

    async def of_customer(
        self, customer_id: str, email: str, after: str, limit: int
    ) -> list[Entitlement]:
        """Entitlements of a customer id and/or an email (the customer's, the ship-to or,
        lower-cased, a named user's), by id; an empty argument matches everything."""
        t = entitlements
        query = select(t).where(t.c.entitlement_id > after)
        if customer_id:
            query = query.where(t.c.customer_id == customer_id)
        if email:
            named = select(named_users.c.entitlement_id).where(
                named_users.c.email == canonical_email(email)
            )
            query = query.where(
                or_(
                    t.c.customer_email == email,
                    t.c.ship_to_email == email,
                    t.c.entitlement_id.in_(named),
                )
            )
        return await self._many(query.order_by(t.c.entitlement_id).limit(limit))

    async def list(
        self, where: EntitlementFilter, now: datetime, after: str, limit: int
    ) -> list[Entitlement]:
        """Entitlements matching every filter set, by id (ids grow with creation time)."""
        t = entitlements
        query = select(t).where(t.c.entitlement_id > after)
        if where.customer_id:
            query = query.where(t.c.customer_id == where.customer_id)
        if where.email:
            query = query.where(
                or_(t.c.customer_email == where.email, t.c.ship_to_email == where.email)
            )
        if where.product_id:
            query = query.where(t.c.product_id == where.product_id)
        if where.external_reference:
            query = query.where(
                t.c.entitlement_id.in_(
                    select(external_references.c.entitlement_id).where(
                        external_references.c.external_reference == where.external_reference
                    )
                )
            )
        if where.status is not None:
            query = query.where(status_condition(where.status, now))
        return await self._many(query.order_by(t.c.entitlement_id).limit(limit))

    async def longest_lease(self) -> timedelta:
        """The longest lease duration of any entitlement (0 when there is none)."""
        query = select(func.max(entitlements.c.lease_duration_seconds))
        return timedelta(seconds=(await self._db.execute(query)).scalar_one_or_none() or 0)

    async def get(self, entitlement_id: str, lock: bool = False) -> Entitlement | None:
        query = select(entitlements).where(entitlements.c.entitlement_id == entitlement_id)
        return await self._one(query.with_for_update() if lock else query)

    async def find_by_key_hash(self, key_hash: str) -> Entitlement | None:
        return await self._one(select(entitlements).where(entitlements.c.key_hash == key_hash))

    async def find_by_reference(self, reference: str, lock: bool = False) -> Entitlement | None:
        query = (
            select(entitlements)
            .join(
                external_references,
                external_references.c.entitlement_id == entitlements.c.entitlement_id,
            )
            .where(external_references.c.external_reference == reference)
        )
        return await self._one(query.with_for_update(of=entitlements) if lock else query)

    async def origin_order(self, entitlement_id: str) -> tuple[str, str]:
        """The source and id of the order that created the entitlement."""
        query = select(entitlements.c.order_source, entitlements.c.order_id).where(
            entitlements.c.entitlement_id == entitlement_id
        )
        source, order_id = (await self._db.execute(query)).one()
        return str(source), str(order_id)

    async def sealed_key(self, entitlement_id: str) -> bytes | None:
        query = select(entitlements.c.key_sealed).where(
            entitlements.c.entitlement_id == entitlement_id
        )
        value = (await self._db.execute(query)).scalar_one_or_none()
        return None if value is None else bytes(value)

    async def reference_exists(self, reference: str) -> bool:
        query = select(external_references.c.external_reference).where(
            external_references.c.external_reference == reference
        )
        return (await self._db.execute(query)).first() is not None
