"""The audit page's GET form: its query read as ListAuditEvents' filter, and the link to
the next page, which keeps the filters (a page token is tied to them).

Times are typed as a browser's datetime-local field sends them, or as ISO 8601; without
an offset they are UTC, as every time the console shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from urllib.parse import urlencode

from keyturn.server.domain.durations import utc_time
from keyturn.server.domain.errors import FieldViolation
from keyturn.server.store.audit_repository import AuditFilter

AUDIT_PAGE_SIZE = 50
ENTITLEMENT_AUDIT_SIZE = 10  # the latest records on an entitlement's page
# The form's text fields, each an AuditFilter field of the same name.
TEXT_FIELDS = ("actor", "action", "entitlement_id", "resource")
TIME_FIELDS = ("since", "until")
SHOWN_AS = {
    "start_time": "since",
    "end_time": "until",
    "entitlement_id": "entitlement id",
    "page_token": "page token",
}


class BadFilter(ValueError):
    """A field of the form that is not a filter; its text says which and why."""


def _time(name: str, text: str) -> datetime | None:
    if not text:
        return None
    try:
        return utc_time(text)
    except ValueError:
        raise BadFilter(f"{name} must be a date and time such as 2026-01-31T09:30") from None


def audit_filter(query: Mapping[str, str]) -> AuditFilter:
    """The filter of the form's fields (empty ones match everything); the use case checks
    the rest (lengths, `until` after `since`) and says so as INVALID_REQUEST."""
    texts = {name: query.get(name, "").strip() for name in TEXT_FIELDS}
    since = _time("since", query.get("since", "").strip())
    until = _time("until", query.get("until", "").strip())
    return AuditFilter(**texts, start_time=since, end_time=until)


def next_link(query: Mapping[str, str], page_token: str) -> str:
    """The query string of the next page ("" when this is the last)."""
    if not page_token:
        return ""
    kept = {name: query[name] for name in (*TEXT_FIELDS, *TIME_FIELDS) if query.get(name)}
    return "?" + urlencode({**kept, "page": page_token})


def why_refused(violations: Sequence[FieldViolation]) -> str:
    """The use case's field violations, named as the form names its fields."""
    return "; ".join(f"{SHOWN_AS.get(v.field, v.field)} {v.description}" for v in violations)
