"""One seat rule, three places: `domain.seats.holds_seat`, its SQL twin `live_condition`,
and the count kept on the entitlement (`seats_held`, less the pending lapses), as the
SQLAlchemy repositories and the backend's seat store (PgSeats' own SQL) read it.

A seeded random walk of activations, renewals, releases, lapses, sweeps and seat
removals runs through the backend's seat store; after every step the seats in use
are counted the three ways, over every activation row, and must agree.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select
from test_conformance import LAPSE_GRACE, LEASE, NOW, FixedClock, add_entitlements, entitlement

from keyturn.server.app.context import AppContext
from keyturn.server.bootstrap import seat_store
from keyturn.server.domain.catalog import LicenseModel
from keyturn.server.domain.errors import DomainError, Reason
from keyturn.server.domain.seats import holds_seat
from keyturn.server.store.activation_repository import activation_of, live_condition
from keyturn.server.store.seats import ActivationClaim, LeaseRef, RenewalClaim
from keyturn.server.store.tables import activations
from keyturn.server.store.unit_of_work import Store

from support.seats import kept_counts

DEVICES = 7
STEPS = 70
EXPECTED_REFUSALS = {Reason.SEATS_EXHAUSTED, Reason.LEASE_SUPERSEDED}


@dataclass
class Walk:
    store: Store
    entitlement_id: str
    now: datetime = NOW
    leases: dict[str, tuple[str, str]] = field(default_factory=dict)  # device -> (act, jti)

    def seats(self):  # type: ignore[no-untyped-def]
        return seat_store(self.store, FixedClock(self.now), LAPSE_GRACE)

    async def step(self, rng: random.Random) -> Reason | None:
        """One random move; the reason it was refused, if it was."""
        try:
            await self._move(rng)
        except DomainError as error:
            return error.reason
        return None

    async def _move(self, rng: random.Random) -> None:
        device = f"device-{rng.randrange(DEVICES)}"
        action = rng.choice(["activate", "activate", "renew", "renew", "release", "time", "sweep"])
        self.now += timedelta(seconds=rng.choice([1, 30, 200, 500, 900, 1000]))
        if action == "activate":
            suffix = uuid.uuid4().hex
            result = await self.seats().activate(
                ActivationClaim(
                    "acme-cad",
                    device,
                    "",
                    f"act_{suffix}",
                    f"jti_{suffix}",
                    entitlement_id=self.entitlement_id,
                ),
                lambda _: [],
            )
            self.leases[device] = (result.activation.activation_id, result.activation.lease_jti)
        elif action == "renew" and device in self.leases:
            activation_id, jti = self.leases[device]
            claim = RenewalClaim(self.entitlement_id, activation_id, jti, uuid.uuid4().hex)
            result = await self.seats().renew(claim, lambda _: [])
            self.leases[device] = (activation_id, result.activation.lease_jti)
        elif action == "release" and device in self.leases:
            lease = LeaseRef(self.entitlement_id, *self.leases[device])
            await self.seats().release(lease, lambda *_: [], "device:test")
        elif action == "sweep":
            async with self.store.write() as tx:
                found = await tx.entitlements.get(self.entitlement_id, lock=True)
                assert found is not None
                await tx.activations.note_lapses(found, self.now, LAPSE_GRACE)

    async def counts(self) -> tuple[int, int, int, int]:
        """(kept count, holds_seat over the rows, live_condition in SQL, rows held)."""
        async with self.store.read() as tx:
            found = await tx.entitlements.get(self.entitlement_id)
            assert found is not None
            kept = await tx.activations.count_live(found, self.now, LAPSE_GRACE)
            rows = (
                await tx.connection.execute(
                    select(activations).where(activations.c.entitlement_id == self.entitlement_id)
                )
            ).mappings()
            model = found.license_model
            by_rule = sum(
                holds_seat(activation_of(row), model, self.now, LAPSE_GRACE) for row in rows
            )
            by_sql = (
                await tx.connection.execute(
                    select(func.count())
                    .select_from(activations)
                    .where(
                        activations.c.entitlement_id == self.entitlement_id,
                        live_condition(model, self.now, LAPSE_GRACE),
                    )
                )
            ).scalar_one()
            kept_count = await kept_counts(tx.connection, self.entitlement_id)
        held = kept_count.held
        assert held == kept_count.unlapsed, (
            "seats_held counts the unreleased activations with no lapse"
        )
        # The seat store's own count (PostgreSQL: its raw SQL, CheckLicense's) agrees too.
        checked = await self.seats().check("", self.entitlement_id)
        assert checked is not None
        assert checked.seats_in_use == kept
        return kept, by_rule, int(by_sql), int(held)


@pytest.mark.parametrize("model", [LicenseModel.FLOATING, LicenseModel.NODE_LOCKED])
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_the_kept_count_the_rule_and_its_sql_agree_at_every_step(
    app: AppContext, model: LicenseModel, seed: int
) -> None:
    made = entitlement(seats=3, model=model, end_time=NOW + 1000 * LEASE)
    await add_entitlements(app.store, made)
    walk = Walk(app.store, made.entitlement_id)
    rng = random.Random(seed)
    seen_in_use: set[int] = set()
    for step in range(STEPS):
        if step == STEPS // 2:  # an order removes a seat below the number in use
            async with app.store.write() as tx:
                await tx.entitlements.save(replace(made, seats=2, update_time=walk.now))
        refused = await walk.step(rng)
        assert refused in EXPECTED_REFUSALS | {None}
        kept, by_rule, by_sql, _ = await walk.counts()
        assert kept == by_rule == by_sql, f"step {step}"
        seen_in_use.add(kept)
    # The walk went through empty, partly and fully used entitlements.
    assert {0, 1, 2} <= seen_in_use
