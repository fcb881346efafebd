"""Devices of entitlements: list them, and take a seat back from one (DeactivateSeat).

A deactivation frees the seat at once, as the device's own release would, and
marks the activation so that its next renewal is refused with SEAT_DEACTIVATED
(a device that was lost, or that its user no longer has). The device may
activate again with its key: that is a new claim like any other. A SKU may limit
deactivations per period (domain/deactivation_limits.py); they are counted under
the entitlement's row lock, so concurrent ones cannot pass the limit together.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from keyturn.server.domain.catalog import LicenseModel
from keyturn.server.domain.errors import (
    FieldViolation,
    activation_not_found,
    entitlement_not_found,
    raise_if_invalid,
)
from keyturn.server.domain.events import EventType
from keyturn.server.domain.orders import check_reason, check_text
from keyturn.server.domain.seats import Activation, ActivationState, activation_state
from keyturn.server.store.activation_repository import ActivationFilter
from keyturn.server.store.deactivation_counts import ensure_within_limit
from keyturn.server.store.unit_of_work import ReadStore

from . import audit
from .context import AppContext
from .lapses import lapse_events
from .paging import next_page_token, page_of, page_request
from .standby_reads import found_on_standby_or_primary
from .views import new_event

MAX_ID = 64
MAX_CUSTOMER_ID = 128  # as orders take it


@dataclass(frozen=True)
class ActivationView:
    """An activation with what is computed for it when read."""

    activation: Activation
    state: ActivationState
    node_locked: bool


def _check_id(path: str, value: str, what: str, *, required: bool) -> list[FieldViolation]:
    if not value and not required:
        return []
    return check_text(path, value, MAX_ID, what)


def _list_scope(where: ActivationFilter) -> str:
    """Ties a page token to its filters: a token of another query is refused."""
    locked = "" if where.node_locked is None else str(where.node_locked)
    states = ",".join(sorted(s.value for s in where.states))
    parts = (where.entitlement_id, where.customer_id, states, where.user_id, locked)
    return "activations:" + "\x1f".join(parts)


async def list_activations(
    ctx: AppContext,
    *,
    entitlement_id: str = "",
    customer_id: str = "",
    states: tuple[ActivationState, ...] = (),
    user_id: str = "",
    node_locked: bool | None = None,
    page_size: int = 0,
    page_token: str = "",
) -> tuple[list[ActivationView], str]:
    """The devices of one entitlement or of every entitlement of a customer, oldest first.
    ENTITLEMENT_NOT_FOUND for an entitlement id that names none."""
    violations = _check_id("entitlement_id", entitlement_id, "entitlement id", required=False)
    if customer_id:
        violations += check_text("customer_id", customer_id, MAX_CUSTOMER_ID, "customer id")
    violations += _check_id("user_id", user_id, "user id", required=False)
    if not entitlement_id and not customer_id:
        violations.append(
            FieldViolation("entitlement_id", "an entitlement id or a customer id is required")
        )
    raise_if_invalid(violations)
    where = ActivationFilter(
        entitlement_id=entitlement_id,
        customer_id=customer_id,
        states=tuple(dict.fromkeys(states)),
        user_id=user_id,
        node_locked=node_locked,
    )
    scope = _list_scope(where)
    page = page_request(page_size, page_token, scope)
    now = ctx.clock.now()

    async def read(store: ReadStore) -> list[tuple[Activation, LicenseModel]] | None:
        async with store.read() as tx:
            if entitlement_id and await tx.entitlements.get(entitlement_id) is None:
                return None
            return await tx.activations.matching(
                where, now=now, lapse_grace=ctx.lapse_grace, after=page.after, limit=page.size + 1
            )

    found = await found_on_standby_or_primary(ctx, read)
    if found is None:
        raise entitlement_not_found(entitlement_id)
    items, more = page_of(found, page.size)
    views = [
        ActivationView(
            activation,
            activation_state(activation, model, now, ctx.lapse_grace),
            model is LicenseModel.NODE_LOCKED,
        )
        for activation, model in items
    ]
    last = items[-1][0].activation_id if more else None
    return views, next_page_token(last, scope)


async def deactivate_seat(
    ctx: AppContext, *, entitlement_id: str, activation_id: str, reason: str
) -> ActivationView:
    """Take the seat back from a device now, in one transaction with its event and audit
    row. An activation released or deactivated already is answered as it is, and nothing
    is written. ACTIVATION_NOT_FOUND, DEACTIVATION_LIMIT_REACHED."""
    violations = _check_id("entitlement_id", entitlement_id, "entitlement id", required=True)
    violations += _check_id("activation_id", activation_id, "activation id", required=True)
    violations += check_reason(reason, required=True)
    raise_if_invalid(violations)
    now = await ctx.seats.now()  # the seat decisions' clock: the database's on PostgreSQL
    async with ctx.store.write() as tx:
        entitlement = await tx.entitlements.get(entitlement_id, lock=True)
        if entitlement is None:
            raise entitlement_not_found(entitlement_id)
        model = entitlement.license_model
        current = await tx.activations.get(activation_id)
        if current is None or current.entitlement_id != entitlement_id:
            raise activation_not_found(activation_id)
        if current.released_time is not None:
            state = activation_state(current, model, now, ctx.lapse_grace)
            return ActivationView(current, state, model is LicenseModel.NODE_LOCKED)
        await ensure_within_limit(tx, entitlement, now)
        lapsed = await tx.activations.note_lapses(entitlement, now, ctx.lapse_grace)
        if any(lapse.activation_id == current.activation_id for lapse in lapsed):
            current = replace(current, lapse_recorded_time=now)
        released = replace(
            current,
            released_time=now,
            released_by=audit.current_actor(),
            release_reason=reason,
            deactivated=True,
        )
        await tx.activations.deactivate(released)
        in_use = await tx.activations.seats_held(entitlement_id)
        held_before = in_use + (1 if current.lapse_recorded_time is None else 0)
        for event in lapse_events(entitlement, lapsed, now, held_before):
            await tx.events.append(event)
        await tx.events.append(
            new_event(
                EventType.SEAT_DEACTIVATED,
                entitlement,
                now,
                in_use,
                actor=audit.current_actor(),
                activation_id=activation_id,
            )
        )
        await audit.record(
            tx,
            now,
            "seat.deactivate",
            f"entitlements/{entitlement_id}/activations/{activation_id}",
            entitlement_id=entitlement_id,
            details={"reason": reason, "fingerprint": current.fingerprint},
        )
    return ActivationView(released, ActivationState.DEACTIVATED, model is LicenseModel.NODE_LOCKED)
