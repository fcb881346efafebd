"""The seat transactions on SQLAlchemy, for SQLite (PostgreSQL uses store/pg_seats.py).

Each runs in one write transaction, serialised on the entitlement (SQLite's
BEGIN IMMEDIATE; SELECT ... FOR UPDATE on PostgreSQL): note pending lapses,
count, ask `domain.seats.admit`, write.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from keyturn.server.clock import Clock
from keyturn.server.domain.deactivation_limits import releases_limited
from keyturn.server.domain.entitlement import Entitlement
from keyturn.server.domain.errors import invalid_license_key, lease_superseded, seats_exhausted
from keyturn.server.domain.seats import (
    Activation,
    Lapse,
    SeatOutcome,
    admit,
    check_claimable,
    check_renewable,
    holds_seat,
    rank_needed,
    takes_seat,
)

from .deactivation_counts import ensure_within_limit
from .seats import (
    ActivationClaim,
    ClaimEvents,
    LeaseRef,
    LicenseCount,
    Release,
    ReleaseEvents,
    RenewalClaim,
    SeatResult,
    fresh_activation,
)
from .unit_of_work import Store, Transaction


class SqlSeats:
    def __init__(self, store: Store, clock: Clock, lapse_grace: timedelta) -> None:
        self._store = store
        self._clock = clock
        self._grace = lapse_grace

    async def now(self) -> datetime:
        """One process writes SQLite: its clock is the one clock."""
        return self._clock.now()

    async def activate(self, claim: ActivationClaim, events: ClaimEvents) -> SeatResult:
        now = self._clock.now()
        async with self._store.write() as tx:
            entitlement = await _claimed(tx, claim.key_hash, claim.entitlement_id)
            if claim.user_id is not None and await tx.named_users.get(claim.user_id) is None:
                raise invalid_license_key()  # removed since their identity token was read
            check_claimable(entitlement, claim.product_id, now)
            lapsed = await tx.activations.note_lapses(entitlement, now, self._grace)
            current = await tx.activations.of_device(entitlement.entitlement_id, claim.fingerprint)
            fresh = fresh_activation(claim, entitlement, now)
            # A new activation is by whoever presents now (a named user, or the key).
            result = await self._claim(
                tx, entitlement, current, fresh, now, lapsed, keep_user=False
            )
            for event in events(result):
                await tx.events.append(event)
        return result

    async def renew(self, claim: RenewalClaim, events: ClaimEvents) -> SeatResult:
        now = self._clock.now()
        async with self._store.write() as tx:
            entitlement = await tx.entitlements.get(claim.entitlement_id, lock=True)
            if entitlement is None:
                raise invalid_license_key()
            entitlement.ensure_usable(now)
            lapsed = await tx.activations.note_lapses(entitlement, now, self._grace)
            current = check_renewable(
                await tx.activations.get(claim.activation_id), claim.activation_id, claim.jti
            )
            wanted = replace(
                current,
                lease_jti=claim.new_jti,
                lease_expire_time=entitlement.lease_expiry(now),
                seat_time=now,
            )
            result = await self._claim(
                tx, entitlement, current, wanted, now, lapsed, keep_user=True
            )
            user = None
            if result.activation.user_id is not None:
                user = await tx.named_users.get(result.activation.user_id)
            for event in events(result):
                await tx.events.append(event)
        return replace(result, user=user)

    async def _claim(
        self,
        tx: Transaction,
        entitlement: Entitlement,
        current: Activation | None,
        wanted: Activation,
        now: datetime,
        lapsed: tuple[Lapse, ...],
        keep_user: bool,
    ) -> SeatResult:
        model = entitlement.license_model
        holds = current is not None and holds_seat(current, model, now, self._grace)
        in_use = await tx.activations.seats_held(entitlement.entitlement_id)
        ahead = 0
        if current is not None and rank_needed(holds, in_use, entitlement.seat_limit):
            ahead = await tx.activations.held_ahead_of(entitlement, current, now, self._grace)
        outcome = admit(current, holds, in_use, entitlement.seat_limit, ahead)
        if outcome is SeatOutcome.REFUSED:
            raise seats_exhausted(entitlement.seats, entitlement.seat_limit)
        if current is None:
            await tx.activations.add(wanted)
            return SeatResult(outcome, wanted, entitlement, in_use + 1, now, lapsed=lapsed)
        activation = replace(
            current,
            label=wanted.label or current.label,
            lease_jti=wanted.lease_jti,
            lease_expire_time=wanted.lease_expire_time,
            seat_time=current.seat_time if outcome is SeatOutcome.KEPT else now,
            user_id=current.user_id if keep_user else wanted.user_id,
            released_time=None,
            lapse_recorded_time=None,
        )
        took = takes_seat(outcome)
        await tx.activations.save_lease(activation, now, took_seat=took)
        seats_in_use = in_use + 1 if took else in_use
        return SeatResult(outcome, activation, entitlement, seats_in_use, now, lapsed=lapsed)

    async def release(self, lease: LeaseRef, events: ReleaseEvents, released_by: str) -> Release:
        now = self._clock.now()
        async with self._store.write() as tx:
            entitlement = await tx.entitlements.get(lease.entitlement_id, lock=True)
            current = await tx.activations.get(lease.activation_id)
            if entitlement is None or not lease.is_current_for(current):
                raise lease_superseded(lease.activation_id)
            lapsed = await tx.activations.note_lapses(entitlement, now, self._grace)
            current = await tx.activations.get(lease.activation_id)
            assert current is not None
            released_now = current.released_time is None
            if released_now:
                if releases_limited(entitlement.deactivation_limit):
                    await ensure_within_limit(tx, entitlement, now)
                await tx.activations.release(current, now, released_by)
            in_use = await tx.activations.seats_held(entitlement.entitlement_id)
            result = Release(entitlement, in_use, now, released_now, lapsed)
            for event in events(result, lease.activation_id):
                await tx.events.append(event)
        return result

    async def check(self, key_hash: str, entitlement_id: str) -> LicenseCount | None:
        now = self._clock.now()
        async with self._store.read() as tx:
            if key_hash:
                entitlement = await tx.entitlements.find_by_key_hash(key_hash)
            else:
                entitlement = await tx.entitlements.get(entitlement_id)
            if entitlement is None:
                return None
            in_use = await tx.activations.count_live(entitlement, now, self._grace)
        return LicenseCount(entitlement, in_use, now)


async def _claimed(tx: Transaction, key_hash: str, entitlement_id: str) -> Entitlement:
    """The entitlement a credential names, locked."""
    if key_hash:
        found = await tx.entitlements.find_by_key_hash(key_hash)
        entitlement_id = "" if found is None else found.entitlement_id
    entitlement = await tx.entitlements.get(entitlement_id, lock=True) if entitlement_id else None
    if entitlement is None:
        raise invalid_license_key()
    return entitlement
