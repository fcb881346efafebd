"""Reads for people looking at one entitlement (the operations console): everything about it
in one transaction, and the entitlement a license key opens.

The API answers these in several calls (GetEntitlement, GetOrder, ListEntitlementEvents);
a page wants them as of one moment, so they are read here together, on the read store.
"""

from __future__ import annotations

from dataclasses import dataclass

from keyturn.server.domain.errors import FieldViolation, entitlement_not_found, raise_if_invalid
from keyturn.server.domain.license_key import normalize_license_key
from keyturn.server.domain.messages import OutboundMessage
from keyturn.server.domain.seats import Activation, ActivationState, activation_state
from keyturn.server.store.order_repository import StoredOrder
from keyturn.server.store.unit_of_work import ReadStore

from .context import AppContext
from .fulfillment import check_entitlement_id, entitlement_view
from .standby_reads import found_on_standby_or_primary
from .views import EntitlementView

MAX_DEVICES = 500  # the most recently seen; an entitlement with more is a fleet, not a page


@dataclass(frozen=True)
class Device:
    activation: Activation
    state: ActivationState  # as ListActivations shows it (domain.seats.activation_state)

    @property
    def holds_seat(self) -> bool:
        return self.state is ActivationState.LIVE


@dataclass(frozen=True)
class OrderEmails:
    """An order that changed the entitlement, and the emails it queued for it."""

    source: str
    order_id: str
    order: StoredOrder | None  # None: an order row that is gone (never, unless restored)
    messages: list[OutboundMessage]


@dataclass(frozen=True)
class EntitlementDetails:
    view: EntitlementView
    devices: list[Device]
    orders: list[OrderEmails]


async def entitlement_details(ctx: AppContext, entitlement_id: str) -> EntitlementDetails:
    """The entitlement, its devices (newest first) and its orders with their emails."""
    check_entitlement_id(entitlement_id)
    now = ctx.clock.now()

    async def read(store: ReadStore) -> EntitlementDetails | None:
        async with store.read() as tx:
            entitlement = await tx.entitlements.get(entitlement_id)
            if entitlement is None:
                return None
            view = await entitlement_view(ctx, tx, entitlement_id)
            model = entitlement.license_model
            devices = [
                Device(a, activation_state(a, model, now, ctx.lapse_grace))
                for a in await tx.activations.of_entitlement(entitlement_id, MAX_DEVICES)
            ]
            keys = await tx.events.orders_of(entitlement_id)
            origin = await tx.entitlements.origin_order(entitlement_id)
            if origin not in keys:
                keys.insert(0, origin)
            orders = []
            for source, order_id in keys:
                messages = await tx.outbox.for_order(source, order_id)
                orders.append(
                    OrderEmails(
                        source,
                        order_id,
                        await tx.orders.get(source, order_id),
                        [m for m in messages if m.entitlement_id == entitlement_id],
                    )
                )
            return EntitlementDetails(view, devices, orders)

    details = await found_on_standby_or_primary(ctx, read)
    if details is None:
        raise entitlement_not_found(entitlement_id)
    return details


async def find_by_license_key(ctx: AppContext, license_key: str) -> EntitlementView | None:
    """The entitlement the key opens, found by its keyed hash as ActivateSeat finds it;
    None when no entitlement has it. A key that is malformed is bad input."""
    normalized = normalize_license_key(license_key)
    if normalized is None:
        raise_if_invalid(
            [FieldViolation("license_key", "is not a license key (mistyped, or incomplete)")]
        )
        return None
    key_hash = ctx.sealer.hash_secret(normalized)

    async def read(store: ReadStore) -> EntitlementView | None:
        async with store.read() as tx:
            found = await tx.entitlements.find_by_key_hash(key_hash)
            return None if found is None else await entitlement_view(ctx, tx, found.entitlement_id)

    return await found_on_standby_or_primary(ctx, read)
