"""KEYTURN_LOG_FORMAT=json: every line of the real server's log is one JSON object, one per
call with method, code, reason, duration_ms and peer, and no credential anywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc

from support.catalog import new_license
from support.rpc import PRODUCT_ID
from support.subprocess_server import create_token, sqlite_settings, start_server

WAIT_S = 30.0
RPC_FIELDS = {"method", "code", "reason", "duration_ms", "peer"}
LICENSING = "/keyturn.licensing.v1.LicensingService/"


def rpc_lines(entries: list[dict[str, Any]], method: str) -> list[dict[str, Any]]:
    return [e for e in entries if e.get("logger") == "keyturn.rpc" and e.get("method") == method]


@pytest.mark.parametrize("workers", [1, 2])
async def test_json_lines_carry_each_call_and_no_secret(tmp_path: Path, workers: int) -> None:
    settings = sqlite_settings(tmp_path / "keyturn.db", KEYTURN_LOG_FORMAT="json")
    token = await create_token(tmp_path, settings)
    auth = (("authorization", f"Bearer {token}"),)
    with start_server(tmp_path, settings, workers=workers) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            entitlement = await new_license(
                catalog_pb2_grpc.CatalogServiceStub(channel),
                fulfillment_pb2_grpc.FulfillmentServiceStub(channel),
                auth,
                auth,
                2,
            )
            licensing = licensing_pb2_grpc.LicensingServiceStub(channel)
            granted = await licensing.ActivateSeat(
                lic.ActivateSeatRequest(
                    license_key=entitlement.license_key,
                    product_id=PRODUCT_ID,
                    fingerprint="json-device",
                    label="laptop",
                ),
                timeout=WAIT_S,
            )
            with pytest.raises(grpc.aio.AioRpcError):
                await licensing.CheckLicense(
                    lic.CheckLicenseRequest(license_key="KT-not-a-key", product_id=PRODUCT_ID),
                    timeout=WAIT_S,
                )
        assert server.stop() == 0
    log = server.stderr_lines
    entries = [json.loads(line) for line in log]  # every line, or this raises
    assert all({"time", "level", "logger", "message", "pid"} <= e.keys() for e in entries)

    [activated] = rpc_lines(entries, LICENSING + "ActivateSeat")
    assert activated.keys() >= RPC_FIELDS
    assert (activated["code"], activated["reason"]) == ("OK", "")
    assert isinstance(activated["duration_ms"], float)
    assert activated["duration_ms"] >= 0
    assert activated["peer"].startswith("ipv4:127.0.0.1:")
    [refused] = rpc_lines(entries, LICENSING + "CheckLicense")
    assert (refused["code"], refused["reason"]) == ("UNAUTHENTICATED", "INVALID_LICENSE_KEY")
    [fulfilled] = rpc_lines(entries, "/keyturn.fulfillment.v1.FulfillmentService/FulfillOrder")
    assert fulfilled["code"] == "OK"
    if workers > 1:
        assert {e["worker"] for e in entries if e["logger"] == "keyturn.rpc"} <= {0, 1}
        assert any(e["logger"] == "keyturn.supervisor" for e in entries)

    text = "\n".join(log)
    for secret in (entitlement.license_key, token, granted.lease.token, "it@initech.example"):
        assert secret not in text
