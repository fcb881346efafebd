"""Suspend and reinstate an entitlement: the reversible hold a billing connector puts
on a failed payment and lifts on payment.

A suspension refuses new seats and renewals (Entitlement.ensure_usable) and releases
nothing: devices keep their activations and named users their seats, so a reinstated
entitlement goes on where it was. Both calls are safe to repeat: asking for the state
the entitlement is already in changes nothing and records no event and no audit row.
"""

from __future__ import annotations

from dataclasses import replace

from keyturn.server.domain.catalog import Reinstate, Suspend
from keyturn.server.domain.entitlement import Status
from keyturn.server.domain.errors import (
    entitlement_cancelled,
    entitlement_not_found,
    raise_if_invalid,
)
from keyturn.server.domain.operations import EVENT_OF, hold, leaves_unchanged
from keyturn.server.domain.orders import check_reason

from . import audit
from .context import AppContext
from .fulfillment import check_entitlement_id, entitlement_view
from .views import EntitlementView, new_event


async def suspend_entitlement(
    ctx: AppContext, *, entitlement_id: str, reason: str = ""
) -> EntitlementView:
    """Suspend from now on; `reason` goes to the audit row (`payment_failed`...)."""
    check_entitlement_id(entitlement_id)
    raise_if_invalid(check_reason(reason, required=False))
    return await _hold(ctx, entitlement_id, Suspend(), {"reason": reason})


async def reinstate_entitlement(ctx: AppContext, *, entitlement_id: str) -> EntitlementView:
    """Lift the suspension: the same devices go on; a lapsed lease regains its seat on
    its next renewal while one is free (the seat rule, as for any lapse)."""
    check_entitlement_id(entitlement_id)
    return await _hold(ctx, entitlement_id, Reinstate(), {})


async def _hold(
    ctx: AppContext, entitlement_id: str, op: Suspend | Reinstate, details: dict[str, str]
) -> EntitlementView:
    now = ctx.clock.now()
    async with ctx.store.write() as tx:
        entitlement = await tx.entitlements.get(entitlement_id, lock=True)
        if entitlement is None:
            raise entitlement_not_found(entitlement_id)
        if entitlement.status(now) is Status.CANCELLED:
            raise entitlement_cancelled(entitlement_id)
        if not leaves_unchanged(entitlement, op):
            changed = replace(hold(entitlement, op, now), update_time=now)
            await tx.entitlements.save(changed)
            in_use = await tx.activations.count_live(changed, now, ctx.lapse_grace)
            await tx.events.append(
                new_event(EVENT_OF[type(op)], changed, now, in_use, actor=audit.current_actor())
            )
            await audit.record(
                tx,
                now,
                f"entitlement.{op.name}",
                f"entitlements/{entitlement_id}",
                entitlement_id=entitlement_id,
                details=details,
            )
        return await entitlement_view(ctx, tx, entitlement_id)
