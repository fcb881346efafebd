"""One state rule for ListActivations, two places: `domain.seats.activation_state` (built on
`holds_seat`) and its SQL twin `state_condition` (built on `live_condition`), on the same
rows at the same instants.

Every combination of license model, lease expiry around the lapse grace, released or
not, deactivated or not and lapse recorded or not is written, then each is judged by
both at instants on either side of every edge.
"""

from __future__ import annotations

import itertools
from datetime import timedelta

from sqlalchemy import insert
from test_conformance import LAPSE_GRACE, NOW, US, add_entitlements, entitlement

from keyturn.server.app.context import AppContext
from keyturn.server.domain.catalog import LicenseModel
from keyturn.server.domain.seats import Activation, ActivationState, activation_state
from keyturn.server.store.tables import activations
from keyturn.server.store.unit_of_work import Store

EXPIRIES = (-LAPSE_GRACE - US, -LAPSE_GRACE, -LAPSE_GRACE + US, timedelta(0), timedelta(minutes=5))
INSTANTS = (NOW - timedelta(minutes=1), NOW, NOW + US, NOW + LAPSE_GRACE, NOW + timedelta(hours=1))


def activations_of(model: LicenseModel, entitlement_id: str) -> list[Activation]:
    made = []
    for i, (expiry, released, deactivated, lapse_recorded) in enumerate(
        itertools.product(EXPIRIES, (False, True), (False, True), (False, True))
    ):
        if deactivated and not released:
            continue  # a deactivation always releases
        made.append(
            Activation(
                activation_id=f"act_{model.value}_{i:03}",
                entitlement_id=entitlement_id,
                fingerprint=f"device-{i:04}",
                label="",
                lease_jti=f"jti_{model.value}_{i}",
                lease_expire_time=NOW + expiry,
                create_time=NOW - timedelta(days=1),
                released_time=NOW - timedelta(hours=1) if released else None,
                deactivated=deactivated,
                lapse_recorded_time=NOW - timedelta(hours=1) if lapse_recorded else None,
            )
        )
    return made


async def write(store: Store, rows: list[Activation]) -> None:
    """The rows as they are, whatever the seat transactions would have made of them."""
    async with store.write() as tx:
        await tx.connection.execute(
            insert(activations),
            [
                {
                    "activation_id": a.activation_id,
                    "entitlement_id": a.entitlement_id,
                    "fingerprint": a.fingerprint,
                    "label": a.label,
                    "lease_jti": a.lease_jti,
                    "lease_expire_time": a.lease_expire_time,
                    "create_time": a.create_time,
                    "update_time": a.create_time,
                    "released_time": a.released_time,
                    "lapse_recorded_time": a.lapse_recorded_time,
                    "deactivated": a.deactivated,
                }
                for a in rows
            ],
        )


async def test_the_state_rule_and_its_sql_agree_on_every_case(app: AppContext) -> None:
    floating = entitlement("ent_f", model=LicenseModel.FLOATING)
    locked = entitlement("ent_n", model=LicenseModel.NODE_LOCKED)
    await add_entitlements(app.store, floating, locked)
    cases = {
        LicenseModel.FLOATING: activations_of(LicenseModel.FLOATING, "ent_f"),
        LicenseModel.NODE_LOCKED: activations_of(LicenseModel.NODE_LOCKED, "ent_n"),
    }
    for rows in cases.values():
        await write(app.store, rows)
    seen: set[ActivationState] = set()
    for now in INSTANTS:
        async with app.store.read() as tx:
            ids = [a.activation_id for rows in cases.values() for a in rows]
            by_sql = await tx.activations.states_of(ids, now, LAPSE_GRACE)
            stored = {a: await tx.activations.get(a) for a in ids}
        for model, rows in cases.items():
            for row in rows:
                kept = stored[row.activation_id]
                assert kept is not None
                by_rule = activation_state(kept, model, now, LAPSE_GRACE)
                assert by_sql[row.activation_id] is by_rule, (row, now)
                seen.add(by_rule)
    assert seen == set(ActivationState)
