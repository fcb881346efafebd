"""No credential leaves the server but to whom it is due, even at log level DEBUG.

A real `keyturn serve` at DEBUG (text and JSON lines, on SQLite and PostgreSQL),
with the `keyturn` commands beside it, goes through a working day: the catalog is
loaded, an order is fulfilled (a license key, named users with invitations, the
emails sent over real SMTP, one refused by the mail server), an invitation is
redeemed for an identity token, seats are taken, renewed and released, the signing
key is rotated, API tokens are made with `keyturn tokens create`, and mistaken
calls are answered. Then every line logged, every error answered, every event of
the change stream and every row of the database is searched for each license
key, invitation code, API token, identity token, lease token, signing key and the
master secret: none may be there. Customer names and email addresses may be in
events and rows (an entitlement carries its customer), never in a log line.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import sqlalchemy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import text_format
from google.rpc import error_details_pb2, status_pb2

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.fulfillment.v1 import fulfillment_pb2_grpc
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.sealing import Sealer
from keyturn.server.store.database import create_engine
from keyturn.server.store.tables import metadata
from keyturn.server.store.unit_of_work import Store

from conftest import TEST_SECRET, server_settings
from support.catalog import Metadata
from support.rpc import failure_of
from support.smtp import Mailbox, SmtpServer, body_text
from support.subprocess_server import ServerProcess, run_cli_async, serving
from support.watch import next_event, watch

CATALOG = Path(__file__).resolve().parents[2] / "examples" / "catalog.yaml"
PRODUCT_ID = "acme-cad"
FLOATING_SKU = "CAD-STD-1Y"  # emails its license key
NAMED_SKU = "CAD-PRO-NAMED-1Y"  # emails an invitation to each named user
WAIT_S = 30.0
KEY_SHAPE = re.compile(r"[0-9A-Z]{5}(-[0-9A-Z]{5}){5}")
JWT_SHAPE = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]{40,}")
_ = error_details_pb2  # registers ErrorInfo and BadRequest, so that status details print in full

Licensing = licensing_pb2_grpc.LicensingServiceStub
Fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub


class RefusingMailbox(Mailbox):
    """Accepts mail, except for one recipient, refused with its address quoted (as
    mail servers write it)."""

    def __init__(self, refused: str) -> None:
        super().__init__()
        self.refused = refused

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address == self.refused:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"


@dataclass
class Trail:
    """What the scenario made (credentials, personal data) and what it was shown."""

    secrets: dict[str, str] = field(default_factory=dict)
    personal: dict[str, str] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)

    def secret(self, label: str, value: str) -> str:
        assert value, f"the scenario got no {label}"
        self.secrets[label] = value
        return value

    async def refused(self, call: Awaitable[Any], reason: str) -> None:
        """`call` fails with `reason`; everything its caller is told goes to the trail."""
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert failure_of(caught.value).reason == reason, caught.value
        self.errors.append(error_text(caught.value))


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def error_text(error: grpc.aio.AioRpcError) -> str:
    """The code, message and every trailer of a failure, the status details decoded."""
    parts = [error.code().name, error.details() or ""]
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            assert isinstance(value, bytes)
            parts.append(text_format.MessageToString(status_pb2.Status.FromString(value)))
        else:
            parts.append(f"{key}: {value!r}")
    return "\n".join(parts)


def forms(value: str) -> set[str]:
    """How a credential could be written out, lower-cased (the search ignores case):
    as issued; a key or code also without its dashes; a JWT's signature alone; an API
    token without its prefix."""
    found = {value}
    if KEY_SHAPE.fullmatch(value):
        found.add(value.replace("-", ""))
    if JWT_SHAPE.fullmatch(value):
        found.add(value.rsplit(".", 1)[1])
    if value.startswith("kt_"):
        found.add(value.removeprefix("kt_"))
    return {form.lower() for form in found}


def private_key_forms(raw: bytes) -> list[str]:
    """An Ed25519 private key as it could be written: hex, base64 (a JWK's `d`), PEM."""
    pem = (
        Ed25519PrivateKey.from_private_bytes(raw)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    return [
        raw.hex(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        base64.b64encode(raw).decode().rstrip("="),
        "".join(pem.splitlines()[1:-1]),
    ]


def found_in(texts: Iterable[str], wanted: dict[str, str]) -> dict[str, str]:
    """The entries of `wanted` (label: value) that some text holds in any form."""
    corpus = "\n".join(texts).lower()
    return {label: v for label, v in wanted.items() if any(f in corpus for f in forms(v))}


async def cli(trail: Trail, args: list[str], cwd: Path, env: dict[str, str]) -> str:
    """One `keyturn` command; what it printed goes to the trail (but the token that
    `tokens create` prints, once, by design) and its output is returned."""
    result = await run_cli_async(args, cwd, env)
    trail.logs.extend(result.stderr.splitlines())
    if args[0] != "tokens":
        trail.logs.extend(result.stdout.splitlines())
    return result.stdout


async def new_token(
    trail: Trail, label: str, scopes: list[str], cwd: Path, env: dict[str, str]
) -> Metadata:
    """`keyturn tokens create`: bearer metadata with the token it printed."""
    args = ["tokens", "create", "--create", *(f"--scope={scope}" for scope in scopes)]
    printed = trail.secret(label, (await cli(trail, args, cwd, env)).strip())
    return (("authorization", f"Bearer {printed}"),)


async def events_of(trail: Trail, fulfillment: Fulfillment, auth: Metadata, ids: list[str]) -> None:
    """Every event of these entitlements (ListEntitlementEvents, page by page), then the
    change stream from the start up to the last of them."""
    last = 0
    for entitlement_id in ids:
        token = ""
        while True:
            page = await fulfillment.ListEntitlementEvents(
                ful.ListEntitlementEventsRequest(
                    entitlement_id=entitlement_id, page_size=2, page_token=token
                ),
                metadata=auth,
                timeout=WAIT_S,
            )
            trail.events.extend(str(event) for event in page.events)
            last = max([last, *(event.sequence for event in page.events)])
            token = page.next_page_token
            if not token:
                break
    stream = watch(fulfillment, auth, 0)
    try:
        sequence = 0
        while sequence < last:
            event = await next_event(stream)
            trail.events.append(str(event))
            sequence = event.sequence
    finally:
        stream.cancel()


async def database_rows(database_url: str, trail: Trail) -> list[bytes]:
    """Every row of every table into the trail; the signing keys' private halves, unsealed."""
    store = Store.from_url(database_url)
    try:
        async with store.read() as tx:
            for table in metadata.sorted_tables:
                result = await tx.connection.execute(sqlalchemy.select(table))
                trail.rows.extend(f"{table.name} {tuple(row)!r}" for row in result)
            stored = await tx.signing_keys.list_all()
    finally:
        await store.close()
    sealer = Sealer(TEST_SECRET)
    return [sealer.unseal(key.private_key_sealed) for key in stored]


async def working_day(
    trail: Trail,
    server: ServerProcess,
    cwd: Path,
    env: dict[str, str],
    mailbox: RefusingMailbox,
    admin: Metadata,
    reader: Metadata,
    people: dict[str, str],
) -> None:
    """The scenario against a running server, up to the events it wrote."""
    async with grpc.aio.insecure_channel(server.address) as channel:
        fulfillment, licensing = Fulfillment(channel), Licensing(channel)
        order = ful.FulfillOrderRequest(
            source="shop",
            order_id=f"order-{uuid.uuid4().hex[:8]}",
            customer=ful.Customer(
                customer_id="cust-secrets", name=people["name"], email=people["customer"]
            ),
            lines=[
                ful.OrderLine(sku_id=FLOATING_SKU, quantity=2),
                ful.OrderLine(
                    sku_id=NAMED_SKU,
                    quantity=2,
                    named_user_emails=[people["named user"], people["refused user"]],
                ),
            ],
        )
        fulfilled = await fulfillment.FulfillOrder(order, metadata=admin, timeout=WAIT_S)
        floating, named = fulfilled.entitlements
        key = trail.secret("license key", floating.license_key)
        codes = {user.email: user.invitation_code for user in named.named_users}
        code = trail.secret("invitation code", codes[people["named user"]])
        trail.secret("other invitation code", codes[people["refused user"]])
        replayed = await fulfillment.FulfillOrder(order, metadata=admin, timeout=WAIT_S)
        assert replayed.entitlements[0].license_key == key

        redeemed = await licensing.RedeemInvitation(
            lic.RedeemInvitationRequest(invitation_code=code), timeout=WAIT_S
        )
        identity = trail.secret("identity token", redeemed.identity_token)
        await trail.refused(
            licensing.RedeemInvitation(lic.RedeemInvitationRequest(invitation_code=code)),
            "INVITATION_REDEEMED",
        )

        def activation(fingerprint: str, **credential: str) -> lic.ActivateSeatRequest:
            return lic.ActivateSeatRequest(
                product_id=PRODUCT_ID, fingerprint=fingerprint, label="laptop", **credential
            )

        first = await licensing.ActivateSeat(activation("device-0001", license_key=key))
        lease = trail.secret("lease", first.lease.token)
        renewed = await licensing.RenewLease(lic.RenewLeaseRequest(lease_token=lease))
        newer = trail.secret("renewed lease", renewed.lease.token)
        await trail.refused(
            licensing.RenewLease(lic.RenewLeaseRequest(lease_token=lease)), "LEASE_SUPERSEDED"
        )
        await licensing.ReleaseSeat(lic.ReleaseSeatRequest(lease_token=newer))
        await trail.refused(
            licensing.ReleaseSeat(lic.ReleaseSeatRequest(lease_token=lease)), "LEASE_SUPERSEDED"
        )
        named_seat = await licensing.ActivateSeat(
            activation("device-0002", identity_token=identity)
        )
        named_lease = trail.secret("named user's lease", named_seat.lease.token)
        await licensing.CheckLicense(
            lic.CheckLicenseRequest(identity_token=identity, product_id=PRODUCT_ID)
        )
        await trail.refused(
            licensing.CheckLicense(lic.CheckLicenseRequest(license_key=key, product_id="other")),
            "PRODUCT_MISMATCH",
        )

        rotated = await cli(trail, ["keys", "rotate"], cwd, env)
        assert rotated.startswith("new signing key "), rotated
        after_rotation = await licensing.ActivateSeat(activation("device-0003", license_key=key))
        new_key_lease = trail.secret("lease signed by the new key", after_rotation.lease.token)
        assert kid_of(new_key_lease) != kid_of(lease)
        renewed_named = await licensing.RenewLease(lic.RenewLeaseRequest(lease_token=named_lease))
        trail.secret("renewed named user's lease", renewed_named.lease.token)

        # Mistakes, each close to a real credential.
        tampered = newer[:-4] + ("AAAA" if not newer.endswith("AAAA") else "BBBB")
        await trail.refused(
            licensing.RenewLease(lic.RenewLeaseRequest(lease_token=tampered)), "INVALID_LEASE"
        )
        mistyped = key[:-1] + ("0" if key[-1] != "0" else "1")
        await trail.refused(
            licensing.ActivateSeat(activation("device-0004", license_key=mistyped)),
            "INVALID_LICENSE_KEY",
        )
        await trail.refused(fulfillment.FulfillOrder(order, metadata=reader), "INSUFFICIENT_SCOPE")
        forged = (("authorization", f"Bearer {admin[0][1].removeprefix('Bearer ')[:-2]}xx"),)
        await trail.refused(fulfillment.FulfillOrder(order, metadata=forged), "INVALID_TOKEN")

        await fulfillment.ResendCredentials(
            ful.ResendCredentialsRequest(entitlement_id=floating.entitlement_id), metadata=admin
        )
        # The key twice (the order, the resend), the one invitation the server accepts.
        mails = await mailbox.wait_for(lambda got: len(got) >= 3, WAIT_S)
        assert sum(key in body_text(mail) for mail in mails) == 2
        assert sum(code in body_text(mail) for mail in mails) == 1
        await server.await_stderr(
            lambda lines: any("failed (permanent)" in x for x in lines), WAIT_S
        )

        ids = [floating.entitlement_id, named.entitlement_id]
        await events_of(trail, fulfillment, reader, ids)


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_no_credential_in_logs_errors_events_or_rows(
    database_url: str, tmp_path: Path, log_format: str
) -> None:
    run = uuid.uuid4().hex[:8]
    people = {
        "name": f"Ada Lovelace-{run}",
        "customer": f"ada.{run}@example.test",
        "named user": f"grace.{run}@example.test",
        "refused user": f"alan.{run}@example.test",
    }
    mailbox = RefusingMailbox(refused=people["refused user"])
    smtp = SmtpServer(mailbox)
    smtp.start()
    trail = Trail(personal=people)
    trail.secret("master secret", TEST_SECRET)
    env = server_settings(
        database_url,
        KEYTURN_LOG_LEVEL="DEBUG",
        KEYTURN_LOG_FORMAT=log_format,
        KEYTURN_SMTP_HOST="127.0.0.1",
        KEYTURN_SMTP_PORT=str(smtp.port),
        KEYTURN_SMTP_SECURITY="none",
        KEYTURN_SIGNING_KEY_REFRESH_SECONDS="0",
    )
    try:
        admin = await new_token(trail, "API token", ["catalog", "fulfill", "read"], tmp_path, env)
        reader = await new_token(trail, "read-only API token", ["read"], tmp_path, env)
        applied = await cli(trail, ["catalog", "apply", str(CATALOG)], tmp_path, env)
        assert applied.startswith("applied 1 products"), applied
        async with serving(tmp_path, env) as server:
            await working_day(trail, server, tmp_path, env, mailbox, admin, reader, people)
        assert server.process.returncode == 0, server.stderr_tail()
    finally:
        smtp.stop()
    trail.logs.extend(server.stdout_lines + server.stderr_lines)
    for index, raw in enumerate(await database_rows(database_url, trail)):
        for number, form in enumerate(private_key_forms(raw)):
            trail.secrets[f"signing key {index} (form {number})"] = form

    # The search looks where the data is: the log is DEBUG, the events carry the
    # customer, the rows every person.
    assert any("rpc started method=" in line for line in trail.logs)
    assert found_in(trail.events, people).keys() == {"name", "customer"}
    assert found_in(trail.rows, people) == people
    assert len(trail.errors) == 8
    assert found_in(trail.logs, trail.secrets) == {}
    assert found_in(trail.errors, trail.secrets) == {}
    assert found_in(trail.events, trail.secrets) == {}
    assert found_in(trail.rows, trail.secrets) == {}
    assert found_in(trail.logs, people) == {}


async def test_a_failed_statement_shows_no_parameter(database_url: str) -> None:
    """A database error (logged in full when it is unexpected) names the statement, never
    the values sent with it."""
    email = f"ada.{uuid.uuid4().hex[:8]}@example.test"
    engine = create_engine(database_url)
    statement = sqlalchemy.text("SELECT :email FROM no_such_table")
    try:
        async with engine.connect() as connection:
            with pytest.raises(sqlalchemy.exc.DBAPIError) as caught:
                await connection.execute(statement, {"email": email})
    finally:
        await engine.dispose()
    message = str(caught.value)
    assert "no_such_table" in message
    assert "[SQL parameters hidden due to hide_parameters=True]" in message
    assert email not in message
