"""bench/licensing.py runs end to end at small scale and prints every row.

It runs as a subprocess against the tests' PostgreSQL server, makes and drops
a database of its own, and must report no failed call (except the refusals
its hot-entitlement limit check provokes) and no seat sold twice. How fast
anything is, is not asserted.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from conftest import BACKENDS
from support.subprocess_server import child_env

BENCH = Path(__file__).resolve().parents[2] / "bench" / "licensing.py"
RUN_TIMEOUT_S = 600
SEATS_EXHAUSTED = "RESOURCE_EXHAUSTED/SEATS_EXHAUSTED"
RPC_ROWS = [
    (rpc, n)
    for rpc in ("echo (grpc.aio)", "ActivateSeat", "RenewLease", "ReleaseSeat", "CheckLicense")
    for n in (16, 64)
]
HISTORY_ROWS = [
    "CheckLicense, fresh entitlement",
    "CheckLicense, 2,000 released",
    "CheckLicense, 2,000 live seats",
    "ActivateSeat, hot: all on one fresh entitlement",
    "ActivateSeat, 2,000 released",
    "ActivateSeat, 2,000 live seats",
]

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif("postgresql" not in BACKENDS, reason="the benchmark needs PostgreSQL"),
]


async def database_exists(admin_url: str, name: str) -> bool:
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


def run_bench(pg_admin: str, out: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(BENCH), "--scale", "small", "--duration", "1"]
    command += ["--admin-url", pg_admin, "--json", str(out)]
    return subprocess.run(
        command,
        cwd=cwd,
        env=child_env({}),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def only_ok(row: dict[str, Any]) -> bool:
    return row["calls"] > 0 and set(row["codes"]) == {"OK"}


def test_small_run_prints_every_row_without_errors_or_oversold_seats(
    pg_admin: str, tmp_path: Path
) -> None:
    out = tmp_path / "figures.json"
    result = run_bench(pg_admin, out, tmp_path)
    assert result.returncode == 0, result.stderr[-8000:]
    table = result.stdout

    for rpc, in_flight in RPC_ROWS:
        assert re.search(rf"^\| {re.escape(rpc)} \| {in_flight} \| [\d,]+ \|", table, re.M), rpc
    for label in HISTORY_ROWS:
        assert f"| {label} | 64 |" in table, label
    assert "| random of 200 entitlements | 16 |" in table
    assert "| one row | 16 |" in table
    assert "not one seat oversold" in table
    assert len(re.findall(r"^- .*: .*, (met|NOT met)$", table, re.M)) == 12
    assert re.search(r"^Memory over 2,000 activations of new devices .* after$", table, re.M)

    figures = json.loads(out.read_text())
    for row in figures["echo"] + figures["rpcs"]:
        assert only_ok(row), row
    assert len(figures["rpcs"]) == 8
    for row in figures["history"]:
        allowed = {"OK", SEATS_EXHAUSTED} if row["entitlement"] == "fresh" else {"OK"}
        assert row["calls"] > 0, row
        assert set(row["codes"]) <= allowed, row
    assert len(figures["history"]) == 6

    oversell = figures["oversell"]
    assert set(oversell["codes"]) == {"OK", SEATS_EXHAUSTED}, oversell
    assert oversell["codes"]["OK"] == oversell["seats"] - oversell["live_before"]
    assert oversell["live_after"] == oversell["seats"]
    assert not oversell["oversold"]

    memory = figures["memory"]
    assert memory["activations"] == 2_000
    assert memory["codes"] == {"OK": 2_000}, memory
    assert memory["rss_before_bytes"]
    assert memory["rss_bytes"]

    for run in figures["pgbench"].values():
        assert run["transactions"] > 0
        assert run["failed"] == 0
    assert set(figures["pgbench"]) == {"spread", "hot"}

    name = re.search(r"(keyturn_bench_[0-9a-f]+) on ", result.stderr)
    assert name is not None, result.stderr
    assert not asyncio.run(database_exists(pg_admin, name[1]))
