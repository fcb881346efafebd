"""The seats a Chargify subscription signed up with, read back from Chargify's API.

Chargify sends no `component_allocation_change` for the allocations a subscription
is created with, and its `signup_success` payload does not carry them: the
connector asks `GET /subscriptions/ID/components.json` (HTTP Basic, the API key
as user name and `x` as password) for the subscription's seat components, so that
the entitlement starts with the seats bought. The site's API host is
`https://SUBDOMAIN.chargify.com`, the subdomain from the (signed) webhook, unless
KEYTURN_CHARGIFY_API_BASE names another one (an EU site, a test double).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import httpx

from .chargify_mapping import UnusableWebhook, counts_seats, whole_units

TIMEOUT_S = 10.0  # Chargify waits about 15 s for the webhook's answer


class ChargifyUnavailable(Exception):
    """Chargify's API could not answer now; Chargify will deliver the webhook again."""


class ChargifySeats:
    """Subscription id -> the seats of its seat components, through Chargify's API."""

    def __init__(
        self, api_key: str, api_base: str = "", seat_components: Collection[str] = ()
    ) -> None:
        self._auth = httpx.BasicAuth(api_key, "x")
        self._base = api_base.rstrip("/")
        self._seat_components = frozenset(seat_components)

    def __call__(self, subscription_id: str, subdomain: str) -> int:
        base = self._base or f"https://{subdomain}.chargify.com"
        if not self._base and not subdomain:
            raise UnusableWebhook("payload[site][subdomain] is missing")
        url = f"{base}/subscriptions/{subscription_id}/components.json"
        try:
            response = httpx.get(
                url, auth=self._auth, headers={"Accept": "application/json"}, timeout=TIMEOUT_S
            )
        except httpx.HTTPError as exc:
            raise ChargifyUnavailable(f"{url}: {exc}") from exc
        if response.status_code == 404:
            raise UnusableWebhook(f"Chargify knows no subscription {subscription_id}")
        if response.status_code != 200:
            raise ChargifyUnavailable(f"{url}: HTTP {response.status_code}")
        try:
            listed = response.json()
        except ValueError as exc:
            raise ChargifyUnavailable(f"{url}: not JSON") from exc
        return sum(self._seats(entry) for entry in listed if isinstance(entry, dict))

    def _seats(self, entry: dict[str, Any]) -> int:
        component = entry.get("component") or {}
        keys = (str(component.get("component_id", "")), str(component.get("component_handle", "")))
        if not counts_seats(keys, str(component.get("kind", "")), self._seat_components):
            return 0
        return whole_units(str(component.get("allocated_quantity") or 0), "allocated_quantity")
