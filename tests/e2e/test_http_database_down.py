"""The HTTP/JSON port of a real `keyturn serve` while its PostgreSQL is down: 503 with a
Connect error whose ErrorInfo reason is DATABASE_UNAVAILABLE (as gRPC answers
UNAVAILABLE, tests/e2e/test_database_faults.py), health 503, and answers again by
itself once the database is back.

The database is on a cluster of this module's own (support/faults.py), never the
shared server.
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import httpx
import pytest

from keyturn.licensing.v1 import licensing_pb2 as lic

from support.fault_deployment import (
    NOT_SERVING,
    SERVING,
    WAIT_S,
    Fault,
    deployment,
    fault,
    faulty,
    stopped,
)
from support.health import health_reaches
from support.http_json import HttpCallError, post_json
from support.rpc import PRODUCT_ID

__all__ = ["fault", "faulty"]  # fixtures

HTTP_RE = re.compile(r"^keyturn http on (?P<address>\S+:\d+)$")
CHECK_LICENSE = "/keyturn.licensing.v1.LicensingService/CheckLicense"


def http_address(stdout: list[str]) -> str:
    [address] = [m["address"] for line in stdout if (m := HTTP_RE.match(line))]
    return address


async def test_http_calls_get_503_database_unavailable_while_postgres_is_down_then_recover(
    fault: Fault, tmp_path: Path
) -> None:
    async with deployment(tmp_path, fault.url, entitlements=1) as d:
        base = f"http://{http_address(d.server.stdout_lines)}"
        check = lic.CheckLicenseRequest(license_key=d.keys[0], product_id=PRODUCT_ID)
        async with httpx.AsyncClient(base_url=base, timeout=WAIT_S) as http:
            assert (await post_json(http, CHECK_LICENSE, check))["entitlement"][
                "productId"
            ] == PRODUCT_ID
            async with stopped(fault.cluster, "fast"):
                await health_reaches(d.channel, NOT_SERVING, WAIT_S)
                with pytest.raises(HttpCallError) as refused:
                    await post_json(http, CHECK_LICENSE, check)
                failure = refused.value.failure
                assert (failure.status, failure.code) == (503, grpc.StatusCode.UNAVAILABLE)
                assert failure.reason == "DATABASE_UNAVAILABLE", failure.body
                health = await http.get("/healthz")
                assert (health.status_code, health.json()) == (503, {"status": "NOT_SERVING"})
            await health_reaches(d.channel, SERVING, WAIT_S)
            assert (await post_json(http, CHECK_LICENSE, check))["entitlement"][
                "productId"
            ] == PRODUCT_ID
            health = await http.get("/healthz")
            assert (health.status_code, health.json()) == (200, {"status": "SERVING"})
