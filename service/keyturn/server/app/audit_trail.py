"""Reading the audit trail: who changed what, newest first, filtered and paged.

Read from the read store (a standby, when one is set): the trail is history, and a
record committed a moment ago on the primary shows up once the standby replays it.
"""

from __future__ import annotations

import re

from keyturn.server.domain.errors import FieldViolation, invalid_request, raise_if_invalid
from keyturn.server.domain.orders import check_text
from keyturn.server.store.audit_repository import AuditEvent, AuditFilter

from .context import AppContext
from .paging import next_page_token, page_of, page_request

AUDIT_CURSOR = re.compile(r"[0-9]{1,18}", re.ASCII)
# The column widths of audit_events (store/tables.py).
_LIMITS = {"actor": 128, "action": 64, "entitlement_id": 64, "resource": 300}


def filter_violations(where: AuditFilter) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    for name, limit in _LIMITS.items():
        value: str = getattr(where, name)
        if value:
            violations += check_text(name, value, limit, name.replace("_", " "))
    if where.start_time and where.end_time and where.end_time <= where.start_time:
        violations.append(FieldViolation("end_time", "must be after start_time"))
    return violations


def _filter_scope(where: AuditFilter) -> str:
    """Ties a page token to its filters: a token of another query is refused."""
    times = [t.isoformat() if t else "" for t in (where.start_time, where.end_time)]
    parts = (where.actor, where.action, where.entitlement_id, where.resource, *times)
    return "audit:" + "\x1f".join(parts)


async def list_audit_events(
    ctx: AppContext, *, where: AuditFilter, page_size: int = 0, page_token: str = ""
) -> tuple[list[AuditEvent], str]:
    """One page of the records matching `where`, newest first, and the next page's token."""
    raise_if_invalid(filter_violations(where))
    scope = _filter_scope(where)
    page = page_request(page_size, page_token, scope)
    if page.after and not AUDIT_CURSOR.fullmatch(page.after):
        raise invalid_request(
            [FieldViolation("page_token", "is not a token returned by this list call")]
        )
    before = int(page.after) if page.after else None
    async with ctx.read_store.read() as tx:
        found = await tx.audit.list(where, before, page.size + 1)
    items, more = page_of(found, page.size)
    return items, next_page_token(str(items[-1].audit_id) if more else None, scope)
