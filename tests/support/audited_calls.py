"""What the audit trail must hold after a test: one record for each change its calls made.

`Recording` wraps a stub (gRPC or support/http_stub) and notes every write call that
succeeded, with the token it was made with; `expected_records` turns those calls into the
records the server must have written (an order: one per entitlement it created or
changed, none on a replay), and `audit_matches` compares them with the audit_events
table, and the table's orders, products and SKUs with the records, so that a change made
without its record, or a record without its change, fails the test.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from keyturn.server.store import tables
from keyturn.server.store.audit_repository import AuditFilter
from keyturn.server.store.codec import results_from_json
from keyturn.server.store.unit_of_work import Store

Record = tuple[str, str, str, str]  # actor, action, resource, entitlement id ("" for none)
WRITES = frozenset({"PutProduct", "PutSku", "DeleteSku", "FulfillOrder", "ResendCredentials"})


@dataclass
class CallLog:
    calls: list[tuple[str, str, Any, Any]] = field(default_factory=list)  # method, actor, in, out


class Recording:
    """A stub whose successful write calls are noted in `log`; `actor_of` names the actor
    of a call's metadata (conftest.Tokens.actor_of)."""

    def __init__(self, stub: Any, log: CallLog, actor_of: Callable[[Any], str]) -> None:
        self._stub = stub
        self._log = log
        self._actor_of = actor_of

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        if name not in WRITES:
            return method

        async def call(request: Any, metadata: Any = None, **options: Any) -> Any:
            response = await method(request, metadata=metadata, **options)
            self._log.calls.append((name, self._actor_of(metadata), request, response))
            return response

        return call


def _records_of(method: str, actor: str, request: Any, response: Any) -> list[Record]:
    match method:
        case "FulfillOrder":
            if response.replayed:
                return []
            order = response.order
            resource = f"orders/{order.source}/{order.order_id}"
            touched = dict.fromkeys(r.entitlement_id for r in order.results)
            return [(actor, "order.fulfil", resource, e) for e in touched]
        case "ResendCredentials":
            resource = f"entitlements/{request.entitlement_id}"
            if request.user_id:
                resource += f"/named_users/{request.user_id}"
            return [(actor, "credentials.resend", resource, request.entitlement_id)]
        case "PutProduct":
            return [(actor, "product.put", f"products/{response.product.product_id}", "")]
        case "PutSku":
            return [(actor, "sku.put", f"skus/{response.sku.sku_id}", "")]
        case "DeleteSku":
            return [(actor, "sku.delete", f"skus/{request.sku_id}", "")]
    raise AssertionError(f"no audit record known for {method}")


def expected_records(log: CallLog) -> Counter[Record]:
    found: Counter[Record] = Counter()
    for call in log.calls:
        found.update(_records_of(*call))
    return found


async def stored_records(store: Store) -> Counter[Record]:
    """The audit records written by API tokens (the test's own fixtures create tokens
    outside any call: those are the system's)."""
    async with store.read() as tx:
        rows = await tx.audit.list(AuditFilter(), None, 1_000_000)
    return Counter(
        (r.actor, r.action, r.resource, r.entitlement_id or "")
        for r in rows
        if r.actor.startswith("token:")
    )


async def audit_matches(store: Store, log: CallLog) -> None:
    """The trail holds exactly the records of the calls made, and every order, product
    and SKU in the database has its record by the token whose call made it."""
    stored = await stored_records(store)
    assert stored == expected_records(log)
    fulfilled = Counter((r[2], r[3]) for r in stored if r[1] == "order.fulfil")
    put = {r[2] for r in stored if r[1] in ("product.put", "sku.put")}
    async with store.read() as tx:
        db = tx.connection
        orders = (await db.execute(select(tables.orders))).mappings().all()
        products = (await db.execute(select(tables.products.c.product_id))).scalars().all()
        skus = (await db.execute(select(tables.skus.c.sku_id))).scalars().all()
    for order in orders:
        resource = f"orders/{order['source']}/{order['order_id']}"
        touched = {r.entitlement_id for r in results_from_json(order["results"])}
        mine = {e: n for (res, e), n in fulfilled.items() if res == resource}
        assert mine == dict.fromkeys(touched, 1), resource
    assert len({r for r, _ in fulfilled}) == len(orders)
    assert {f"products/{p}" for p in products} <= put
    assert {f"skus/{s}" for s in skus} <= put
