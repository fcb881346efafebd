"""Scraping a real Keyturn metrics endpoint over HTTP (urllib) and reading its samples."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

SCRAPE_TIMEOUT_S = 10.0
ACTIVATE = ("keyturn.licensing.v1.LicensingService", "ActivateSeat")
CHECK = ("keyturn.licensing.v1.LicensingService", "CheckLicense")
KEYS = ("keyturn.licensing.v1.LicensingService", "GetSigningKeys")


@dataclass(frozen=True)
class Scrape:
    """Every sample of one scrape: (name, sorted labels) -> value."""

    samples: Mapping[tuple[str, tuple[tuple[str, str], ...]], float]
    content_type: str

    def value(self, name: str, **labels: str) -> float:
        """The sample `name` with exactly `labels`; 0 when the endpoint has none (yet)."""
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}


def calls(scrape: Scrape, rpc: tuple[str, str], code: str, reason: str = "") -> float:
    service, method = rpc
    return scrape.value(
        "keyturn_rpc_calls_total", service=service, method=method, code=code, reason=reason
    )


def timed(scrape: Scrape, rpc: tuple[str, str], code: str) -> float:
    """How many calls the latency histogram holds for `rpc` and `code`."""
    service, method = rpc
    return scrape.value(
        "keyturn_rpc_duration_seconds_count", service=service, method=method, code=code
    )


def scrape_now(address: str) -> Scrape:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=SCRAPE_TIMEOUT_S) as answer:
        body = answer.read().decode()
        content_type = answer.headers.get("Content-Type", "")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }
    return Scrape(samples, content_type)


async def scrape(address: str) -> Scrape:
    """One scrape, from a thread: the endpoint may need this event loop to answer."""
    return await asyncio.to_thread(scrape_now, address)
