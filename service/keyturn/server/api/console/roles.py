"""What a staff member may do in the console: the scopes of the API token they signed in
with, the same scopes the API checks (api/call_guard.py).

`read` views entitlements, `fulfill` also acts on them (as it may call FulfillOrder and
ResendCredentials), `catalog` views the catalog. The pages hide what a token may not do,
and the routes refuse it (403) whatever was shown.
"""

from __future__ import annotations

from collections.abc import Set
from enum import StrEnum


class Permission(StrEnum):
    VIEW_ENTITLEMENTS = "view entitlements"
    ACT_ON_ENTITLEMENTS = "act on entitlements"
    VIEW_CATALOG = "view the catalog"
    VIEW_TOKENS = "view API tokens"


GRANTED_BY: dict[Permission, frozenset[str]] = {
    Permission.VIEW_ENTITLEMENTS: frozenset({"read", "fulfill"}),
    Permission.ACT_ON_ENTITLEMENTS: frozenset({"fulfill"}),
    Permission.VIEW_CATALOG: frozenset({"catalog"}),
    Permission.VIEW_TOKENS: frozenset({"read", "fulfill"}),
}


def allows(scopes: Set[str], permission: Permission) -> bool:
    return not GRANTED_BY[permission].isdisjoint(scopes)


def permissions_of(scopes: Set[str]) -> frozenset[Permission]:
    return frozenset(p for p in Permission if allows(scopes, p))
