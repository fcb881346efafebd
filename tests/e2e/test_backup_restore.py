"""`keyturn backup` while a real server keeps serving, `keyturn restore` into a fresh
database, and a server on the restored data, on both backends.

The server writes a catalog, orders, activations, a release, a key rotation and their
events; then devices keep activating and releasing seats while `keyturn backup` runs.
A second server on the restored copy must hold the same seats, renew the leases issued
before the backup, activate with the license keys, publish the same signing keys and
hold the event log up to the backup's recovery point, gap-free. Writes after the
backup are not in it: their leases do not renew.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import jwt
import pytest

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc

from conftest import server_settings
from support.catalog import Metadata, new_license
from support.empty_database import empty_database
from support.rpc import PRODUCT_ID, failure_of
from support.subprocess_server import create_token, run_cli_async, serving

WAIT_S = 60.0
CHURN_BEFORE = 20  # seat calls answered before the backup starts
CHURN_AFTER = 10  # and after it has finished
EVENTS_LINE = re.compile(r"events 1\.\.(?P<last>\d+)(?: and (?P<unnumbered>\d+) committed)?")


def settings(database_url: str) -> dict[str, str]:
    """A server's settings; on SQLite without KEYTURN_SECRET_KEY, so that the secret is the
    generated DATABASE.secrets file, which the backup must carry."""
    env = server_settings(database_url, KEYTURN_SIGNING_KEY_REFRESH_SECONDS="0")
    if database_url.startswith("sqlite"):
        del env["KEYTURN_SECRET_KEY"]
    return env


@pytest.fixture
def restored_url(
    database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[str]:
    backend = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    with empty_database(request, backend, tmp_path / "restored", "restored") as url:
        yield url


def activation(key: str, fingerprint: str) -> lic.ActivateSeatRequest:
    return lic.ActivateSeatRequest(
        license_key=key, product_id=PRODUCT_ID, fingerprint=fingerprint, label="laptop"
    )


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def verify(token: str, jwks_json: str) -> dict[str, object]:
    keys = jwt.PyJWKSet.from_dict(json.loads(jwks_json))
    claims: dict[str, object] = jwt.decode(
        token, keys[kid_of(token)].key, algorithms=["EdDSA"], audience=PRODUCT_ID
    )
    return claims


async def event_log(
    fulfillment: fulfillment_pb2_grpc.FulfillmentServiceStub, auth: Metadata, ids: list[str]
) -> list[ful.EntitlementEvent]:
    """Every event of these entitlements, in sequence order."""
    events: list[ful.EntitlementEvent] = []
    for entitlement_id in ids:
        token = ""
        while True:
            page = await fulfillment.ListEntitlementEvents(
                ful.ListEntitlementEventsRequest(
                    entitlement_id=entitlement_id, page_size=500, page_token=token
                ),
                metadata=auth,
            )
            events.extend(page.events)
            token = page.next_page_token
            if not token:
                break
    return sorted(events, key=lambda event: event.sequence)


def without_sequence(event: ful.EntitlementEvent) -> bytes:
    copy = ful.EntitlementEvent()
    copy.CopyFrom(event)
    copy.sequence = 0
    return copy.SerializeToString(deterministic=True)


async def seats_in_use(licensing: licensing_pb2_grpc.LicensingServiceStub, key: str) -> int:
    response = await licensing.CheckLicense(
        lic.CheckLicenseRequest(license_key=key, product_id=PRODUCT_ID)
    )
    return response.entitlement.seats_in_use


@dataclass
class Churn:
    """Devices taking seats (and every other one giving it back) until told to stop."""

    licensing: licensing_pb2_grpc.LicensingServiceStub
    key: str
    backup_started: bool = False
    backup_done: bool = False
    held_before: list[lic.ActivateSeatResponse] = field(default_factory=list)
    held_after: list[lic.ActivateSeatResponse] = field(default_factory=list)
    during: int = 0  # calls answered while the backup ran
    answered: asyncio.Condition = field(default_factory=asyncio.Condition)
    count: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        index = 0
        while not stop.is_set():
            started_before = not self.backup_started
            seat = await self.licensing.ActivateSeat(activation(self.key, f"churn-{index:05d}"))
            if index % 2:
                await self.licensing.ReleaseSeat(
                    lic.ReleaseSeatRequest(lease_token=seat.lease.token)
                )
            elif started_before:
                self.held_before.append(seat)
            elif self.backup_done:
                self.held_after.append(seat)
            if self.backup_started and not self.backup_done:
                self.during += 1
            index += 1
            async with self.answered:
                self.count += 1
                self.answered.notify_all()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(WAIT_S), self.answered:
            await self.answered.wait_for(lambda: self.count >= count)


async def test_backup_while_serving_restores_seats_leases_keys_and_events(
    database_url: str, restored_url: str, tmp_path: Path
) -> None:
    env = settings(database_url)
    backup_file = tmp_path / "backups" / "keyturn.backup"
    backup_file.parent.mkdir()
    auth = (("authorization", f"Bearer {await create_token(tmp_path, env)}"),)
    async with (
        serving(tmp_path, env) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
        fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub(channel)
        licensing = licensing_pb2_grpc.LicensingServiceStub(channel)
        floating = await new_license(catalog, fulfillment, auth, auth, seats=3)
        locked = await new_license(
            catalog, fulfillment, auth, auth, seats=2, model=cat.LICENSE_MODEL_NODE_LOCKED
        )
        busy = await new_license(catalog, fulfillment, auth, auth, seats=100_000)
        ids = [floating.entitlement_id, locked.entitlement_id, busy.entitlement_id]

        first = await licensing.ActivateSeat(activation(floating.license_key, "device-1"))
        second = await licensing.ActivateSeat(activation(floating.license_key, "device-2"))
        gone = await licensing.ActivateSeat(activation(floating.license_key, "device-3"))
        await licensing.ReleaseSeat(lic.ReleaseSeatRequest(lease_token=gone.lease.token))
        rotated = await run_cli_async(["keys", "rotate"], tmp_path, env)
        new_kid = re.search(r"^new signing key (key_\w+)$", rotated.stdout, re.MULTILINE)
        assert new_kid, rotated.stdout
        renewed = await licensing.RenewLease(lic.RenewLeaseRequest(lease_token=first.lease.token))
        node = await licensing.ActivateSeat(activation(locked.license_key, "workstation-1"))
        assert kid_of(first.lease.token) != new_kid[1]
        assert kid_of(renewed.lease.token) == kid_of(node.lease.token) == new_kid[1]
        held = {
            floating.license_key: await seats_in_use(licensing, floating.license_key),
            locked.license_key: await seats_in_use(licensing, locked.license_key),
        }
        assert list(held.values()) == [2, 1]
        jwks = (await licensing.GetSigningKeys(lic.GetSigningKeysRequest())).jwks_json

        churn = Churn(licensing, busy.license_key)
        stop = asyncio.Event()
        churning = asyncio.create_task(churn.run(stop))
        try:
            await churn.wait_for(CHURN_BEFORE)
            churn.backup_started = True
            made = await run_cli_async(["backup", str(backup_file)], tmp_path, env)
            churn.backup_done = True
            await churn.wait_for(churn.count + CHURN_AFTER)
        finally:
            stop.set()
            await churning
        original_log = await event_log(fulfillment, auth, ids)

    # What the backup says it holds.
    assert made.stdout.startswith(f"backup written to {backup_file}: everything committed before ")
    if database_url.startswith("sqlite"):
        assert f"its secret is in {backup_file}.secrets (mode 0600)" in made.stdout
        assert (backup_file.parent / f"{backup_file.name}.secrets").stat().st_mode & 0o777 == 0o600
    else:
        assert "does not hold the secret: keep KEYTURN_SECRET_KEY with it" in made.stderr
    assert backup_file.stat().st_mode & 0o777 == 0o600
    point = EVENTS_LINE.search(made.stdout)
    assert point, made.stdout
    last, unnumbered = int(point["last"]), int(point["unnumbered"] or 0)
    print(f"seat calls answered while keyturn backup ran: {churn.during}; {point[0]}")
    assert churn.during > 0, "the server answered seat calls while the backup ran"
    assert [event.sequence for event in original_log] == list(range(1, len(original_log) + 1))
    assert last + unnumbered < len(original_log), "writes after the backup are not in it"

    restored_env = {**settings(restored_url)}
    restored = await run_cli_async(["restore", str(backup_file)], tmp_path, restored_env)
    assert "what was written after the backup began is not in it" in restored.stdout
    # The same contents, the events committed unnumbered numbered now, after the others.
    held_events = EVENTS_LINE.search(restored.stdout)
    assert held_events, restored.stdout
    assert (int(held_events["last"]), held_events["unnumbered"]) == (last + unnumbered, None)
    schema = made.stdout.split("(", 1)[1].split(", events", 1)[0]
    assert f": {schema}, events 1..{last + unnumbered}" in restored.stdout, restored.stdout
    if unnumbered:
        assert f"the last {unnumbered} were committed unnumbered" in restored.stdout

    async with (
        serving(tmp_path, restored_env) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub(channel)
        licensing = licensing_pb2_grpc.LicensingServiceStub(channel)

        # The event log up to the backup: the numbered events identical, then those that
        # were committed but not yet numbered, in the order they were written.
        log = await event_log(fulfillment, auth, ids)
        assert [event.sequence for event in log] == list(range(1, last + unnumbered + 1))
        assert log[:last] == original_log[:last]
        later = [without_sequence(event) for event in original_log[last:]]
        positions = [later.index(without_sequence(event)) for event in log[last:]]
        assert positions == sorted(positions), "the unnumbered events keep their order"

        # The same signing keys, and every lease issued before the backup verifies.
        assert (await licensing.GetSigningKeys(lic.GetSigningKeysRequest())).jwks_json == jwks
        for lease in (
            second.lease,
            renewed.lease,
            node.lease,
            *(s.lease for s in churn.held_before),
        ):
            verify(lease.token, jwks)

        # The same seats held: those of before the backup, and the busy entitlement's as
        # its last restored event left them.
        for key, count in held.items():
            assert await seats_in_use(licensing, key) == count
        busy_events = [event for event in log if event.entitlement_id == busy.entitlement_id]
        assert await seats_in_use(licensing, busy.license_key) == (
            busy_events[-1].entitlement.seats_in_use
        )

        # Leases of before the backup renew; those of after it are unknown here.
        for lease in (
            second.lease,
            renewed.lease,
            node.lease,
            *(s.lease for s in churn.held_before),
        ):
            again = await licensing.RenewLease(lic.RenewLeaseRequest(lease_token=lease.token))
            assert verify(again.lease.token, jwks)["sub"] == verify(lease.token, jwks)["sub"]
        assert churn.held_after
        with pytest.raises(grpc.aio.AioRpcError) as lost:
            await licensing.RenewLease(
                lic.RenewLeaseRequest(lease_token=churn.held_after[-1].lease.token)
            )
        assert (failure_of(lost.value).code, failure_of(lost.value).reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "LEASE_SUPERSEDED",  # an activation it does not know: the device activates again
        )

        # License keys still activate: a free seat each.
        third = await licensing.ActivateSeat(activation(floating.license_key, "device-4"))
        assert third.entitlement.seats_in_use == 3
        other = await licensing.ActivateSeat(activation(locked.license_key, "workstation-2"))
        assert other.entitlement.seats_in_use == 2
        with pytest.raises(grpc.aio.AioRpcError) as full:
            await licensing.ActivateSeat(activation(floating.license_key, "device-5"))
        assert failure_of(full.value).reason == "SEATS_EXHAUSTED"
