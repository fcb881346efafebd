"""Look a customer up: everything they hold, found by their id or by any of their emails.

Support usually starts from an email, which may be the buyer's, the ship-to or one of
the named users': all three find the entitlement. Paged as ListEntitlements is (the
same cap): a reseller can hold thousands of entitlements.
"""

from __future__ import annotations

from keyturn.server.domain.errors import FieldViolation, raise_if_invalid
from keyturn.server.domain.orders import check_email, check_text

from .context import AppContext
from .paging import next_page_token, page_of, page_request
from .views import EntitlementView


def lookup_violations(customer_id: str, email: str) -> list[FieldViolation]:
    if not customer_id and not email:
        return [FieldViolation("customer_id", "a customer id or an email is required")]
    violations: list[FieldViolation] = []
    if customer_id:
        violations += check_text("customer_id", customer_id, 128, "customer id")
    if email:
        violations += check_email("email", email, required=False)
    return violations


async def lookup_customer(
    ctx: AppContext, *, customer_id: str, email: str, page_size: int = 0, page_token: str = ""
) -> tuple[list[EntitlementView], str]:
    """The customer's entitlements, oldest first, each with its named users."""
    raise_if_invalid(lookup_violations(customer_id, email))
    scope = "customer:" + "\x1f".join((customer_id, email))
    page = page_request(page_size, page_token, scope)
    now = ctx.clock.now()
    async with ctx.read_store.read() as tx:
        found = await tx.entitlements.of_customer(customer_id, email, page.after, page.size + 1)
        items, more = page_of(found, page.size)
        in_use = await tx.activations.count_live_many(items, now, ctx.lapse_grace)
        users = await tx.named_users.list_for([e.entitlement_id for e in items])
    views = [
        EntitlementView(
            e, e.status(now), in_use[e.entitlement_id], named_users=tuple(users[e.entitlement_id])
        )
        for e in items
    ]
    return views, next_page_token(items[-1].entitlement_id if more else None, scope)
