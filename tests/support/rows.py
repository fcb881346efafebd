"""What the database holds, table by table, to check that a failed call wrote nothing."""

from __future__ import annotations

import hashlib

import sqlalchemy

from keyturn.server.store.unit_of_work import Store

TABLES = (
    "products",
    "skus",
    "orders",
    "entitlements",
    "external_references",
    "activations",
    "entitlement_events",
    "api_tokens",
    "signing_keys",
    "audit_events",
)


async def row_counts(store: Store) -> dict[str, int]:
    """The number of rows of every table."""
    counts: dict[str, int] = {}
    async with store.read() as tx:
        for table in TABLES:
            result = await tx.connection.execute(sqlalchemy.text(f"SELECT count(*) FROM {table}"))
            counts[table] = int(result.scalar_one())
    return counts


# Columns no call writes itself: when a token was last used is written by the token-use
# recorder, in the background, at most once a minute per token, whenever a use is due,
# also that of a call refused after its token authenticated (a wrong scope). A suite
# that runs longer than that minute would see it as the refused call's write.
NOT_THE_CALLS = {"api_tokens": frozenset({"last_used_time"})}


async def table_digests(store: Store) -> dict[str, str]:
    """A digest of the content of every table, so that an update is seen as well as an insert."""
    digests: dict[str, str] = {}
    async with store.read() as tx:
        for table in TABLES:
            result = await tx.connection.execute(sqlalchemy.text(f"SELECT * FROM {table}"))
            skipped = NOT_THE_CALLS.get(table, frozenset())
            rows = sorted(
                repr(tuple(v for k, v in row.items() if k not in skipped))
                for row in result.mappings()
            )
            digests[table] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
    return digests


def changed_tables(before: dict[str, object], after: dict[str, object]) -> dict[str, str]:
    """Tables whose entry differs, as 'before -> after'."""
    return {
        t: f"{before.get(t)} -> {after.get(t)}" for t in TABLES if before.get(t) != after.get(t)
    }
