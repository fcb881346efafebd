"""Fulfil orders: every line's SKU operations in one transaction, exactly once per order."""

from __future__ import annotations

from dataclasses import dataclass

from keyturn.server.domain.catalog import MAX_SEATS, Create, Sku
from keyturn.server.domain.entitlement import Entitlement, create_entitlement
from keyturn.server.domain.errors import DomainError, FieldViolation, Reason, raise_if_invalid
from keyturn.server.domain.ids import new_id
from keyturn.server.domain.license_key import generate_license_key
from keyturn.server.domain.orders import (
    LineResult,
    OrderLine,
    OrderRequest,
    check_order_key,
    validate_order,
)
from keyturn.server.store.entitlement_repository import StoredKey
from keyturn.server.store.event_repository import NewEvent
from keyturn.server.store.order_repository import StoredOrder
from keyturn.server.store.unit_of_work import DuplicateKeyError, Transaction

from .catalog import missing_product
from .context import AppContext
from .views import EntitlementView, snapshot


@dataclass(frozen=True)
class FulfilledOrder:
    order: StoredOrder
    entitlements: list[EntitlementView]
    replayed: bool


def _order_conflict(order: OrderRequest) -> DomainError:
    return DomainError(
        Reason.ORDER_CONFLICT,
        f"order {order.source}/{order.order_id} was already fulfilled with different content",
        {"source": order.source, "order_id": order.order_id},
    )


async def fulfil_order(ctx: AppContext, order: OrderRequest) -> FulfilledOrder:
    """Apply the order, or return the stored result when it was applied before."""
    raise_if_invalid(validate_order(order))
    fingerprint = order.fingerprint()
    try:
        async with ctx.store.write() as tx:
            stored = await tx.orders.get(order.source, order.order_id)
            if stored is not None:
                return await _replay(ctx, tx, stored, fingerprint)
            return await _apply(ctx, tx, order, fingerprint)
    except DuplicateKeyError:
        # A concurrent replay committed the same order first: answer with its result.
        async with ctx.store.read() as tx:
            stored = await tx.orders.get(order.source, order.order_id)
            if stored is None:  # the other unique key an order can collide on
                raise DomainError(
                    Reason.EXTERNAL_REFERENCE_TAKEN,
                    "an external reference of this order was attached concurrently by another",
                    {"source": order.source, "order_id": order.order_id},
                ) from None
            return await _replay(ctx, tx, stored, fingerprint)


async def _apply(
    ctx: AppContext, tx: Transaction, order: OrderRequest, fingerprint: str
) -> FulfilledOrder:
    now = ctx.clock.now()
    # Claim the idempotency key first, so that concurrent replays wait on it.
    await tx.orders.add(StoredOrder(order, fingerprint, (), now))
    skus = await tx.catalog.get_skus({line.sku_id for line in order.lines})
    results: list[LineResult] = []
    views: dict[str, EntitlementView] = {}
    for index, line in enumerate(order.lines):
        sku = skus.get(line.sku_id)
        if sku is None:
            raise DomainError(
                Reason.SKU_NOT_FOUND,
                f"line {index}: no SKU {line.sku_id!r}",
                {"sku_id": line.sku_id, "line": str(index)},
            )
        if not sku.creates:
            raise _not_yet(sku.operations[0].name)
        view = await _create(ctx, tx, order, index, line, sku)
        views[view.entitlement.entitlement_id] = view
        results.append(
            LineResult(index, sku.sku_id, view.entitlement.entitlement_id, (Create.name,))
        )
    stored = StoredOrder(order, fingerprint, tuple(results), now)
    await tx.orders.set_results(order.source, order.order_id, stored.results)
    return FulfilledOrder(stored, list(views.values()), replayed=False)


def _not_yet(operation: str) -> DomainError:
    return DomainError(
        Reason.NOT_IMPLEMENTED,
        f"the {operation!r} operation is not available in this version",
        {"operation": operation},
    )


async def _create(
    ctx: AppContext, tx: Transaction, order: OrderRequest, index: int, line: OrderLine, sku: Sku
) -> EntitlementView:
    op = sku.operations[0]
    assert isinstance(op, Create)
    if len(sku.operations) > 1:
        raise _not_yet(sku.operations[1].name)
    if line.entitlement_id:
        raise DomainError(
            Reason.INVALID_REQUEST,
            f"line {index}: SKU {sku.sku_id!r} creates an entitlement and takes no target",
            {"field": f"lines[{index}].entitlement_id"},
            [FieldViolation(f"lines[{index}].entitlement_id", "must be empty for a create SKU")],
        )
    if line.external_reference and await tx.entitlements.reference_exists(line.external_reference):
        raise DomainError(
            Reason.EXTERNAL_REFERENCE_TAKEN,
            f"line {index}: external reference {line.external_reference!r} is already in use",
            {"external_reference": line.external_reference},
        )
    if op.seats_per_unit * line.quantity > MAX_SEATS:
        path = f"lines[{index}].quantity"
        raise_if_invalid(
            [FieldViolation(path, f"would make more than {MAX_SEATS} seats on one entitlement")]
        )
    product = await tx.catalog.get_product(sku.product_id)
    if product is None:
        raise missing_product(sku.product_id)
    now = ctx.clock.now()
    entitlement = create_entitlement(
        op,
        product,
        line.quantity,
        order.customer,
        order.delivery_email,
        now,
        new_id("ent", now),
        line.external_reference,
    )
    license_key = generate_license_key()
    stored_key = StoredKey(
        key_hash=ctx.sealer.hash_secret(license_key),
        key_sealed=ctx.sealer.seal(license_key.encode()),
    )
    await tx.entitlements.add(entitlement, stored_key, order.source, order.order_id)
    await tx.events.append(
        NewEvent(
            entitlement_id=entitlement.entitlement_id,
            type="created",
            create_time=now,
            snapshot=snapshot(entitlement, now),
            order_source=order.source,
            order_id=order.order_id,
        )
    )
    return EntitlementView(entitlement, entitlement.status(now), 0, license_key)


async def _replay(
    ctx: AppContext, tx: Transaction, stored: StoredOrder, fingerprint: str
) -> FulfilledOrder:
    if stored.fingerprint != fingerprint:
        raise _order_conflict(stored.request)
    views: dict[str, EntitlementView] = {}
    for result in stored.results:
        if result.entitlement_id in views:
            continue
        key = ""
        if result.operations and result.operations[0] == Create.name:
            sealed = await tx.entitlements.sealed_key(result.entitlement_id)
            key = ctx.sealer.unseal(sealed).decode() if sealed else ""
        views[result.entitlement_id] = await entitlement_view(
            ctx, tx, result.entitlement_id, license_key=key
        )
    return FulfilledOrder(stored, list(views.values()), replayed=True)


async def entitlement_view(
    ctx: AppContext, tx: Transaction, entitlement_id: str, license_key: str = ""
) -> EntitlementView:
    entitlement = await tx.entitlements.get(entitlement_id)
    if entitlement is None:
        raise DomainError(
            Reason.ENTITLEMENT_NOT_FOUND,
            f"no entitlement {entitlement_id!r}",
            {"entitlement_id": entitlement_id},
        )
    return await _view(ctx, tx, entitlement, license_key)


async def _view(
    ctx: AppContext, tx: Transaction, entitlement: Entitlement, license_key: str = ""
) -> EntitlementView:
    now = ctx.clock.now()
    in_use = await tx.activations.count_live(entitlement, now, ctx.lapse_grace)
    return EntitlementView(entitlement, entitlement.status(now), in_use, license_key)


async def get_entitlement(ctx: AppContext, entitlement_id: str) -> EntitlementView:
    if not entitlement_id or len(entitlement_id) > 64:
        raise_if_invalid([FieldViolation("entitlement_id", "must be 1 to 64 characters")])
    async with ctx.store.read() as tx:
        return await entitlement_view(ctx, tx, entitlement_id)


async def get_order(ctx: AppContext, source: str, order_id: str) -> StoredOrder:
    raise_if_invalid(check_order_key(source, order_id))
    async with ctx.store.read() as tx:
        stored = await tx.orders.get(source, order_id)
    if stored is None:
        raise DomainError(
            Reason.ORDER_NOT_FOUND,
            f"no order {source}/{order_id}",
            {"source": source, "order_id": order_id},
        )
    return stored
