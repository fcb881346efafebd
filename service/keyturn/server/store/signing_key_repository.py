"""Lease signing keys; private halves are sealed before they reach this module."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import signing_keys


@dataclass(frozen=True)
class StoredSigningKey:
    kid: str
    private_key_sealed: bytes
    public_key: str
    create_time: datetime
    retire_time: datetime | None = None


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

    async def list_unretired(self) -> list[StoredSigningKey]:
        """Keys not yet retired, newest first (the first one signs)."""
        query = (
            select(signing_keys)
            .where(signing_keys.c.retire_time.is_(None))
            .order_by(signing_keys.c.create_time.desc(), signing_keys.c.kid.desc())
        )
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
