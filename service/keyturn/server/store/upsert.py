"""INSERT ... ON CONFLICT DO UPDATE on both backends."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection


def insert_of(connection: AsyncConnection, table: Table) -> Any:
    """The INSERT of `connection`'s backend, the one that offers `on_conflict_do_update`."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


async def upsert(
    connection: AsyncConnection, table: Table, values: dict[str, Any], key: list[str]
) -> None:
    """Insert `values`, or update the row whose `key` columns match."""
    statement = insert_of(connection, table).values(**values)
    changed = {name: statement.excluded[name] for name in values if name not in key}
    await connection.execute(statement.on_conflict_do_update(index_elements=key, set_=changed))
