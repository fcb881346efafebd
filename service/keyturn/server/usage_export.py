"""`keyturn report usage`: usage reports fetched over the API, written as CSV and a chart.

Kept apart from cli.py (which only parses and dispatches): the reports come from
GetUsageReport through the Python client, with a read-scoped token, one call per
entitlement; `--customer` adds that customer's entitlements (ListEntitlements).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

from .api.usage_chart import UsageSeries, usage_chart_svg
from .domain.usage import Granularity, UsageBucket

if TYPE_CHECKING:
    from keyturn.client import FulfillmentClient

CSV_HEADER = (
    "entitlement_id",
    "bucket_start",
    "peak_seats_in_use",
    "average_seats_in_use",
    "seat_limit",
)
GRANULARITY_OUT = {
    Granularity.HOUR: ful.USAGE_GRANULARITY_HOUR,
    Granularity.DAY: ful.USAGE_GRANULARITY_DAY,
}


@dataclass(frozen=True)
class EntitlementUsage:
    entitlement_id: str
    buckets: tuple[UsageBucket, ...]


def _bucket_in(bucket: ful.UsageBucket) -> UsageBucket:
    return UsageBucket(
        start_time=bucket.start_time.ToDatetime(tzinfo=UTC),
        peak_seats_in_use=bucket.peak_seats_in_use,
        average_seats_in_use=bucket.average_seats_in_use,
        seat_limit=bucket.seat_limit,
    )


def entitlements_to_report(
    client: FulfillmentClient, entitlement_ids: Sequence[str], customer_ids: Sequence[str]
) -> list[str]:
    """The entitlements named, then those of each customer, each once, in that order."""
    ids = list(entitlement_ids)
    for customer in customer_ids:
        ids += [e.entitlement_id for e in client.list_entitlements(customer_id=customer)]
    return list(dict.fromkeys(ids))


def fetch_usage(
    client: FulfillmentClient,
    entitlement_ids: Iterable[str],
    *,
    start: datetime,
    end: datetime,
    granularity: Granularity,
) -> list[EntitlementUsage]:
    return [
        EntitlementUsage(
            entitlement_id,
            tuple(
                _bucket_in(b)
                for b in client.get_usage_report(
                    entitlement_id,
                    start=start,
                    end=end,
                    granularity=GRANULARITY_OUT[granularity],
                )
            ),
        )
        for entitlement_id in entitlement_ids
    ]


def usage_csv(reports: Iterable[EntitlementUsage]) -> str:
    """One row per entitlement and bucket; times in ISO 8601 UTC, the average to 4 places."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for report in reports:
        for bucket in report.buckets:
            writer.writerow(
                (
                    report.entitlement_id,
                    bucket.start_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    bucket.peak_seats_in_use,
                    f"{bucket.average_seats_in_use:.4f}",
                    bucket.seat_limit,
                )
            )
    return out.getvalue()


def usage_chart(reports: Iterable[EntitlementUsage], granularity: Granularity) -> str:
    return usage_chart_svg([UsageSeries(r.entitlement_id, granularity, r.buckets) for r in reports])
