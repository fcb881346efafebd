"""Stopping the real server process: calls in flight at SIGTERM finish, then it exits 0.

Each test runs one process and a supervisor of two workers (`--workers 2`),
which passes the signal on to both: every worker drains and logs its own
`shutting down` and `stopped`, and the supervisor exits 0 once both have ended.

Calls are held in flight without sleeping: the test takes SQLite's write lock
itself (BEGIN IMMEDIATE on its own connection), so every ActivateSeat waits in
its own BEGIN IMMEDIATE (busy_timeout 60 s) until the test rolls back. The
server's DEBUG log line `rpc started ...` tells when all of them have arrived.

The server's readiness probe (every 5 s from start) also opens a write
transaction; were it to wait on the test's lock, SIGTERM would not take effect
until the lock is released (see `KeyturnServer.stop`). The test keeps its lock
window within the first few hundred milliseconds after start, far from the first
probe, and reports that elapsed time if new calls are not refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.fulfillment.v1 import fulfillment_pb2_grpc
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc

from support.subprocess_server import (
    create_token,
    run_cli_async,
    sqlite_settings,
    start_server,
)

IN_FLIGHT = 20
SEATS = 30
PRODUCT_ID = "shutdown-cad"
SKU_ID = "SHUTDOWN-30"
ACTIVATE = "/keyturn.licensing.v1.LicensingService/ActivateSeat"
STARTED = f"rpc started method={ACTIVATE}"
FINISHED = f"rpc method={ACTIVATE} code="
SHUTTING_DOWN = "shutting down: draining in-flight calls"
STOPPED = "keyturn stopped"
GRACE_S = 60  # far above the test's own bounds: a call cut off by the grace would fail
WAIT_S = 30.0
CALL_TIMEOUT_S = 90.0
CATALOG_YAML = f"""\
products:
  - product_id: {PRODUCT_ID}
    display_name: Shutdown CAD
    editions:
      - edition_id: standard
        display_name: Standard
        features:
          - {{name: export-pdf}}
skus:
  - sku_id: {SKU_ID}
    product_id: {PRODUCT_ID}
    display_name: {SEATS} floating seats, 1 year
    operations:
      - create:
          edition_id: standard
          seats_per_unit: {SEATS}
          term: P1Y
          license_model: LICENSE_MODEL_FLOATING
          lease_duration: 900s
          dispatch: DISPATCH_NONE
"""


def count(lines: Sequence[str], text: str) -> int:
    return sum(text in line for line in lines)


@contextlib.contextmanager
def write_lock(database: Path) -> Iterator[sqlite3.Connection]:
    """Hold SQLite's write lock on `database` until the block ends (then roll back)."""
    connection = sqlite3.connect(database, isolation_level=None, timeout=WAIT_S)
    try:
        connection.execute("BEGIN IMMEDIATE")
        yield connection
    finally:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        connection.close()


async def wait_until_refused(address: str, context: str) -> None:
    """Until a new connection to `address` is refused (the listener is closed), bounded.

    Each round is one health check on a fresh channel; it is answered (SERVING or
    NOT_SERVING) or cut off (CANCELLED) only while the server still accepts connections.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    answers: list[str] = []
    while True:
        async with grpc.aio.insecure_channel(address) as channel:
            try:
                response = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
            except grpc.aio.AioRpcError as error:
                if error.code() is grpc.StatusCode.UNAVAILABLE:
                    return
                # Arrived as the server began to stop: cut off (CANCELLED), never served.
                if error.code() is not grpc.StatusCode.CANCELLED:
                    raise
                answers.append("CANCELLED")
            else:
                answers.append(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
        assert loop.time() < deadline, (
            f"the server still accepted new calls {WAIT_S}s after SIGTERM ({context}); "
            f"health answered {answers[:3]}... ({len(answers)} times)"
        )


async def fulfil(address: str, token: str) -> str:
    """One order of the SKU: the license key of its entitlement."""
    async with grpc.aio.insecure_channel(address) as channel:
        response = await fulfillment_pb2_grpc.FulfillmentServiceStub(channel).FulfillOrder(
            ful.FulfillOrderRequest(
                source="e2e",
                order_id="shutdown-0001",
                customer=ful.Customer(
                    customer_id="cust-1", name="Initech", email="it@initech.example"
                ),
                lines=[ful.OrderLine(sku_id=SKU_ID, quantity=1)],
            ),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=WAIT_S,
        )
    [entitlement] = response.entitlements
    assert entitlement.seats == SEATS
    return entitlement.license_key


def activation(license_key: str, fingerprint: str) -> lic.ActivateSeatRequest:
    return lic.ActivateSeatRequest(
        license_key=license_key, product_id=PRODUCT_ID, fingerprint=fingerprint, label="laptop"
    )


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_lets_calls_in_flight_finish_and_exits_0(
    tmp_path: Path, workers: int
) -> None:
    database = tmp_path / "keyturn.db"
    settings = sqlite_settings(
        database, KEYTURN_LOG_LEVEL="DEBUG", KEYTURN_SHUTDOWN_GRACE_SECONDS=str(GRACE_S)
    )
    # Set-up by the CLI before the server starts (it creates and migrates the database).
    token = await create_token(tmp_path, settings, ("fulfill",))
    (tmp_path / "catalog.yaml").write_text(CATALOG_YAML)
    await run_cli_async(["catalog", "apply", "catalog.yaml"], tmp_path, settings)

    with start_server(tmp_path, settings, workers=workers) as server:
        license_key = await fulfil(server.address, token)
        async with grpc.aio.insecure_channel(server.address) as channel:
            licensing = licensing_pb2_grpc.LicensingServiceStub(channel)
            with write_lock(database) as lock:
                calls = [
                    asyncio.ensure_future(
                        licensing.ActivateSeat(
                            activation(license_key, f"device-{i:04d}"), timeout=CALL_TIMEOUT_S
                        )
                    )
                    for i in range(IN_FLIGHT)
                ]
                try:
                    await server.await_stderr(
                        lambda lines: count(lines, STARTED) >= IN_FLIGHT, WAIT_S
                    )
                    assert count(server.stderr_lines, FINISHED) == 0
                    assert not any(call.done() for call in calls)

                    server.signal(signal.SIGTERM)
                    since_start = time.monotonic() - server.listening_at
                    await server.await_stderr(lambda lines: count(lines, SHUTTING_DOWN) > 0, WAIT_S)
                    # A server shutting down takes no new call, while the old ones still wait.
                    await wait_until_refused(
                        server.address, f"sent {since_start:.2f}s after the server started"
                    )
                    async with grpc.aio.insecure_channel(server.address) as fresh:
                        with pytest.raises(grpc.aio.AioRpcError) as refused:
                            await licensing_pb2_grpc.LicensingServiceStub(fresh).ActivateSeat(
                                activation(license_key, "device-late"), timeout=WAIT_S
                            )
                    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE, refused.value
                    assert server.process.poll() is None, "exited with calls in flight"
                    assert count(server.stderr_lines, FINISHED) == 0
                    assert not any(call.done() for call in calls)
                finally:
                    lock.execute("ROLLBACK")
                    results = await asyncio.gather(*calls, return_exceptions=True)
            code = await server.await_exit(WAIT_S)

    failures = [r for r in results if not isinstance(r, lic.ActivateSeatResponse)]
    assert failures == []
    granted = [r for r in results if isinstance(r, lic.ActivateSeatResponse)]
    assert len({r.activation_id for r in granted}) == IN_FLIGHT
    assert sorted(r.entitlement.seats_in_use for r in granted) == list(range(1, IN_FLIGHT + 1))
    assert all(len(r.lease.token.split(".")) == 3 for r in granted)
    assert code == 0, server.stderr_tail()
    log = server.stderr_lines
    assert count(log, STARTED) == IN_FLIGHT, "the call made after SIGTERM reached a servicer"
    assert count(log, f"{FINISHED}OK ") == IN_FLIGHT
    assert count(log, SHUTTING_DOWN) == workers
    assert count(log, STOPPED) == workers


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigint_on_an_idle_server_exits_0_promptly(tmp_path: Path, workers: int) -> None:
    settings = sqlite_settings(tmp_path / "keyturn.db", KEYTURN_SHUTDOWN_GRACE_SECONDS=str(GRACE_S))
    with start_server(tmp_path, settings, workers=workers) as server:
        # One answered call first: `keyturn serve` prints its listening line before it
        # installs its signal handlers, and a signal in between kills it (exit -2 for
        # SIGINT). A call can only be answered once `_serve` waits, handlers in place.
        async with grpc.aio.insecure_channel(server.address) as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=WAIT_S
            )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        server.signal(signal.SIGINT)
        # Nothing is in flight: the exit must not wait for the (60 s) grace.
        code = await server.await_exit(10)
    assert code == 0, server.stderr_tail()
    log = server.stderr_lines
    assert count(log, SHUTTING_DOWN) == workers
    assert count(log, STOPPED) == workers
    assert not any("Traceback" in line for line in log), server.stderr_tail()
