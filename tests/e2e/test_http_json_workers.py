"""The HTTP/JSON port of the real `keyturn serve`: README's curl walk-through, run as
written by the real `curl`, against two workers that share the port by SO_REUSEPORT.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from support.doc_blocks import block, substituted
from support.repository import ROOT
from support.subprocess_server import child_env, run_cli, sqlite_settings, start_server
from support.workers import listening_workers

HTTP_RE = re.compile(r"^keyturn http on (?P<address>\S+:\d+)$")
WALK_THROUGH = block("README.md", "Walk-through with curl", 0)
DOCUMENTED_URL = "http://127.0.0.1:50052"
WAIT_S = 60.0
TRIES = 200  # new connections until both workers have answered one


def http_address(lines: list[str]) -> str:
    [address] = [m["address"] for line in lines if (m := HTTP_RE.match(line))]
    return address


def json_values(text: str) -> list[Any]:
    """The JSON values printed one after the other (Connect pretty-prints its answers)."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while text[at:].strip():
        value, at = decoder.raw_decode(text, len(text) - len(text[at:].lstrip()))
        values.append(value)
    return values


async def test_the_curl_walk_through_runs_as_written_on_two_workers(tmp_path: Path) -> None:
    assert shutil.which("curl"), "curl is a test dependency (scripts/setup.sh installs it)"
    settings = sqlite_settings(tmp_path / "keyturn.db", KEYTURN_SHUTDOWN_GRACE_SECONDS="5")
    run_cli(["catalog", "apply", "--create", str(ROOT / "examples/catalog.yaml")], tmp_path,
            settings)  # fmt: skip
    with start_server(tmp_path, settings, workers=2) as server:
        pids = await listening_workers(server)
        address = http_address(server.stdout_lines)
        assert sum(bool(HTTP_RE.match(line)) for line in server.stdout_lines) == 1
        answered: set[int] = set()
        for _ in range(TRIES):
            async with httpx.AsyncClient(timeout=WAIT_S) as fresh:  # a new connection
                health = await fresh.get(f"http://{address}/healthz")
            assert (health.status_code, health.json()) == (200, {"status": "SERVING"})
            answered.add(int(health.headers["keyturn-worker"]))
            if answered == set(pids.values()):
                break
        assert answered == set(pids.values()), f"only {answered} of {pids} answered"

        env = child_env(settings)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
        script = substituted(WALK_THROUGH.text, {DOCUMENTED_URL: f"http://{address}"})
        walk = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=WAIT_S, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert walk.returncode == 0, f"{walk.stdout}\n{walk.stderr}"
    order = json.loads((tmp_path / "order.json").read_text())
    lease = json.loads((tmp_path / "lease.json").read_text())
    assert order["entitlements"][0]["licenseKey"]
    assert lease["entitlement"]["seatsInUse"] == 1
    checked, released, jwks, health, status = json_values(walk.stdout)
    assert (checked["entitlement"]["seats"], checked["entitlement"]["seatsInUse"]) == (1, 1)
    assert released == {}
    assert jwks["keys"][0]["alg"] == "EdDSA"
    assert health == {"status": "SERVING"}
    assert status == 401
