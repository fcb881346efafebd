"""`keyturn keys rotate|list` and `keyturn serve` as real child processes, on both backends.

A rotation made by the CLI while a `keyturn serve` process runs on the same
database takes effect at that server's next lease; a server started with a
secret key that does not open the stored signing keys refuses to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import jwt
import pytest

from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.app.tokens import create_token
from keyturn.server.bootstrap import build_context

from conftest import TEST_SECRET, server_settings, settings_for
from support.catalog import new_license
from support.rpc import PRODUCT_ID
from support.subprocess_server import (
    CLI_TIMEOUT_S,
    child_env,
    keyturn_command,
    run_cli_async,
    serving,
)
from support.workers import channel_to, listening_workers

LEASE = timedelta(seconds=900)  # the lease duration of support.rpc.create_sku
MARGIN = timedelta(minutes=5)  # added to the longest lease when a key is retired
OTHER_SECRET = "another-secret-key-9876543210-zyxwvutsrqponm"
KEY_LINE = re.compile(r"^(?P<kid>key_\w+)  created (?P<created>\S+)  (?P<state>.+)$")

THROUGH_PGBOUNCER = True  # conftest: also through PgBouncer in transaction mode


def settings(database_url: str, secret: str = TEST_SECRET) -> dict[str, str]:
    return server_settings(database_url, KEYTURN_SECRET_KEY=secret)


async def keys_list(cwd: Path, env: dict[str, str]) -> dict[str, str]:
    """`keyturn keys list` as {kid: state}, in its order (newest first)."""
    output = (await run_cli_async(["keys", "list"], cwd, env)).stdout.splitlines()
    states = {}
    for line in output:
        match = KEY_LINE.match(line)
        assert match, f"unexpected line of keyturn keys list: {line!r}"
        states[match["kid"]] = match["state"]
    return states


async def api_token(database_url: str) -> str:
    """A bearer secret with every scope, made in this process (set-up, not under test)."""
    ctx = await build_context(settings_for(database_url))
    try:
        _, secret = await create_token(ctx, {"catalog", "fulfill", "read"}, "keys e2e")
    finally:
        await ctx.store.close()
    return secret


def kid_of(token: str) -> str:
    kid = jwt.get_unverified_header(token)["kid"]
    assert isinstance(kid, str)
    return kid


def activation(key: str, fingerprint: str) -> lic.ActivateSeatRequest:
    return lic.ActivateSeatRequest(
        license_key=key, product_id=PRODUCT_ID, fingerprint=fingerprint, label="laptop"
    )


@pytest.mark.parametrize("workers", [1, 2])
async def test_keys_rotate_is_picked_up_by_a_running_server(
    database_url: str, tmp_path: Path, workers: int
) -> None:
    # The server looks the signing key up at every signature (the default: every 10 s).
    env = {
        **settings(database_url),
        "KEYTURN_SIGNING_KEY_REFRESH_SECONDS": "0",
        "KEYTURN_WORKERS": str(workers),  # with 2, calls reach both workers of one port
    }
    auth = (("authorization", f"Bearer {await api_token(database_url)}"),)
    async with (
        serving(tmp_path, env) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        licensing = licensing_pb2_grpc.LicensingServiceStub(channel)
        entitlement = await new_license(
            catalog_pb2_grpc.CatalogServiceStub(channel),
            fulfillment_pb2_grpc.FulfillmentServiceStub(channel),
            auth,
            auth,
            seats=2 + workers,
        )
        first = await licensing.ActivateSeat(activation(entitlement.license_key, "device-0001"))
        old_kid = kid_of(first.lease.token)
        assert await keys_list(tmp_path, env) == {old_kid: "signing"}

        before = datetime.now(UTC)
        rotated = await run_cli_async(["keys", "rotate"], tmp_path, env)
        after = datetime.now(UTC)
        new = re.search(r"^new signing key (key_\w+)$", rotated.stdout, re.MULTILINE)
        assert new, rotated.stdout
        new_kid = new[1]
        retiring = re.search(
            rf"^key {old_kid} stops signing now and retires at (\S+)$",
            rotated.stdout,
            re.MULTILINE,
        )
        assert retiring, rotated.stdout
        retire_time = datetime.fromisoformat(retiring[1])
        # The only entitlement's lease is the longest one.
        assert before + LEASE + MARGIN <= retire_time <= after + LEASE + MARGIN

        # The server publishes the new key at once (it reads the keys from the database).
        response = await licensing.GetSigningKeys(lic.GetSigningKeysRequest())
        assert [key.kid for key in response.keys] == [new_kid, old_kid]

        # The server's next leases, by activation and by renewal, carry the new kid.
        second = await licensing.ActivateSeat(activation(entitlement.license_key, "device-0002"))
        renewed = await licensing.RenewLease(lic.RenewLeaseRequest(lease_token=first.lease.token))
        assert kid_of(second.lease.token) == new_kid
        assert kid_of(renewed.lease.token) == new_kid
        # Every worker signs with it: a connection to each, chosen by its pid.
        for pid in (await listening_workers(server, workers)).values() if workers > 1 else ():
            per_worker = await channel_to(server.address, pid)
            try:
                seat = await licensing_pb2_grpc.LicensingServiceStub(per_worker).ActivateSeat(
                    activation(entitlement.license_key, f"device-worker-{pid}")
                )
            finally:
                await per_worker.close()
            assert kid_of(seat.lease.token) == new_kid

        response = await licensing.GetSigningKeys(lic.GetSigningKeysRequest())
        keys = jwt.PyJWKSet.from_dict(json.loads(response.jwks_json))
        for token in (first.lease.token, second.lease.token, renewed.lease.token):
            claims = jwt.decode(
                token, keys[kid_of(token)].key, algorithms=["EdDSA"], audience=PRODUCT_ID
            )
            assert claims["entitlement_id"] == entitlement.entitlement_id

        states = await keys_list(tmp_path, env)
        assert list(states) == [new_kid, old_kid], "newest first"
        assert states[new_kid] == "signing"
        assert states[old_kid] == f"published until {retire_time.isoformat()}"


async def test_serve_with_another_secret_key_exits_1_naming_the_signing_key(
    database_url: str, tmp_path: Path
) -> None:
    created = settings(database_url)
    states = await keys_list(tmp_path, created)  # creates the first signing key
    [kid] = states
    assert states[kid] == "signing"

    result = await asyncio.to_thread(
        subprocess.run,
        [*keyturn_command(), "serve", "--listen", "127.0.0.1:0"],
        cwd=tmp_path,
        env=child_env(settings(database_url, secret=OTHER_SECRET)),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,  # a server that wrongly started would run until this
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert (
        f"keyturn: signing key {kid}: stored data cannot be decrypted with this secret key"
        in result.stderr
    ), result.stderr
    assert "listening" not in result.stdout
    assert "Traceback" not in result.stderr

    # The failed start wrote nothing (no new key), and the right secret still opens the key
    # (keys list, like serve, decrypts every stored key first).
    assert await keys_list(tmp_path, created) == {kid: "signing"}


async def test_keys_rotate_is_picked_up_by_three_replicas(
    database_url: str, tmp_path: Path
) -> None:
    """Three `keyturn serve` replicas of one database: after `keyturn keys rotate` each
    signs with the new key, and every lease verifies against any replica's JWKS."""
    env = {**settings(database_url), "KEYTURN_SIGNING_KEY_REFRESH_SECONDS": "0"}
    auth = (("authorization", f"Bearer {await api_token(database_url)}"),)
    async with contextlib.AsyncExitStack() as stack:
        replicas = [await stack.enter_async_context(serving(tmp_path, env)) for _ in range(3)]
        channels = [
            await stack.enter_async_context(grpc.aio.insecure_channel(r.address)) for r in replicas
        ]
        entitlement = await new_license(
            catalog_pb2_grpc.CatalogServiceStub(channels[0]),
            fulfillment_pb2_grpc.FulfillmentServiceStub(channels[0]),
            auth,
            auth,
            seats=6,
        )
        stubs = [licensing_pb2_grpc.LicensingServiceStub(c) for c in channels]
        before = [
            await stub.ActivateSeat(activation(entitlement.license_key, f"device-old-{i}"))
            for i, stub in enumerate(stubs)
        ]
        old_kids = {kid_of(seat.lease.token) for seat in before}
        assert len(old_kids) == 1
        rotated = await run_cli_async(["keys", "rotate"], tmp_path, env)
        new = re.search(r"^new signing key (key_\w+)$", rotated.stdout, re.MULTILINE)
        assert new, rotated.stdout
        after = [
            await stub.ActivateSeat(activation(entitlement.license_key, f"device-new-{i}"))
            for i, stub in enumerate(stubs)
        ]
        assert [kid_of(seat.lease.token) for seat in after] == [new[1]] * 3
        for stub in stubs:
            response = await stub.GetSigningKeys(lic.GetSigningKeysRequest())
            keys = jwt.PyJWKSet.from_dict(json.loads(response.jwks_json))
            for seat in (*before, *after):
                token = seat.lease.token
                claims = jwt.decode(
                    token, keys[kid_of(token)].key, algorithms=["EdDSA"], audience=PRODUCT_ID
                )
                assert claims["sub"] == seat.activation_id
