"""The TypeScript SDK (clients/typescript) against a real `keyturn serve` on its HTTP port.

The SDK is compiled from its sources first (tsc, as `npm ci` does through `prepare`),
so the node tests run what the sources say, not an older build. This test sets up what
they need, as an operator would: the shipped catalog, a fulfil-scoped token, two orders
over HTTP/JSON (a five-seat and a one-seat entitlement of `acme-cad`), then runs
`node --test` on the compiled tests with the server's URL and the two license keys,
one test file at a time (they share the licenses), and reads node's TAP summary.

It also holds the README of the SDK to its example: the block of "Activate in three
lines" is examples/activate.ts verbatim, which test/example.test.ts runs.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx

from support.doc_blocks import block
from support.http_json import bearer, post_json
from support.repository import ROOT
from support.subprocess_server import (
    create_token,
    run_cli_async,
    serving,
    sqlite_settings,
)

SDK = ROOT / "clients" / "typescript"
HTTP_RE = re.compile(r"^keyturn http on (?P<address>\S+:\d+)$")
FULFIL = "/keyturn.fulfillment.v1.FulfillmentService/FulfillOrder"
PRODUCT = "acme-cad"
EXPECTED_TESTS = 17  # the tests of clients/typescript/test/*.test.ts
BUILD_TIMEOUT_S = 300.0
NODE_TIMEOUT_S = 300.0


def http_url(lines: list[str]) -> str:
    [address] = [m["address"] for line in lines if (m := HTTP_RE.match(line))]
    return f"http://{address}"


async def license_key(url: str, token: str, order_id: str, seats: int) -> str:
    """A new entitlement of `seats` seats of CAD-STD-1Y (one seat per unit), by a real order."""
    async with httpx.AsyncClient(base_url=url, timeout=60.0) as http:
        answer = await post_json(
            http,
            FULFIL,
            {
                "source": "typescript-sdk",
                "orderId": order_id,
                "customer": {"customerId": f"customer-{order_id}", "email": "it@initech.example"},
                "lines": [{"skuId": "CAD-STD-1Y", "quantity": seats}],
            },
            bearer(token),
        )
    key = answer["entitlements"][0]["licenseKey"]
    assert isinstance(key, str)
    assert key
    return key


def run(argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=SDK, env=env, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def tap_count(output: str, name: str) -> int:
    [count] = re.findall(rf"^# {name} (\d+)$", output, re.MULTILINE)
    return int(count)


async def test_the_node_tests_of_the_sdk_pass_against_a_real_server(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node, "node is a test dependency (Node 20 or later; scripts/setup.sh needs npm)"
    tsc = SDK / "node_modules" / ".bin" / "tsc"
    assert tsc.is_file(), "clients/typescript is not installed: run scripts/setup.sh"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")}
    build = await asyncio.to_thread(run, [str(tsc), "-p", "tsconfig.json"], env, BUILD_TIMEOUT_S)
    assert build.returncode == 0, f"tsc failed:\n{build.stdout}\n{build.stderr}"

    settings = sqlite_settings(tmp_path / "keyturn.db")
    catalog = ["catalog", "apply", "--create", str(ROOT / "examples" / "catalog.yaml")]
    await run_cli_async(catalog, tmp_path, settings)
    token = await create_token(tmp_path, settings, ("fulfill",))
    async with serving(tmp_path, settings) as server:
        url = http_url(server.stdout_lines)
        env.update(
            SDK_TEST_URL=url,
            SDK_TEST_PRODUCT_ID=PRODUCT,
            SDK_TEST_LICENSE_KEY=await license_key(url, token, "five-seats", 5),
            SDK_TEST_ONE_SEAT_KEY=await license_key(url, token, "one-seat", 1),
        )
        tests = sorted(str(p.relative_to(SDK)) for p in (SDK / "dist" / "test").glob("*.test.js"))
        assert len(tests) == 5, tests
        argv = [node, "--test", "--test-reporter=tap", "--test-concurrency=1", *tests]
        result = await asyncio.to_thread(run, argv, env, NODE_TIMEOUT_S)
    output = f"{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, output
    assert (tap_count(output, "tests"), tap_count(output, "pass")) == (EXPECTED_TESTS,) * 2, output
    assert (tap_count(output, "fail"), tap_count(output, "skipped")) == (0, 0), output


def test_the_readme_activation_is_the_example_the_node_tests_run() -> None:
    shown = block("clients/typescript/README.md", "Activate in three lines")
    assert shown.language == "typescript"
    assert shown.text == (SDK / "examples" / "activate.ts").read_text()
