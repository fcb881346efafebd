"""Lease signing keys; private halves are sealed before they reach this module."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import signing_keys


@dataclass(frozen=True)
class StoredSigningKey:
    kid: str
    private_key_sealed: bytes
    public_key: str
    create_time: datetime
    retire_time: datetime | None = None  # set when a newer key took over signing


_NEWEST_FIRST = (signing_keys.c.create_time.desc(), signing_keys.c.kid.desc())


class SigningKeyRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._db = connection

    async def add(self, key: StoredSigningKey) -> None:
        await self._db.execute(
            insert(signing_keys).values(
                kid=key.kid,
                private_key_sealed=key.private_key_sealed,
                public_key=key.public_key,
                create_time=key.create_time,
                retire_time=key.retire_time,
            )
        )

    async def list_all(self) -> list[StoredSigningKey]:
        """Every key, retired or not, newest first (the newest unretired one signs)."""
        query = select(signing_keys).order_by(*_NEWEST_FIRST)
        return [
            StoredSigningKey(
                kid=row["kid"],
                private_key_sealed=bytes(row["private_key_sealed"]),
                public_key=row["public_key"],
                create_time=row["create_time"],
                retire_time=row["retire_time"],
            )
            for row in (await self._db.execute(query)).mappings()
        ]

    async def lock_all(self) -> None:
        """Lock every key row until commit, so that rotations run one after another
        (each then sees, and retires, the key the one before it added)."""
        await self._db.execute(select(signing_keys.c.kid).with_for_update())

    async def exists(self, kid: str) -> bool:
        query = select(signing_keys.c.kid).where(signing_keys.c.kid == kid)
        return (await self._db.execute(query)).first() is not None

    async def signing_kid(self) -> str | None:
        """The key that signs now: the newest one without a retire time."""
        query = (
            select(signing_keys.c.kid)
            .where(signing_keys.c.retire_time.is_(None))
            .order_by(*_NEWEST_FIRST)
            .limit(1)
        )
        return (await self._db.execute(query)).scalar_one_or_none()

    async def retire_all_but(self, kid: str, retire_time: datetime) -> list[str]:
        """Schedule the retirement of every other signing key; returns their ids."""
        query = select(signing_keys.c.kid).where(
            signing_keys.c.retire_time.is_(None), signing_keys.c.kid != kid
        )
        kids = sorted((await self._db.execute(query)).scalars())
        if kids:
            await self._db.execute(
                update(signing_keys)
                .where(signing_keys.c.kid.in_(kids))
                .values(retire_time=retire_time)
            )
        return kids
