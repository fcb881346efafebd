"""API tokens of order connectors, stored only as hashes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import RowMapping, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import api_tokens


@dataclass(frozen=True)
class ApiToken:
    token_id: str
    scopes: frozenset[str]
    description: str
    create_time: datetime
    revoke_time: datetime | None = None
    last_used_time: datetime | None = None  # None: never used (recorded once a minute)
    expire_time: datetime | None = None  # None: never expires


class TokenRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._db = connection

    async def add(self, token: ApiToken, token_hash: str) -> None:
        await self._db.execute(
            insert(api_tokens).values(
                token_id=token.token_id,
                token_hash=token_hash,
                scopes=" ".join(sorted(token.scopes)),
                description=token.description,
                create_time=token.create_time,
                expire_time=token.expire_time,
            )
        )

    async def find_by_hash(self, token_hash: str) -> ApiToken | None:
        query = select(api_tokens).where(api_tokens.c.token_hash == token_hash)
        row = (await self._db.execute(query)).mappings().first()
        return None if row is None else _token_of(row)

    async def list_all(self) -> list[ApiToken]:
        query = select(api_tokens).order_by(api_tokens.c.create_time, api_tokens.c.token_id)
        return [_token_of(row) for row in (await self._db.execute(query)).mappings()]

    async def revoke(self, token_id: str, now: datetime) -> bool:
        result = await self._db.execute(
            update(api_tokens)
            .where(api_tokens.c.token_id == token_id, api_tokens.c.revoke_time.is_(None))
            .values(revoke_time=now)
        )
        return bool(result.rowcount)

    async def record_use(self, token_id: str, used: datetime, recorded_before: datetime) -> bool:
        """Set the token's last use to `used` unless a use after `recorded_before` is stored
        already (domain.token_use.use_is_due, in SQL): replicas that each saw the token in
        use write it once between them. True when it was written."""
        column = api_tokens.c.last_used_time
        result = await self._db.execute(
            update(api_tokens)
            .where(
                api_tokens.c.token_id == token_id,
                or_(column.is_(None), column <= recorded_before),
            )
            .values(last_used_time=used)
        )
        return bool(result.rowcount)


def _token_of(row: RowMapping) -> ApiToken:
    return ApiToken(
        token_id=row["token_id"],
        scopes=frozenset(row["scopes"].split()),
        description=row["description"],
        create_time=row["create_time"],
        revoke_time=row["revoke_time"],
        last_used_time=row["last_used_time"],
        expire_time=row["expire_time"],
    )
