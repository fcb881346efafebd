"""What repositories read a row through: SQLAlchemy's RowMapping or an asyncpg Record."""

from __future__ import annotations

from typing import Any, Protocol


class Row(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...
