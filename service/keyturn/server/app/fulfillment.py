"""Fulfil orders: every line's SKU operations in one transaction, exactly once per order."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from keyturn.server.domain.catalog import (
    MAX_SEATS,
    Create,
    Dispatch,
    Product,
    RemoveSeats,
    Sku,
)
from keyturn.server.domain.credential_expiry import has_expired
from keyturn.server.domain.entitlement import Entitlement, create_entitlement
from keyturn.server.domain.errors import (
    DomainError,
    FieldViolation,
    entitlement_not_found,
    external_reference_taken,
    invalid_request,
    named_user_not_found,
    order_conflict,
    order_not_found,
    product_not_found,
    raise_if_invalid,
    sku_not_found,
    transaction_conflict,
)
from keyturn.server.domain.events import EventType
from keyturn.server.domain.ids import new_id
from keyturn.server.domain.license_key import generate_invitation_code, generate_license_key
from keyturn.server.domain.messages import MessageKind, OutboundMessage
from keyturn.server.domain.named_users import (
    NamedUser,
    check_fits_seats,
    identity_expire_time,
    new_emails,
)
from keyturn.server.domain.operations import EVENT_OF, LineContext, apply_operation
from keyturn.server.domain.orders import (
    LineResult,
    OrderLine,
    OrderRequest,
    check_order_key,
    check_text,
    validate_order,
)
from keyturn.server.store.entitlement_repository import StoredKey
from keyturn.server.store.order_repository import StoredOrder
from keyturn.server.store.unit_of_work import DuplicateKeyError, ReadStore, Transaction

from . import audit
from .context import AppContext
from .standby_reads import found_on_standby_or_primary
from .views import EntitlementView, new_event


@dataclass(frozen=True)
class FulfilledOrder:
    order: StoredOrder
    entitlements: list[EntitlementView]
    replayed: bool
    messages: list[OutboundMessage] = field(default_factory=list)


@dataclass(frozen=True)
class OrderView:
    """A stored order and the emails queued for it, with their delivery state."""

    order: StoredOrder
    messages: list[OutboundMessage]


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
            if stored is None:
                # Another order attached one of this order's external references (the
                # other unique key an order can collide on) after this one checked it.
                # A conflict: the call runs again (app/conflicts.py) and then finds
                # the reference taken, and answers which one and on which line.
                raise transaction_conflict(attempts=1) from None
            return await _replay(ctx, tx, stored, fingerprint)


async def _apply(
    ctx: AppContext, tx: Transaction, order: OrderRequest, fingerprint: str
) -> FulfilledOrder:
    now = ctx.clock.now()
    # Claim the idempotency key first, so that concurrent replays wait on it.
    await tx.orders.add(StoredOrder(order, fingerprint, (), now))
    skus = await tx.catalog.get_skus({line.sku_id for line in order.lines})
    await _lock_targets(tx, order)
    results: list[LineResult] = []
    keys: dict[str, str] = {}
    codes: dict[str, str] = {}  # invitation codes of the users this order assigns
    latest: dict[str, Entitlement] = {}  # each entitlement as the order leaves it
    for index, line in enumerate(order.lines):
        sku = skus.get(line.sku_id)
        if sku is None:
            raise sku_not_found(line.sku_id, line=index)
        product = await tx.catalog.get_product(sku.product_id)
        if product is None:
            raise product_not_found(sku.product_id)
        entitlement = await _apply_line(ctx, tx, order, index, product, sku, now, keys)
        await _assign_named_users(ctx, tx, order, index, sku, entitlement, now, codes)
        names = tuple(op.name for op in sku.operations)
        results.append(LineResult(index, sku.sku_id, entitlement.entitlement_id, names))
        latest[entitlement.entitlement_id] = entitlement
    views = [
        await _view(ctx, tx, entitlement, keys.get(entitlement_id, ""), codes)
        for entitlement_id, entitlement in latest.items()
    ]
    stored = StoredOrder(order, fingerprint, tuple(results), now)
    await tx.orders.set_results(order.source, order.order_id, stored.results)
    await _record_order(tx, order, results, now)
    messages = await tx.outbox.for_order(order.source, order.order_id)
    return FulfilledOrder(stored, views, replayed=False, messages=messages)


async def _record_order(
    tx: Transaction, order: OrderRequest, results: list[LineResult], now: datetime
) -> None:
    """One audit row per entitlement the order created or changed, so the trail of an
    entitlement holds every order that touched it; a replay writes none."""
    lines: dict[str, list[LineResult]] = {}
    for result in results:
        lines.setdefault(result.entitlement_id, []).append(result)
    for entitlement_id, touched in lines.items():
        await audit.record(
            tx,
            now,
            "order.fulfil",
            f"orders/{order.source}/{order.order_id}",
            entitlement_id=entitlement_id,
            details={
                "lines": [r.line_index for r in touched],
                "skus": [r.sku_id for r in touched],
                "operations": sorted({name for r in touched for name in r.operations}),
            },
        )


async def _lock_targets(tx: Transaction, order: OrderRequest) -> None:
    """Lock every existing entitlement the order names, in id order, before changing any.

    Two orders naming the same entitlements in opposite orders would otherwise
    deadlock on PostgreSQL; taking the locks in one global order cannot.
    """
    ids = {line.entitlement_id for line in order.lines if line.entitlement_id}
    for line in order.lines:
        if not line.entitlement_id and line.external_reference:
            found = await tx.entitlements.find_by_reference(line.external_reference)
            if found is not None:
                ids.add(found.entitlement_id)
    await tx.entitlements.lock_in_order(ids)


async def _apply_line(
    ctx: AppContext,
    tx: Transaction,
    order: OrderRequest,
    index: int,
    product: Product,
    sku: Sku,
    now: datetime,
    keys: dict[str, str],
) -> Entitlement:
    """Apply one line's operations, each recorded as an event; the entitlement after them."""
    line = order.lines[index]
    operations = sku.operations
    changes: list[tuple[EventType, Entitlement]] = []
    if sku.creates:
        entitlement, license_key = await _create(ctx, tx, order, index, product, sku, now)
        keys[entitlement.entitlement_id] = license_key
        in_use = 0
        changes.append((EventType.CREATED, entitlement))
        operations = operations[1:]
    else:
        entitlement = await _target(tx, index, line, sku)
        in_use = await tx.activations.count_live(entitlement, now, ctx.lapse_grace)
    context = LineContext(index, line.quantity, product, now)
    for op in operations:
        changed = apply_operation(entitlement, op, context)
        if changed is entitlement:
            continue  # it leaves the entitlement unchanged (a second suspend): no event
        entitlement = changed
        changes.append((EVENT_OF[type(op)], entitlement))
    for kind, state in changes:
        event = new_event(
            kind,
            state,
            now,
            in_use,
            actor=audit.current_actor(),
            order_source=order.source,
            order_id=order.order_id,
        )
        await tx.events.append(event)
    if operations:
        await tx.entitlements.save(entitlement)
    return entitlement


async def _assign_named_users(
    ctx: AppContext,
    tx: Transaction,
    order: OrderRequest,
    index: int,
    sku: Sku,
    entitlement: Entitlement,
    now: datetime,
    codes: dict[str, str],
) -> None:
    """Give each new email of the line a seat and an invitation code; never more than seats."""
    line = order.lines[index]
    removes_seats = any(isinstance(op, RemoveSeats) for op in sku.operations)
    if not line.named_user_emails and not removes_seats:
        return
    entitlement_id = entitlement.entitlement_id
    assigned = (await tx.named_users.list_for([entitlement_id]))[entitlement_id]
    fresh = new_emails({user.email for user in assigned}, line.named_user_emails)
    check_fits_seats(entitlement, len(assigned) + len(fresh), index)
    for email in fresh:
        user = NamedUser(new_id("usr", now), entitlement_id, email, now)
        code = generate_invitation_code()
        await tx.named_users.add(
            user,
            ctx.sealer.hash_secret(code),
            ctx.sealer.seal(code.encode()),
            order.source,
            order.order_id,
        )
        codes[user.user_id] = code
        if entitlement.dispatch is Dispatch.INVITATION:
            await queue_message(
                tx, MessageKind.INVITATION, entitlement_id, email, order.key, now, user.user_id
            )


async def queue_message(
    tx: Transaction,
    kind: MessageKind,
    entitlement_id: str,
    to_email: str,
    origin: tuple[str, str],
    now: datetime,
    user_id: str | None = None,
) -> OutboundMessage:
    """Write an email to the outbox, in the transaction of the change it announces.
    `origin` is the order (source, id) whose GetOrder shows it."""
    source, order_id = origin
    message = OutboundMessage(
        message_id=new_id("msg", now),
        kind=kind,
        entitlement_id=entitlement_id,
        to_email=to_email,
        order_source=source,
        order_id=order_id,
        create_time=now,
        user_id=user_id,
        next_attempt_time=now,
    )
    await tx.outbox.add(message)
    return message


def _line_violation(index: int, field: str, text: str) -> DomainError:
    return invalid_request([FieldViolation(f"lines[{index}].{field}", text)])


async def _target(tx: Transaction, index: int, line: OrderLine, sku: Sku) -> Entitlement:
    """The entitlement a changing line names, locked until commit."""
    reference = line.external_reference
    if line.entitlement_id:
        found = await tx.entitlements.get(line.entitlement_id, lock=True)
        field = "entitlement_id"
    elif reference:
        found = await tx.entitlements.find_by_reference(reference, lock=True)
        field = "external_reference"
    else:
        raise _line_violation(
            index,
            "entitlement_id",
            f"SKU {sku.sku_id!r} changes an entitlement: give entitlement_id or external_reference",
        )
    if found is None and line.entitlement_id:
        raise entitlement_not_found(line.entitlement_id, line=index)
    if found is None:
        raise entitlement_not_found(external_reference=reference, line=index)
    if found.product_id != sku.product_id:
        raise _line_violation(
            index,
            field,
            f"names an entitlement of product {found.product_id!r}; "
            f"SKU {sku.sku_id!r} is for {sku.product_id!r}",
        )
    if line.entitlement_id and reference and reference not in found.external_references:
        await _check_reference_free(tx, index, reference)
        await tx.entitlements.attach_reference(reference, found.entitlement_id)
        found = replace(
            found, external_references=tuple(sorted({*found.external_references, reference}))
        )
    return found


async def _check_reference_free(tx: Transaction, index: int, reference: str) -> None:
    if await tx.entitlements.reference_exists(reference):
        raise external_reference_taken(reference, line=index)


async def _create(
    ctx: AppContext,
    tx: Transaction,
    order: OrderRequest,
    index: int,
    product: Product,
    sku: Sku,
    now: datetime,
) -> tuple[Entitlement, str]:
    """A new entitlement and its license key (stored hashed and sealed)."""
    op = sku.operations[0]
    assert isinstance(op, Create)
    line = order.lines[index]
    if line.entitlement_id:
        raise _line_violation(
            index, "entitlement_id", f"must be empty: SKU {sku.sku_id!r} creates an entitlement"
        )
    if line.external_reference:
        await _check_reference_free(tx, index, line.external_reference)
    if op.seats_per_unit * line.quantity > MAX_SEATS:
        raise _line_violation(
            index, "quantity", f"would make more than {MAX_SEATS} seats on one entitlement"
        )
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
    if op.dispatch is Dispatch.LICENSE_KEY and order.delivery_email:
        await queue_message(
            tx,
            MessageKind.LICENSE_KEY,
            entitlement.entitlement_id,
            order.delivery_email,
            order.key,
            now,
        )
    return entitlement, license_key


async def _replay(
    ctx: AppContext, tx: Transaction, stored: StoredOrder, fingerprint: str
) -> FulfilledOrder:
    if stored.fingerprint != fingerprint:
        raise order_conflict(stored.request.source, stored.request.order_id)
    views: dict[str, EntitlementView] = {}
    request = stored.request
    sealed_codes = await tx.named_users.sealed_invitations(request.source, request.order_id)
    codes = {user: ctx.sealer.unseal(sealed).decode() for user, sealed in sealed_codes.items()}
    for result in stored.results:
        if result.entitlement_id in views:
            continue
        key = ""
        if result.operations and result.operations[0] == Create.name:
            sealed = await tx.entitlements.sealed_key(result.entitlement_id)
            key = ctx.sealer.unseal(sealed).decode() if sealed else ""
        views[result.entitlement_id] = await entitlement_view(
            ctx, tx, result.entitlement_id, license_key=key, invitation_codes=codes
        )
    messages = await tx.outbox.for_order(request.source, request.order_id)
    return FulfilledOrder(stored, list(views.values()), replayed=True, messages=messages)


async def entitlement_view(
    ctx: AppContext,
    tx: Transaction,
    entitlement_id: str,
    license_key: str = "",
    invitation_codes: dict[str, str] | None = None,
) -> EntitlementView:
    entitlement = await tx.entitlements.get(entitlement_id)
    if entitlement is None:
        raise entitlement_not_found(entitlement_id)
    return await _view(ctx, tx, entitlement, license_key, invitation_codes)


def entitlement_id_violations(entitlement_id: str) -> list[FieldViolation]:
    if not entitlement_id or len(entitlement_id) > 64:
        return [FieldViolation("entitlement_id", "must be 1 to 64 characters")]
    return []


def check_entitlement_id(entitlement_id: str) -> None:
    raise_if_invalid(entitlement_id_violations(entitlement_id))


async def _view(
    ctx: AppContext,
    tx: Transaction,
    entitlement: Entitlement,
    license_key: str = "",
    invitation_codes: dict[str, str] | None = None,
) -> EntitlementView:
    now = ctx.clock.now()
    in_use = await tx.activations.count_live(entitlement, now, ctx.lapse_grace)
    users = (await tx.named_users.list_for([entitlement.entitlement_id]))[
        entitlement.entitlement_id
    ]
    given = invitation_codes or {}
    codes = {u.user_id: given[u.user_id] for u in users if u.user_id in given}
    return EntitlementView(
        entitlement, entitlement.status(now), in_use, license_key, tuple(users), codes
    )


async def get_entitlement(ctx: AppContext, entitlement_id: str) -> EntitlementView:
    check_entitlement_id(entitlement_id)

    async def read(store: ReadStore) -> EntitlementView | None:
        async with store.read() as tx:
            entitlement = await tx.entitlements.get(entitlement_id)
            return None if entitlement is None else await _view(ctx, tx, entitlement)

    view = await found_on_standby_or_primary(ctx, read)
    if view is None:
        raise entitlement_not_found(entitlement_id)
    return view


async def get_order(ctx: AppContext, source: str, order_id: str) -> OrderView:
    raise_if_invalid(check_order_key(source, order_id))

    async def read(store: ReadStore) -> OrderView | None:
        async with store.read() as tx:
            stored = await tx.orders.get(source, order_id)
            if stored is None:
                return None
            return OrderView(stored, await tx.outbox.for_order(source, order_id))

    view = await found_on_standby_or_primary(ctx, read)
    if view is None:
        raise order_not_found(source, order_id)
    return view


def _identity_expired(ctx: AppContext, user: NamedUser, now: datetime) -> bool:
    ends = identity_expire_time(user, ctx.identity_idle_limit)
    return user.identity_jti is not None and has_expired(ends, now)


async def resend_credentials(
    ctx: AppContext, entitlement_id: str, user_id: str = ""
) -> list[OutboundMessage]:
    """Queue the credential emails of an entitlement again: its license key, or the
    invitations its named users have not redeemed yet (with their same codes) and new
    invitations for those whose identity token expired (a new code: the way back for a
    user told IDENTITY_TOKEN_EXPIRED). With `user_id`, only that user's invitation, whatever
    the entitlement's dispatch (the caller asked for that person)."""
    check_entitlement_id(entitlement_id)
    if user_id:
        raise_if_invalid(check_text("user_id", user_id, 64, "user id"))
    now = ctx.clock.now()
    async with ctx.store.write() as tx:
        entitlement = await tx.entitlements.get(entitlement_id, lock=True)
        if entitlement is None:
            raise entitlement_not_found(entitlement_id)
        origin = await tx.entitlements.origin_order(entitlement_id)
        queued: list[OutboundMessage] = []
        if user_id or entitlement.dispatch is Dispatch.INVITATION:
            users = (await tx.named_users.list_for([entitlement_id]))[entitlement_id]
            if user_id:
                users = [user for user in users if user.user_id == user_id]
                if not users:
                    raise named_user_not_found(user_id)
            for user in users:
                if _identity_expired(ctx, user, now):
                    code = generate_invitation_code()
                    await tx.named_users.reinvite(
                        user.user_id, ctx.sealer.hash_secret(code), ctx.sealer.seal(code.encode())
                    )
                elif user.redeem_time is not None:
                    continue
                queued.append(
                    await queue_message(
                        tx,
                        MessageKind.INVITATION,
                        entitlement_id,
                        user.email,
                        origin,
                        now,
                        user.user_id,
                    )
                )
        elif entitlement.ship_to_email:
            queued.append(
                await queue_message(
                    tx,
                    MessageKind.LICENSE_KEY,
                    entitlement_id,
                    entitlement.ship_to_email,
                    origin,
                    now,
                )
            )
        resource = f"entitlements/{entitlement_id}"
        await audit.record(
            tx,
            now,
            "credentials.resend",
            f"{resource}/named_users/{user_id}" if user_id else resource,
            entitlement_id=entitlement_id,
            details={"user_id": user_id, "messages": [m.message_id for m in queued]},
        )
    return queued
