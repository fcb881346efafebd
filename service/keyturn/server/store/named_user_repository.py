"""Named users of entitlements and their invitation codes (hashed and sealed)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from keyturn.server.domain.named_users import NamedUser

from .rows import Row
from .tables import named_users


def named_user_of(row: Row) -> NamedUser:
    return NamedUser(
        user_id=row["user_id"],
        entitlement_id=row["entitlement_id"],
        email=row["email"],
        create_time=row["create_time"],
        redeem_time=row["redeem_time"],
        identity_jti=row["identity_jti"],
        identity_used_time=row["identity_used_time"],
    )


class NamedUserRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._db = connection

    async def add(
        self,
        user: NamedUser,
        invitation_hash: str,
        invitation_sealed: bytes,
        order_source: str,
        order_id: str,
    ) -> None:
        await self._db.execute(
            insert(named_users).values(
                user_id=user.user_id,
                entitlement_id=user.entitlement_id,
                email=user.email,
                invitation_hash=invitation_hash,
                invitation_sealed=invitation_sealed,
                create_time=user.create_time,
                order_source=order_source,
                order_id=order_id,
            )
        )

    async def list_for(self, entitlement_ids: list[str]) -> dict[str, list[NamedUser]]:
        """The named users of each entitlement, by assignment time, then email."""
        found: dict[str, list[NamedUser]] = {e: [] for e in entitlement_ids}
        if entitlement_ids:
            query = (
                select(named_users)
                .where(named_users.c.entitlement_id.in_(entitlement_ids))
                .order_by(named_users.c.create_time, named_users.c.email)
            )
            for row in (await self._db.execute(query)).mappings():
                found[row["entitlement_id"]].append(named_user_of(row))
        return found

    async def sealed_invitations(self, order_source: str, order_id: str) -> dict[str, bytes]:
        """The sealed invitation code of each user an order assigned, by user id."""
        query = select(named_users.c.user_id, named_users.c.invitation_sealed).where(
            named_users.c.order_source == order_source, named_users.c.order_id == order_id
        )
        return {user_id: bytes(sealed) for user_id, sealed in await self._db.execute(query)}

    async def sealed_invitation(self, user_id: str) -> bytes | None:
        query = select(named_users.c.invitation_sealed).where(named_users.c.user_id == user_id)
        sealed = (await self._db.execute(query)).scalar_one_or_none()
        return None if sealed is None else bytes(sealed)

    async def get(self, user_id: str) -> NamedUser | None:
        query = select(named_users).where(named_users.c.user_id == user_id)
        row = (await self._db.execute(query)).mappings().first()
        return None if row is None else named_user_of(row)

    async def find_by_invitation(self, invitation_hash: str) -> NamedUser | None:
        query = select(named_users).where(named_users.c.invitation_hash == invitation_hash)
        row = (await self._db.execute(query)).mappings().first()
        return None if row is None else named_user_of(row)

    async def redeem(self, user: NamedUser, identity_jti: str, now: datetime) -> bool:
        """Mark the invitation used, once: False when another redemption won the race.
        The identity token's idle period starts now."""
        result = await self._db.execute(
            update(named_users)
            .where(named_users.c.user_id == user.user_id, named_users.c.redeem_time.is_(None))
            .values(redeem_time=now, identity_jti=identity_jti, identity_used_time=now)
        )
        return result.rowcount == 1

    async def reinvite(self, user_id: str, invitation_hash: str, invitation_sealed: bytes) -> None:
        """A new invitation code for a user who redeemed one: the identity token it gave
        stops working (none is valid until the new code is redeemed)."""
        await self._db.execute(
            update(named_users)
            .where(named_users.c.user_id == user_id)
            .values(
                invitation_hash=invitation_hash,
                invitation_sealed=invitation_sealed,
                redeem_time=None,
                identity_jti=None,
                identity_used_time=None,
            )
        )

    async def record_identity_use(
        self, user_id: str, used: datetime, recorded_before: datetime
    ) -> bool:
        """Set the last use of the user's identity token to `used` unless a use after
        `recorded_before` is stored already (domain.token_use.use_is_due, in SQL), and only
        while the user holds a redeemed token. True when it was written."""
        column = named_users.c.identity_used_time
        result = await self._db.execute(
            update(named_users)
            .where(
                named_users.c.user_id == user_id,
                named_users.c.identity_jti.is_not(None),
                or_(column.is_(None), column <= recorded_before),
            )
            .values(identity_used_time=used)
        )
        return bool(result.rowcount)

    async def find_by_email(self, entitlement_id: str, email: str) -> NamedUser | None:
        query = select(named_users).where(
            named_users.c.entitlement_id == entitlement_id, named_users.c.email == email
        )
        row = (await self._db.execute(query)).mappings().first()
        return None if row is None else named_user_of(row)

    async def remove(self, user_id: str) -> None:
        """Delete the user: their invitation code and identity token stop being found, and
        their email is free to be assigned again (the row's history is in the events, the
        audit trail and their activations' user_id)."""
        await self._db.execute(delete(named_users).where(named_users.c.user_id == user_id))

    async def change_email(self, user_id: str, email: str) -> None:
        await self._db.execute(
            update(named_users).where(named_users.c.user_id == user_id).values(email=email)
        )

    async def replace_invitation(
        self, user_id: str, invitation_hash: str, invitation_sealed: bytes
    ) -> None:
        """A new code for a user who has not redeemed theirs: the old one stops working."""
        await self._db.execute(
            update(named_users)
            .where(named_users.c.user_id == user_id, named_users.c.redeem_time.is_(None))
            .values(invitation_hash=invitation_hash, invitation_sealed=invitation_sealed)
        )
