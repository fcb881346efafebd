"""Activations and the seat count kept on their entitlement (SQLAlchemy, every backend).

`entitlements.seats_held` counts the activations that hold a seat unless their
lapse is pending: unreleased, no lapse recorded. Every write here keeps it,
under the entitlement's lock. Seats in use at an instant are that count minus
the floating leases that lapsed and are not recorded yet, which the partial
index `ix_activations_unlapsed` finds without reading released history, so
counting costs the same on a fresh entitlement and on one with a long past.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, assert_never

from sqlalchemy import ColumnElement, and_, case, func, insert, not_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from keyturn.server.domain.catalog import LicenseModel
from keyturn.server.domain.entitlement import Entitlement
from keyturn.server.domain.seats import Activation, ActivationState, Lapse, seat_freed_time

from .rows import Row
from .tables import activations, entitlements


def activation_of(row: Row) -> Activation:
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
        lapse_recorded_time=row["lapse_recorded_time"],
        update_time=row["update_time"],
        released_by=row["released_by"],
        release_reason=row["release_reason"],
        deactivated=bool(row["deactivated"]),
    )


def live_condition(model: LicenseModel, now: datetime, lapse_grace: timedelta) -> Any:
    """The seat rule of domain.seats.holds_seat in SQL (a test keeps the two equal)."""
    alive = activations.c.released_time.is_(None)
    if model is LicenseModel.NODE_LOCKED:
        return alive
    return and_(
        alive,
        activations.c.lapse_recorded_time.is_(None),
        activations.c.lease_expire_time > now - lapse_grace,
    )


def holds_seat_column(now: datetime, lapse_grace: timedelta) -> ColumnElement[bool]:
    """`live_condition` of a row joined with its entitlement, whatever its license model."""
    model = entitlements.c.license_model
    return or_(
        *(
            and_(model == each.value, live_condition(each, now, lapse_grace))
            for each in LicenseModel
        )
    )


def state_condition(
    state: ActivationState, now: datetime, lapse_grace: timedelta
) -> ColumnElement[bool]:
    """domain.seats.activation_state in SQL, on activations joined with their entitlement
    (tests/store/test_activation_states.py keeps the two equal)."""
    released = activations.c.released_time.is_not(None)
    match state:
        case ActivationState.LIVE:
            return holds_seat_column(now, lapse_grace)
        case ActivationState.LAPSED:
            return and_(~released, ~holds_seat_column(now, lapse_grace))
        case ActivationState.RELEASED:
            return and_(released, not_(activations.c.deactivated))
        case ActivationState.DEACTIVATED:
            return and_(released, activations.c.deactivated)
        case _:
            assert_never(state)


@dataclass(frozen=True)
class ActivationFilter:
    """ListActivations filters: of one entitlement or of a customer's; empty ones match
    everything."""

    entitlement_id: str = ""
    customer_id: str = ""
    states: tuple[ActivationState, ...] = ()
    user_id: str = ""
    node_locked: bool | None = None


def pending_lapse(now: datetime, lapse_grace: timedelta) -> ColumnElement[bool]:
    """Counted in seats_held, but lapsed: what ix_activations_unlapsed finds by expiry."""
    return and_(
        activations.c.released_time.is_(None),
        activations.c.lapse_recorded_time.is_(None),
        activations.c.lease_expire_time <= now - lapse_grace,
    )


def _pending_lapses_of(entitlement_id: Any, now: datetime, lapse_grace: timedelta) -> Any:
    return (
        select(func.count())
        .select_from(activations)
        .where(activations.c.entitlement_id == entitlement_id, pending_lapse(now, lapse_grace))
        .scalar_subquery()
    )


def in_use_column(now: datetime, lapse_grace: timedelta) -> Any:
    """Seats in use of an entitlements row: held, less pending lapses of floating ones."""
    floating = entitlements.c.license_model == LicenseModel.FLOATING.value
    pending = _pending_lapses_of(entitlements.c.entitlement_id, now, lapse_grace)
    return entitlements.c.seats_held - case((floating, pending), else_=0)


class ActivationRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._db = connection

    async def get(self, activation_id: str) -> Activation | None:
        return await self._find(activations.c.activation_id == activation_id)

    async def of_device(self, entitlement_id: str, fingerprint: str) -> Activation | None:
        return await self._find(
            and_(
                activations.c.entitlement_id == entitlement_id,
                activations.c.fingerprint == fingerprint,
            )
        )

    async def of_entitlement(self, entitlement_id: str, limit: int) -> list[Activation]:
        """An entitlement's activations, released ones too, the most recently seen first."""
        query = (
            select(activations)
            .where(activations.c.entitlement_id == entitlement_id)
            .order_by(activations.c.update_time.desc(), activations.c.activation_id)
            .limit(limit)
        )
        return [activation_of(row) for row in (await self._db.execute(query)).mappings()]

    async def _find(self, condition: ColumnElement[bool]) -> Activation | None:
        row = (await self._db.execute(select(activations).where(condition))).mappings().first()
        return None if row is None else activation_of(row)

    async def matching(
        self,
        where: ActivationFilter,
        *,
        now: datetime,
        lapse_grace: timedelta,
        after: str,
        limit: int,
    ) -> list[tuple[Activation, LicenseModel]]:
        """Activations matching every filter, by id (ids grow with creation time), each
        with its entitlement's license model."""
        query = (
            select(activations, entitlements.c.license_model.label("e_license_model"))
            .join(entitlements, entitlements.c.entitlement_id == activations.c.entitlement_id)
            .where(activations.c.activation_id > after)
        )
        if where.entitlement_id:
            query = query.where(activations.c.entitlement_id == where.entitlement_id)
        if where.customer_id:
            query = query.where(entitlements.c.customer_id == where.customer_id)
        if where.user_id:
            query = query.where(activations.c.user_id == where.user_id)
        if where.node_locked is not None:
            model = LicenseModel.NODE_LOCKED if where.node_locked else LicenseModel.FLOATING
            query = query.where(entitlements.c.license_model == model.value)
        if where.states:
            query = query.where(or_(*(state_condition(s, now, lapse_grace) for s in where.states)))
        query = query.order_by(activations.c.activation_id).limit(limit)
        rows = (await self._db.execute(query)).mappings()
        return [(activation_of(row), LicenseModel(row["e_license_model"])) for row in rows]

    async def states_of(
        self, activation_ids: Sequence[str], now: datetime, lapse_grace: timedelta
    ) -> dict[str, ActivationState]:
        """Each activation's state as the SQL of `state_condition` finds it (for tests that
        hold it to the Python rule)."""
        found: dict[str, ActivationState] = {}
        for state in ActivationState:
            query = (
                select(activations.c.activation_id)
                .join(entitlements, entitlements.c.entitlement_id == activations.c.entitlement_id)
                .where(
                    activations.c.activation_id.in_(list(activation_ids)),
                    state_condition(state, now, lapse_grace),
                )
            )
            for activation_id in (await self._db.execute(query)).scalars():
                assert activation_id not in found, f"{activation_id} in two states"
                found[activation_id] = state
        return found

    async def count_live(
        self, entitlement: Entitlement, now: datetime, lapse_grace: timedelta
    ) -> int:
        counts = await self.count_live_many([entitlement], now, lapse_grace)
        return counts[entitlement.entitlement_id]

    async def count_live_many(
        self, held_by: list[Entitlement], now: datetime, lapse_grace: timedelta
    ) -> dict[str, int]:
        """Seats in use of several entitlements, in one query (0 for unknown ones)."""
        counts = dict.fromkeys((e.entitlement_id for e in held_by), 0)
        if not counts:
            return counts
        query = select(entitlements.c.entitlement_id, in_use_column(now, lapse_grace)).where(
            entitlements.c.entitlement_id.in_(list(counts))
        )
        for entitlement_id, live in await self._db.execute(query):
            counts[entitlement_id] = int(live)
        return counts

    async def seats_held(self, entitlement_id: str) -> int:
        query = select(entitlements.c.seats_held).where(
            entitlements.c.entitlement_id == entitlement_id
        )
        return int((await self._db.execute(query)).scalar_one())

    async def _add_held(self, entitlement_id: str, change: int) -> None:
        if change:
            await self._db.execute(
                update(entitlements)
                .where(entitlements.c.entitlement_id == entitlement_id)
                .values(seats_held=entitlements.c.seats_held + change)
            )

    async def note_lapses(
        self, entitlement: Entitlement, now: datetime, lapse_grace: timedelta
    ) -> tuple[Lapse, ...]:
        """Floating activations whose lease lapsed since last looked at, marked as noticed
        and no longer counted in seats_held; each with the instant its seat was freed.

        Lapses need no sweep to free seats; this only lets the event log say so,
        once per lapse: the next time the entitlement is used, or at the next sweep.
        The caller holds the entitlement's lock.
        """
        lapses = await self.pending_lapses(entitlement, now, lapse_grace)
        ids = [lapse.activation_id for lapse in lapses]
        if ids:
            await self._db.execute(
                update(activations)
                .where(activations.c.activation_id.in_(ids))
                .values(lapse_recorded_time=now)
            )
            await self._add_held(entitlement.entitlement_id, -len(ids))
        return lapses

    async def pending_lapses(
        self, entitlement: Entitlement, now: datetime, lapse_grace: timedelta
    ) -> tuple[Lapse, ...]:
        """The lapses `note_lapses` would record now, without recording them (a read)."""
        if entitlement.license_model is not LicenseModel.FLOATING:
            return ()
        query = (
            select(activations.c.activation_id, activations.c.lease_expire_time)
            .where(
                activations.c.entitlement_id == entitlement.entitlement_id,
                pending_lapse(now, lapse_grace),
            )
            .order_by(activations.c.activation_id)
        )
        return tuple(
            Lapse(activation_id, seat_freed_time(expiry, lapse_grace))
            for activation_id, expiry in await self._db.execute(query)
        )

    async def with_unnoticed_lapses(
        self, now: datetime, lapse_grace: timedelta, limit: int
    ) -> list[str]:
        """Floating entitlements that have lapses not yet in the event log (for the sweep)."""
        query = (
            select(activations.c.entitlement_id)
            .join(entitlements, entitlements.c.entitlement_id == activations.c.entitlement_id)
            .where(
                entitlements.c.license_model == LicenseModel.FLOATING.value,
                pending_lapse(now, lapse_grace),
            )
            .distinct()
            .order_by(activations.c.entitlement_id)
            .limit(limit)
        )
        return list((await self._db.execute(query)).scalars())

    async def held_ahead_of(
        self, entitlement: Entitlement, held: Activation, now: datetime, lapse_grace: timedelta
    ) -> int:
        """Live seats taken before `held` (by seat time, then id): its rank, needed only
        when more seats are held than the limit allows."""
        seat_time = func.coalesce(activations.c.seat_time, activations.c.create_time)
        held_time = held.seat_time or held.create_time
        query = (
            select(func.count())
            .select_from(activations)
            .where(
                activations.c.entitlement_id == entitlement.entitlement_id,
                live_condition(entitlement.license_model, now, lapse_grace),
                or_(
                    seat_time < held_time,
                    and_(seat_time == held_time, activations.c.activation_id < held.activation_id),
                ),
            )
        )
        return int((await self._db.execute(query)).scalar_one())

    async def add(self, activation: Activation) -> None:
        """A new activation, holding its seat."""
        await self._db.execute(
            insert(activations).values(
                activation_id=activation.activation_id,
                entitlement_id=activation.entitlement_id,
                fingerprint=activation.fingerprint,
                label=activation.label,
                lease_jti=activation.lease_jti,
                lease_expire_time=activation.lease_expire_time,
                create_time=activation.create_time,
                update_time=activation.create_time,
                seat_time=activation.seat_time,
                user_id=activation.user_id,
            )
        )
        await self._add_held(activation.entitlement_id, 1)

    async def save_lease(self, activation: Activation, now: datetime, took_seat: bool) -> None:
        """An existing activation with a new lease; `took_seat`: it counts again."""
        await self._db.execute(
            update(activations)
            .where(activations.c.activation_id == activation.activation_id)
            .values(
                label=activation.label,
                lease_jti=activation.lease_jti,
                lease_expire_time=activation.lease_expire_time,
                released_time=None,
                lapse_recorded_time=None,
                released_by=None,
                release_reason=None,
                deactivated=False,
                update_time=now,
                seat_time=activation.seat_time,
                user_id=activation.user_id,
            )
        )
        if took_seat:
            await self._add_held(activation.entitlement_id, 1)

    async def release(self, activation: Activation, now: datetime, released_by: str) -> None:
        """Mark it released by its device; it stops counting unless its lapse was already
        recorded."""
        await self._free(activation, released_time=now, update_time=now, released_by=released_by)

    async def deactivate(self, released: Activation) -> None:
        """An administrator took the seat back (`released` says when, by whom and why). Its
        last-seen time (update_time) stays the device's."""
        assert released.released_time is not None
        await self._free(
            released,
            released_time=released.released_time,
            released_by=released.released_by,
            release_reason=released.release_reason,
            deactivated=True,
        )

    async def _free(self, activation: Activation, **values: object) -> None:
        await self._db.execute(
            update(activations)
            .where(activations.c.activation_id == activation.activation_id)
            .values(**values)
        )
        if activation.lapse_recorded_time is None:
            await self._add_held(activation.entitlement_id, -1)

    async def release_of_user(
        self, entitlement_id: str, user_id: str, now: datetime, released_by: str
    ) -> list[Activation]:
        """Release every unreleased activation of a named user, as `release` does one (the
        count kept); the ones released, by id. The caller holds the entitlement's lock."""
        query = (
            select(activations)
            .where(
                activations.c.entitlement_id == entitlement_id,
                activations.c.user_id == user_id,
                activations.c.released_time.is_(None),
            )
            .order_by(activations.c.activation_id)
        )
        found = [activation_of(row) for row in (await self._db.execute(query)).mappings()]
        if found:
            await self._db.execute(
                update(activations)
                .where(activations.c.activation_id.in_([a.activation_id for a in found]))
                .values(released_time=now, update_time=now, released_by=released_by)
            )
            counted = sum(1 for a in found if a.lapse_recorded_time is None)
            await self._add_held(entitlement_id, -counted)
        return found
