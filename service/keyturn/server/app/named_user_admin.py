"""An administrator's changes to named users: remove one, change one's email.

Both are one transaction under the entitlement's row lock (the lock seat claims take),
so a removed user's device cannot take a seat between the release and the removal.
Removing deletes the row rather than marking it: the unique (entitlement, email) pair
is then free for a later order, the seat bound (`check_fits_seats`) counts one user
fewer, and the identity token and invitation code are no longer found by anything
(INVALID_LICENSE_KEY, INVALID_INVITATION). What the user was stays in the events, the
audit trail and their activations' `user_id`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from keyturn.server.domain.catalog import Dispatch
from keyturn.server.domain.entitlement import Entitlement
from keyturn.server.domain.errors import (
    FieldViolation,
    entitlement_not_found,
    named_user_exists,
    named_user_not_found,
    raise_if_invalid,
)
from keyturn.server.domain.events import EventType
from keyturn.server.domain.license_key import generate_invitation_code
from keyturn.server.domain.messages import MessageKind, OutboundMessage
from keyturn.server.domain.named_users import NamedUser, canonical_email
from keyturn.server.domain.orders import check_email, check_text
from keyturn.server.store.unit_of_work import DuplicateKeyError, Transaction

from . import audit
from .context import AppContext
from .fulfillment import entitlement_view, queue_message
from .lapses import lapse_events
from .views import EntitlementView, named_users_snapshot, new_event

MAX_USER_ID = 64


@dataclass(frozen=True)
class RemovedUser:
    entitlement: EntitlementView  # after the removal
    released_seats: int


@dataclass(frozen=True)
class ChangedUser:
    user: NamedUser
    invitation_code: str = ""  # set when the change gave the user a new code
    messages: list[OutboundMessage] = field(default_factory=list)


def user_violations(entitlement_id: str, user_id: str) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    if not entitlement_id or len(entitlement_id) > 64:
        violations.append(FieldViolation("entitlement_id", "must be 1 to 64 characters"))
    return violations + check_text("user_id", user_id, MAX_USER_ID, "user id")


async def locked_user(
    tx: Transaction, entitlement_id: str, user_id: str
) -> tuple[Entitlement, NamedUser]:
    """The entitlement, locked, and its named user `user_id`."""
    entitlement = await tx.entitlements.get(entitlement_id, lock=True)
    if entitlement is None:
        raise entitlement_not_found(entitlement_id)
    user = await tx.named_users.get(user_id)
    if user is None or user.entitlement_id != entitlement_id:
        raise named_user_not_found(user_id)
    return entitlement, user


async def _user_event(
    tx: Transaction,
    kind: EventType,
    entitlement: Entitlement,
    now: datetime,
    seats_in_use: int,
    subject: NamedUser,
) -> None:
    """The event of a change to a named user: its snapshot holds the named users as they
    stand after it and the one changed (`named_user`), so a consumer needs no read."""
    entitlement_id = entitlement.entitlement_id
    users = (await tx.named_users.list_for([entitlement_id]))[entitlement_id]
    event = new_event(kind, entitlement, now, seats_in_use, actor=audit.current_actor())
    extra = {
        "named_users": named_users_snapshot(users),
        "named_user": named_users_snapshot([subject])[0],
    }
    await tx.events.append(replace(event, snapshot={**event.snapshot, **extra}))


async def remove_named_user(ctx: AppContext, *, entitlement_id: str, user_id: str) -> RemovedUser:
    """Release the user's seats, void their credentials, delete them; one transaction."""
    raise_if_invalid(user_violations(entitlement_id, user_id))
    now = await ctx.seats.now()  # as seat claims judge lapses (store/seats.py)
    async with ctx.store.write() as tx:
        entitlement, user = await locked_user(tx, entitlement_id, user_id)
        lapsed = await tx.activations.note_lapses(entitlement, now, ctx.lapse_grace)
        in_use = await tx.activations.seats_held(entitlement_id)
        for event in lapse_events(entitlement, lapsed, now, in_use):
            await tx.events.append(event)
        released = await tx.activations.release_of_user(
            entitlement_id, user_id, now, audit.current_actor()
        )
        for activation in released:  # each with the seats in use right after it, as ReleaseSeat
            if activation.lapse_recorded_time is None:
                in_use -= 1
            await tx.events.append(
                new_event(
                    EventType.SEAT_RELEASED,
                    entitlement,
                    now,
                    in_use,
                    actor=audit.current_actor(),
                    activation_id=activation.activation_id,
                )
            )
        await tx.outbox.withdraw_invitations(user_id, "withdrawn: the named user was removed")
        await tx.named_users.remove(user_id)
        # A claim with their identity token that read them before now must not take a
        # seat after: it loses its conditional write on the entitlement (store/seats.py).
        await tx.entitlements.touch(entitlement_id, now)
        entitlement = replace(entitlement, update_time=now)
        await _user_event(tx, EventType.NAMED_USER_REMOVED, entitlement, now, in_use, user)
        await audit.record(
            tx,
            now,
            "named_user.remove",
            f"entitlements/{entitlement_id}/named_users/{user_id}",
            entitlement_id=entitlement_id,
            details={
                "user_id": user_id,
                "email": user.email,
                "released_activations": [a.activation_id for a in released],
            },
        )
        view = await entitlement_view(ctx, tx, entitlement_id)
    return RemovedUser(view, len(released))


async def change_named_user_email(
    ctx: AppContext, *, entitlement_id: str, user_id: str, email: str
) -> ChangedUser:
    """A new email for a named user. Unredeemed: a new code (the old one void), emailed
    to the new address when the entitlement sends invitations. Redeemed: the identity
    token stays valid and nothing is sent (the person already holds their credential;
    the address is for the next invitation). The same email again changes nothing."""
    violations = user_violations(entitlement_id, user_id)
    raise_if_invalid(violations + check_email("email", email, required=True))
    wanted = canonical_email(email)
    now = ctx.clock.now()
    try:
        async with ctx.store.write() as tx:
            entitlement, user = await locked_user(tx, entitlement_id, user_id)
            if user.email == wanted:
                return ChangedUser(user)
            if await tx.named_users.find_by_email(entitlement_id, wanted) is not None:
                raise named_user_exists(entitlement_id, wanted)
            return await _change(ctx, tx, entitlement, user, wanted, now)
    except DuplicateKeyError:
        # Another change or an order took the email after the check (the unique pair).
        raise named_user_exists(entitlement_id, wanted) from None


async def _change(
    ctx: AppContext,
    tx: Transaction,
    entitlement: Entitlement,
    user: NamedUser,
    email: str,
    now: datetime,
) -> ChangedUser:
    entitlement_id = entitlement.entitlement_id
    await tx.named_users.change_email(user.user_id, email)
    changed = replace(user, email=email)
    code = ""
    messages: list[OutboundMessage] = []
    if user.redeem_time is None:
        # The old code went to the old address: it must not work, nor be sent again.
        code = generate_invitation_code()
        await tx.named_users.replace_invitation(
            user.user_id, ctx.sealer.hash_secret(code), ctx.sealer.seal(code.encode())
        )
        await tx.outbox.withdraw_invitations(
            user.user_id, "withdrawn: the named user's email was changed"
        )
        if entitlement.dispatch is Dispatch.INVITATION:
            origin = await tx.entitlements.origin_order(entitlement_id)
            messages.append(
                await queue_message(
                    tx, MessageKind.INVITATION, entitlement_id, email, origin, now, user.user_id
                )
            )
    in_use = await tx.activations.count_live(entitlement, now, ctx.lapse_grace)
    await _user_event(tx, EventType.NAMED_USER_CHANGED, entitlement, now, in_use, changed)
    await audit.record(
        tx,
        now,
        "named_user.change_email",
        f"entitlements/{entitlement_id}/named_users/{user.user_id}",
        entitlement_id=entitlement_id,
        details={
            "user_id": user.user_id,
            "old_email": user.email,
            "email": email,
            "new_invitation": bool(code),
        },
    )
    return ChangedUser(changed, code, messages)
