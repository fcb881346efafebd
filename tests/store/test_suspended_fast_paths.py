"""PgSeats' unlocked fast paths against a suspension committed between their read and
their write: the renewal's EXTEND_LEASE and the new device's ADD_DEVICE compare the
entitlement's update_time as read, which the suspension moved, so neither writes and
the claim falls to the locked path, which refuses. (Both stores refuse a claim that
reads a suspended entitlement: tests/api/test_suspension.py.)"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select
from test_conformance import LAPSE_GRACE, NOW, FixedClock, add_entitlements, entitlement

from keyturn.server.app import suspension
from keyturn.server.app.context import AppContext
from keyturn.server.bootstrap import seat_store
from keyturn.server.domain.errors import DomainError, Reason
from keyturn.server.store.pg_seats import ADD_DEVICE, EXTEND_LEASE, PgSeats, _event_arrays
from keyturn.server.store.seats import ActivationClaim, RenewalClaim
from keyturn.server.store.tables import activations


def _claim(device: str) -> ActivationClaim:
    suffix = uuid.uuid4().hex
    return ActivationClaim(
        "acme-cad", device, "", f"act_{suffix}", f"jti_{suffix}", entitlement_id="ent_race"
    )


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_fast_path_write_read_before_the_suspension_writes_nothing(
    app: AppContext,
) -> None:
    await add_entitlements(app.store, entitlement("ent_race"))
    seats = seat_store(app.store, FixedClock(NOW), LAPSE_GRACE)
    assert isinstance(seats, PgSeats)
    held = await seats.activate(_claim("device-0001"), lambda _: [])
    as_read = held.entitlement  # what a fast path read before the suspension committed
    await suspension.suspend_entitlement(app, entitlement_id="ent_race", reason="unpaid")

    pool = await app.store.driver_pool()
    async with pool.acquire() as db:
        extended = await db.fetchval(
            EXTEND_LEASE,
            held.activation.activation_id,
            held.activation.lease_jti,
            "jti_new",
            NOW + as_read.lease_duration,
            NOW,
            as_read.update_time,
        )
        fresh = _claim("device-0002")
        added = await db.fetchval(
            ADD_DEVICE,
            fresh.new_activation_id,
            "ent_race",
            fresh.fingerprint,
            "",
            fresh.new_jti,
            NOW + as_read.lease_duration,
            NOW,
            NOW,
            None,
            1,
            as_read.update_time,
            *_event_arrays([]),
        )
    assert extended is None
    assert added is None
    async with app.store.read() as tx:
        query = select(func.count()).select_from(activations)
        assert (await tx.connection.execute(query)).scalar_one() == 1

    # The locked path the claims fall back to refuses, and keeps the seat where it is.
    renewal = RenewalClaim(
        "ent_race", held.activation.activation_id, held.activation.lease_jti, "j"
    )
    for claim in (seats.renew(renewal, lambda _: []), seats.activate(fresh, lambda _: [])):
        with pytest.raises(DomainError) as caught:
            await claim
        assert caught.value.reason is Reason.ENTITLEMENT_SUSPENDED
    async with app.store.read() as tx:
        assert await tx.activations.seats_held("ent_race") == 1
