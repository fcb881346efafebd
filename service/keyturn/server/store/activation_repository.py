"""Activations and the seat transaction: the one place that decides who gets a seat."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from keyturn.server.domain.catalog import LicenseModel
from keyturn.server.domain.entitlement import Entitlement
from keyturn.server.domain.errors import DomainError, Reason
from keyturn.server.domain.seats import Activation, holds_seat

from .entitlement_repository import EntitlementRepository
from .tables import activations, entitlements


class SeatOutcome(StrEnum):
    GRANTED = "granted"  # a seat was taken
    KEPT = "kept"  # the activation already held its seat; its lease was extended
    REGAINED = "regained"  # its floating lease had lapsed; the seat was taken again


@dataclass(frozen=True)
class SeatClaim:
    """Who wants a seat. Renewals name the activation and the lease id they hold."""

    entitlement_id: str
    fingerprint: str
    label: str
    now: datetime
    lapse_grace: timedelta
    new_activation_id: str
    new_jti: str
    renew_activation_id: str | None = None
    renew_jti: str | None = None
    user_id: str | None = None  # the named user activating, when the credential names one


@dataclass(frozen=True)
class SeatResult:
    outcome: SeatOutcome
    activation: Activation
    entitlement: Entitlement
    seats_in_use: int
    lapsed: tuple[str, ...] = ()  # activations whose lapse was noticed now (to record)


def _activation(row: RowMapping) -> Activation:
    return Activation(
        activation_id=row["activation_id"],
        entitlement_id=row["entitlement_id"],
        fingerprint=row["fingerprint"],
        label=row["label"],
        lease_jti=row["lease_jti"],
        lease_expire_time=row["lease_expire_time"],
        create_time=row["create_time"],
        released_time=row["released_time"],
        seat_time=row["seat_time"],
        user_id=row["user_id"],
    )


def _live_condition(model: LicenseModel, now: datetime, lapse_grace: timedelta):  # type: ignore[no-untyped-def]
    alive = activations.c.released_time.is_(None)
    if model is LicenseModel.NODE_LOCKED:
        return alive
    return and_(alive, activations.c.lease_expire_time > now - lapse_grace)


def _unnoticed_lapse(now: datetime, lapse_grace: timedelta):  # type: ignore[no-untyped-def]
    return and_(
        activations.c.released_time.is_(None),
        activations.c.lapse_recorded_time.is_(None),
        activations.c.lease_expire_time <= now - lapse_grace,
    )


def _seats_exhausted(entitlement: Entitlement) -> DomainError:
    return DomainError(
        Reason.SEATS_EXHAUSTED,
        f"all {entitlement.seat_limit} seats of this license are in use",
        {"seats": str(entitlement.seats), "seat_limit": str(entitlement.seat_limit)},
    )


class ActivationRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._db = connection
        self._entitlements = EntitlementRepository(connection)

    async def get(self, activation_id: str) -> Activation | None:
        query = select(activations).where(activations.c.activation_id == activation_id)
        row = (await self._db.execute(query)).mappings().first()
        return None if row is None else _activation(row)

    async def count_live(
        self, entitlement: Entitlement, now: datetime, lapse_grace: timedelta, excluding: str = ""
    ) -> int:
        query = (
            select(func.count())
            .select_from(activations)
            .where(
                activations.c.entitlement_id == entitlement.entitlement_id,
                activations.c.activation_id != excluding,
                _live_condition(entitlement.license_model, now, lapse_grace),
            )
        )
        return int((await self._db.execute(query)).scalar_one())

    async def count_live_many(
        self, held_by: list[Entitlement], now: datetime, lapse_grace: timedelta
    ) -> dict[str, int]:
        """Live seats of several entitlements: one query per license model (0 for none)."""
        counts = dict.fromkeys((e.entitlement_id for e in held_by), 0)
        for model in LicenseModel:
            ids = [e.entitlement_id for e in held_by if e.license_model is model]
            if not ids:
                continue
            query = (
                select(activations.c.entitlement_id, func.count())
                .where(
                    activations.c.entitlement_id.in_(ids),
                    _live_condition(model, now, lapse_grace),
                )
                .group_by(activations.c.entitlement_id)
            )
            for entitlement_id, live in await self._db.execute(query):
                counts[entitlement_id] = int(live)
        return counts

    async def claim_seat(self, claim: SeatClaim) -> SeatResult:
        """Take or keep a seat, never beyond the entitlement's count.

        Serialises on the entitlement row (SELECT ... FOR UPDATE on PostgreSQL;
        the write transaction's BEGIN IMMEDIATE on SQLite), so concurrent claims
        on any number of replicas count seats one after another.
        """
        entitlement = await self._entitlements.get(claim.entitlement_id, lock=True)
        if entitlement is None:
            raise DomainError(Reason.INVALID_LICENSE_KEY, "the license key is not valid")
        entitlement.ensure_usable(claim.now)
        lapsed = await self.note_lapses(entitlement, claim.now, claim.lapse_grace)
        if claim.renew_activation_id is not None:
            row = await self._find(activations.c.activation_id == claim.renew_activation_id)
            if row is None or row.lease_jti != claim.renew_jti or row.released_time is not None:
                raise DomainError(
                    Reason.LEASE_SUPERSEDED,
                    "this lease was renewed or released; use the newest lease token",
                    {"activation_id": claim.renew_activation_id},
                )
        else:
            row = await self._find(
                and_(
                    activations.c.entitlement_id == claim.entitlement_id,
                    activations.c.fingerprint == claim.fingerprint,
                )
            )
        expiry = entitlement.lease_expiry(claim.now)
        model = entitlement.license_model
        if row is not None and holds_seat(row, model, claim.now, claim.lapse_grace):
            await self._check_within_count(entitlement, row, claim)
            outcome = SeatOutcome.KEPT
        else:
            in_use = await self.count_live(
                entitlement,
                claim.now,
                claim.lapse_grace,
                excluding=row.activation_id if row else "",
            )
            if in_use >= entitlement.seat_limit:
                raise _seats_exhausted(entitlement)
            regained = row is not None and row.released_time is None
            outcome = SeatOutcome.REGAINED if regained else SeatOutcome.GRANTED
        activation = await self._write(claim, row, expiry, outcome)
        in_use = await self.count_live(entitlement, claim.now, claim.lapse_grace)
        return SeatResult(outcome, activation, entitlement, in_use, lapsed)

    async def note_lapses(
        self, entitlement: Entitlement, now: datetime, lapse_grace: timedelta
    ) -> tuple[str, ...]:
        """Floating activations whose lease lapsed since last looked at, marked as noticed.

        Lapses need no sweep to free seats; this only lets the event log say so,
        once per lapse: the next time the entitlement is used, or at the next sweep.
        The caller holds the entitlement's lock.
        """
        if entitlement.license_model is not LicenseModel.FLOATING:
            return ()
        unnoticed = and_(
            activations.c.entitlement_id == entitlement.entitlement_id,
            _unnoticed_lapse(now, lapse_grace),
        )
        query = select(activations.c.activation_id).where(unnoticed)
        ids = tuple(sorted((await self._db.execute(query)).scalars()))
        if ids:
            await self._db.execute(
                update(activations)
                .where(activations.c.activation_id.in_(ids))
                .values(lapse_recorded_time=now)
            )
        return ids

    async def with_unnoticed_lapses(
        self, now: datetime, lapse_grace: timedelta, limit: int
    ) -> list[str]:
        """Floating entitlements that have lapses not yet in the event log (for the sweep)."""
        query = (
            select(activations.c.entitlement_id)
            .join(entitlements, entitlements.c.entitlement_id == activations.c.entitlement_id)
            .where(
                entitlements.c.license_model == LicenseModel.FLOATING.value,
                _unnoticed_lapse(now, lapse_grace),
            )
            .distinct()
            .order_by(activations.c.entitlement_id)
            .limit(limit)
        )
        return list((await self._db.execute(query)).scalars())

    async def _check_within_count(
        self, entitlement: Entitlement, held: Activation, claim: SeatClaim
    ) -> None:
        """A held seat is kept only among the first `seats` live ones by seat time.

        After an order removed seats below the number in use, the most recently
        taken seats are refused here, at their next renewal, until the count fits.
        """
        seat_time = func.coalesce(activations.c.seat_time, activations.c.create_time)
        held_time = held.seat_time or held.create_time
        query = (
            select(func.count())
            .select_from(activations)
            .where(
                activations.c.entitlement_id == entitlement.entitlement_id,
                _live_condition(entitlement.license_model, claim.now, claim.lapse_grace),
                or_(
                    seat_time < held_time,
                    and_(seat_time == held_time, activations.c.activation_id < held.activation_id),
                ),
            )
        )
        ahead = int((await self._db.execute(query)).scalar_one())
        if ahead >= entitlement.seat_limit:
            raise _seats_exhausted(entitlement)

    async def _find(self, condition: object) -> Activation | None:
        row = (await self._db.execute(select(activations).where(condition))).mappings().first()  # type: ignore[arg-type]
        return None if row is None else _activation(row)

    async def _write(
        self, claim: SeatClaim, existing: Activation | None, expiry: datetime, outcome: SeatOutcome
    ) -> Activation:
        if existing is None:
            activation = Activation(
                activation_id=claim.new_activation_id,
                entitlement_id=claim.entitlement_id,
                fingerprint=claim.fingerprint,
                label=claim.label,
                lease_jti=claim.new_jti,
                lease_expire_time=expiry,
                create_time=claim.now,
                seat_time=claim.now,
                user_id=claim.user_id,
            )
            await self._db.execute(
                insert(activations).values(
                    activation_id=activation.activation_id,
                    entitlement_id=activation.entitlement_id,
                    fingerprint=activation.fingerprint,
                    label=activation.label,
                    lease_jti=activation.lease_jti,
                    lease_expire_time=activation.lease_expire_time,
                    create_time=claim.now,
                    update_time=claim.now,
                    seat_time=claim.now,
                    user_id=claim.user_id,
                )
            )
            return activation
        seat_time = existing.seat_time if outcome is SeatOutcome.KEPT else claim.now
        label = claim.label or existing.label
        # A renewal keeps the activation's user; a new activation is by whoever presents now.
        user_id = existing.user_id if claim.renew_activation_id else claim.user_id
        await self._db.execute(
            update(activations)
            .where(activations.c.activation_id == existing.activation_id)
            .values(
                label=label,
                lease_jti=claim.new_jti,
                lease_expire_time=expiry,
                released_time=None,
                lapse_recorded_time=None,
                update_time=claim.now,
                seat_time=seat_time,
                user_id=user_id,
            )
        )
        return Activation(
            activation_id=existing.activation_id,
            entitlement_id=existing.entitlement_id,
            fingerprint=existing.fingerprint,
            label=label,
            lease_jti=claim.new_jti,
            lease_expire_time=expiry,
            create_time=existing.create_time,
            seat_time=seat_time,
            user_id=user_id,
        )

    async def release(self, activation_id: str, jti: str, now: datetime) -> Activation | None:
        """Release the seat held under lease `jti`. Returns the activation, or None when
        the lease is not the current one (already released releases again quietly)."""
        row = await self.get(activation_id)
        if row is None or row.lease_jti != jti:
            return None
        if row.released_time is None:
            await self._db.execute(
                update(activations)
                .where(activations.c.activation_id == activation_id)
                .values(released_time=now, update_time=now)
            )
        return row
