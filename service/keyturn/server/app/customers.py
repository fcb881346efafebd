"""Look a customer up: everything they hold, found by their id or by any of their emails.

Support usually starts from an email, which may be the buyer's, the ship-to or one of
the named users': all three find the entitlement. Paged as ListEntitlements is (the
same cap): a reseller can hold thousands of entitlements.
"""

from __future__ import annotations

from datetime import datetime

from keyturn.server.domain.entitlement import Entitlement
from keyturn.server.domain.errors import FieldViolation, raise_if_invalid
from keyturn.server.domain.orders import check_email, check_text
from keyturn.server.store.unit_of_work import Transaction

from .context import AppContext
from .entitlements import page_of_views
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

    async def find(tx: Transaction, now: datetime, after: str, limit: int) -> list[Entitlement]:
        return await tx.entitlements.of_customer(customer_id, email, after, limit)

    scope = "customer:" + "\x1f".join((customer_id, email))
    return await page_of_views(ctx, scope, page_size, page_token, find)
