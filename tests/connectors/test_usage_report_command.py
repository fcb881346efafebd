"""`keyturn report usage`: CSV and an SVG chart of usage reports, fetched from a real
server over gRPC by a child process; the README's block run as written."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from connector_harness import run_keyturn_async

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.fulfillment.v1 import fulfillment_pb2_grpc
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.api.server import KeyturnServer

from conftest import Tokens, server_settings
from support.doc_blocks import block, substituted
from support.rpc import PRODUCT_ID
from support.subprocess_server import child_env

pytest_plugins = ["connector_fixtures"]

README_BLOCK = block("README.md", "Usage reports", 0)
HEADER = [
    "entitlement_id",
    "bucket_start",
    "peak_seats_in_use",
    "average_seats_in_use",
    "seat_limit",
]


async def api_rows(
    stub: fulfillment_pb2_grpc.FulfillmentServiceStub,
    tokens: Tokens,
    entitlement_id: str,
    start: datetime,
    end: datetime,
    granularity: int,
) -> list[list[str]]:
    """The report as GetUsageReport answers it, in the CSV's form."""
    request = ful.GetUsageReportRequest(entitlement_id=entitlement_id, granularity=granularity)  # type: ignore[arg-type]
    request.start_time.FromDatetime(start)
    request.end_time.FromDatetime(end)
    answer = await stub.GetUsageReport(request, metadata=tokens("read"))
    return [
        [
            entitlement_id,
            b.start_time.ToDatetime(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            str(b.peak_seats_in_use),
            f"{b.average_seats_in_use:.4f}",
            str(b.seat_limit),
        ]
        for b in answer.buckets
    ]


def rows_of(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def settled(rows: list[list[str]], running: datetime) -> list[list[str]]:
    """The rows without the average of the bucket under way (it changes as time passes:
    a seat is still held), which two reads a moment apart cannot agree on; nor of a
    later one (the hour may turn during the test)."""
    stamp = running.strftime("%Y-%m-%dT%H:%M:%SZ")
    return [[*r[:3], "(running)", r[4]] if r[0] != HEADER[0] and r[1] >= stamp else r for r in rows]


# The child only talks gRPC: one backend suffices (tests/api covers both databases).
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_report_usage_command_writes_the_reports_as_csv_and_a_chart(
    database_url: str,
    server: KeyturnServer,
    license_of,  # type: ignore[no-untyped-def]
    licensing_stub: licensing_pb2_grpc.LicensingServiceStub,
    fulfillment_stub: fulfillment_pb2_grpc.FulfillmentServiceStub,
    tokens: Tokens,
    connector_secrets: dict[str, str],
    tmp_path: Path,
) -> None:
    first, second = await license_of(2), await license_of(3)
    for entitlement, devices in ((first, 1), (second, 2)):
        for n in range(devices):
            granted = await licensing_stub.ActivateSeat(
                lic.ActivateSeatRequest(
                    license_key=entitlement.license_key,
                    product_id=PRODUCT_ID,
                    fingerprint=f"device-{n:04d}-cli",
                )
            )
        await licensing_stub.ReleaseSeat(lic.ReleaseSeatRequest(lease_token=granted.lease.token))
    this_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start, end = this_hour - timedelta(hours=1), this_hour + timedelta(hours=1)
    token = {"KEYTURN_READ_TOKEN": connector_secrets["read"]}
    span = ["--from", start.isoformat(), "--to", end.strftime("%Y-%m-%dT%H:%M"), "--by", "hour"]

    # Two entitlements to stdout, in the order named; then a customer's, each once.
    result = await run_keyturn_async(
        [
            "report",
            "usage",
            "--entitlement",
            second.entitlement_id,
            "--entitlement",
            first.entitlement_id,
            *span,
            "--target",
            server.address,
        ],
        tmp_path,
        token,
    )
    assert result.returncode == 0, result.stderr
    hourly = ful.USAGE_GRANULARITY_HOUR
    expected = [
        *await api_rows(fulfillment_stub, tokens, second.entitlement_id, start, end, hourly),
        *await api_rows(fulfillment_stub, tokens, first.entitlement_id, start, end, hourly),
    ]
    assert settled(rows_of(result.stdout), this_hour) == settled([HEADER, *expected], this_hour)
    peaks = {(row[0], int(row[2])) for row in expected}
    assert (first.entitlement_id, 1) in peaks
    assert (second.entitlement_id, 2) in peaks

    out, chart = tmp_path / "usage.csv", tmp_path / "usage.svg"
    result = await run_keyturn_async(
        [
            "report",
            "usage",
            "--customer",
            "cust-1",
            "--entitlement",
            first.entitlement_id,
            *span,
            "--target",
            server.address,
            "--output",
            str(out),
            "--chart",
            str(chart),
        ],
        tmp_path,
        token,
    )
    assert (result.returncode, result.stdout) == (0, ""), result.stderr
    by_customer = rows_of(out.read_text(encoding="utf-8"))
    assert [r[0] for r in by_customer[1:]] == [first.entitlement_id] * 2 + [
        second.entitlement_id
    ] * 2  # named first, then the customer's others, each once
    svg = ET.fromstring(chart.read_text(encoding="utf-8"))
    assert {first.entitlement_id, second.entitlement_id} <= set(svg.itertext())

    # A range not on whole buckets: the server's field violation, exit 1; no token: exit 2.
    bad = ["report", "usage", "--entitlement", first.entitlement_id, "--by", "day"]
    result = await run_keyturn_async([*bad, *span[:4], "--target", server.address], tmp_path, token)
    assert result.returncode == 1
    assert "INVALID_REQUEST" in result.stderr
    assert "start_time" in result.stderr
    result = await run_keyturn_async([*bad, *span[:4], "--target", server.address], tmp_path, {})
    assert result.returncode == 2
    assert "KEYTURN_READ_TOKEN" in result.stderr

    # The README's block, as written, but for this run's entitlement and today.
    today = datetime.now(UTC).date()
    script = substituted(
        README_BLOCK.text,
        {
            "ent_0123": first.entitlement_id,
            "2026-03-01": today.isoformat(),
            "2026-04-01": (today + timedelta(days=1)).isoformat(),
        },
    )
    env = child_env({**server_settings(database_url), "KEYTURN_LISTEN": server.address})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    ran = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    daily = ful.USAGE_GRANULARITY_DAY
    midnight = datetime(today.year, today.month, today.day, tzinfo=UTC)
    day_rows = [
        *await api_rows(
            fulfillment_stub,
            tokens,
            first.entitlement_id,
            midnight,
            midnight + timedelta(days=1),
            daily,
        ),
        *await api_rows(
            fulfillment_stub,
            tokens,
            second.entitlement_id,
            midnight,
            midnight + timedelta(days=1),
            daily,
        ),
    ]
    assert settled(rows_of(ran.stdout), midnight) == settled([HEADER, day_rows[0]], midnight)
    written = rows_of((tmp_path / "usage.csv").read_text(encoding="utf-8"))  # head -2 above
    assert settled(written, midnight) == settled([HEADER, *day_rows], midnight)
    assert [int(r[2]) for r in written[1:]] == [1, 2]
    ET.fromstring((tmp_path / "usage.svg").read_text(encoding="utf-8"))
