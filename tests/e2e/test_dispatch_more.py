"""Invitation emails, ResendCredentials, mail templates and `keyturn dispatch` as a process.

Real servers, real databases (both backends), a real SMTP server (aiosmtpd on
loopback). Nothing sleeps: tests wait on the dispatcher's `settled` bell, on
the mailbox or on the child process's log, each with a timeout.
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc

from conftest import TEST_SECRET, Tokens
from support.catalog import put_catalog
from support.mailing import KEY_SKU, WAIT_S, Messages, mailing, sent_line
from support.rpc import PRODUCT_ID, create_sku, order
from support.smtp import SmtpServer, body_html, body_text
from support.subprocess_server import (
    CLI_TIMEOUT_S,
    child_env,
    keyturn_command,
    sqlite_settings,
    start_dispatcher,
)

INVITE_SKU = "TEAM-3"
SHIP_TO = "it@initech.example"
ALICE = "alice@initech.example"
BOB = "bob@initech.example"
CAROL = "carol@initech.example"
SENT = ful.MESSAGE_STATE_SENT
CODE_IN_TEXT = re.compile(r"^Invitation code: (\S+)\r?$", re.MULTILINE)  # SMTP lines end in CRLF

Fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub
Licensing = licensing_pb2_grpc.LicensingServiceStub


def invitation_sku(sku_id: str = INVITE_SKU, seats: int = 3) -> cat.Sku:
    """A SKU whose entitlements email an invitation to each named user, not the key."""
    return cat.Sku(
        sku_id=sku_id,
        product_id=PRODUCT_ID,
        display_name=sku_id,
        operations=[
            cat.Operation(
                create=cat.CreateOperation(
                    edition_id="standard",
                    seats_per_unit=seats,
                    term="P1Y",
                    license_model=cat.LICENSE_MODEL_FLOATING,
                    lease_duration=duration_pb2.Duration(seconds=900),
                    dispatch=cat.DISPATCH_INVITATION,
                )
            )
        ],
    )


def team_order(order_id: str, *emails: str) -> ful.FulfillOrderRequest:
    return ful.FulfillOrderRequest(
        source="test",
        order_id=order_id,
        customer=ful.Customer(customer_id="cust-1", name="Initech", email=SHIP_TO),
        lines=[ful.OrderLine(sku_id=INVITE_SKU, quantity=1, named_user_emails=list(emails))],
    )


def named_order(order_id: str, customer_name: str) -> ful.FulfillOrderRequest:
    request = order(order_id, KEY_SKU)
    request.customer.name = customer_name
    return request


def all_sent(count: int) -> Callable[[Messages], bool]:
    return lambda ms: len(ms) == count and all(m.state == SENT for m in ms)


def message_id_header(message: ful.OutboundMessage) -> str:
    return f"<{message.message_id}@localhost>"


def invitation_codes(response: ful.FulfillOrderResponse) -> dict[str, str]:
    (entitlement,) = response.entitlements
    codes = {user.email: user.invitation_code for user in entitlement.named_users}
    assert all(codes.values()), "FulfillOrder returns each new user's invitation code"
    return codes


def code_in(mail: EmailMessage) -> str:
    """The invitation code as the email's plain text shows it."""
    found = CODE_IN_TEXT.search(body_text(mail))
    assert found, f"no invitation code in:\n{body_text(mail)}"
    return found[1]


# --- 4. invitations ------------------------------------------------------------------------


async def test_each_named_user_is_mailed_their_invitation_and_can_redeem_it(
    database_url: str, smtp: SmtpServer, tokens: Tokens
) -> None:
    async with mailing(database_url, smtp, tokens, invitation_sku()) as m:
        response = await m.fulfil(team_order("o-1", ALICE, BOB))
        codes = invitation_codes(response)
        assert set(codes) == {ALICE, BOB}
        queued = {message.to: message for message in response.order.messages}
        assert set(queued) == {ALICE, BOB}
        assert {message.kind for message in queued.values()} == {ful.MESSAGE_KIND_INVITATION}
        await m.until("o-1", all_sent(2))
        await smtp.mailbox.wait_for(lambda got: len(got) >= 2)

        from_mail = {}
        for email in (ALICE, BOB):
            (mail,) = smtp.mailbox.to(email)
            from_mail[email] = code_in(mail)
            assert from_mail[email] == codes[email]
            assert codes[email] in body_html(mail)
            assert str(mail["Message-ID"]) == message_id_header(queued[email])
        assert len(smtp.mailbox.messages) == 2  # and no license-key email
        assert smtp.mailbox.to(SHIP_TO) == []
        key = response.entitlements[0].license_key
        assert all(key not in body_text(mail) for mail in smtp.mailbox.messages)

        # The code as read from the email is the user's credential.
        redeemed = await m.licensing.RedeemInvitation(
            lic.RedeemInvitationRequest(invitation_code=from_mail[BOB])
        )
        assert redeemed.identity_token
        seat = await m.licensing.ActivateSeat(
            lic.ActivateSeatRequest(
                identity_token=redeemed.identity_token,
                product_id=PRODUCT_ID,
                fingerprint="device-of-bob",
            )
        )
    assert seat.activation_id
    assert seat.entitlement.entitlement_id == response.entitlements[0].entitlement_id


# --- 5. ResendCredentials ------------------------------------------------------------------


async def test_resend_mails_the_same_license_key_again(
    database_url: str, smtp: SmtpServer, tokens: Tokens
) -> None:
    async with mailing(database_url, smtp, tokens) as m:
        response = await m.fulfil(order("o-1", KEY_SKU))
        (entitlement,) = response.entitlements
        (first,) = await m.until("o-1", all_sent(1))
        resent = await m.fulfillment.ResendCredentials(
            ful.ResendCredentialsRequest(entitlement_id=entitlement.entitlement_id),
            metadata=tokens("fulfill"),
        )
        assert resent.queued_messages == 1
        (again,) = resent.messages
        assert again.kind == ful.MESSAGE_KIND_LICENSE_KEY
        assert again.to == SHIP_TO
        assert again.entitlement_id == entitlement.entitlement_id
        assert again.message_id != first.message_id
        messages = await m.until("o-1", all_sent(2))
        await smtp.mailbox.wait_for(lambda got: len(got) >= 2)
    assert [message.message_id for message in messages] == [first.message_id, again.message_id]
    assert smtp.mailbox.message_ids() == [message_id_header(first), message_id_header(again)]
    for mail in smtp.mailbox.messages:
        assert entitlement.license_key in body_text(mail)
        assert entitlement.license_key in body_html(mail)
        assert str(mail["To"]) == SHIP_TO


async def test_resend_invites_again_only_the_users_who_have_not_redeemed(
    database_url: str, smtp: SmtpServer, tokens: Tokens
) -> None:
    async with mailing(database_url, smtp, tokens, invitation_sku()) as m:
        response = await m.fulfil(team_order("o-1", ALICE, BOB, CAROL))
        codes = invitation_codes(response)
        await m.until("o-1", all_sent(3))
        await m.licensing.RedeemInvitation(
            lic.RedeemInvitationRequest(invitation_code=codes[ALICE])
        )

        resent = await m.fulfillment.ResendCredentials(
            ful.ResendCredentialsRequest(entitlement_id=response.entitlements[0].entitlement_id),
            metadata=tokens("fulfill"),
        )
        assert resent.queued_messages == 2  # Bob and Carol have not redeemed theirs
        assert sorted(message.to for message in resent.messages) == [BOB, CAROL]
        assert {message.kind for message in resent.messages} == {ful.MESSAGE_KIND_INVITATION}
        messages = await m.until("o-1", all_sent(5))
        await smtp.mailbox.wait_for(lambda got: len(got) >= 5)
    assert sorted(message.to for message in messages) == [ALICE, BOB, BOB, CAROL, CAROL]
    assert len(smtp.mailbox.to(ALICE)) == 1
    for email in (BOB, CAROL):
        mails = smtp.mailbox.to(email)
        assert [code_in(mail) for mail in mails] == [codes[email]] * 2  # the same code again
    assert sorted(smtp.mailbox.message_ids()) == sorted(message_id_header(m) for m in messages)


async def test_resend_needs_the_fulfill_scope(
    catalog_stub: catalog_pb2_grpc.CatalogServiceStub,
    fulfillment_stub: Fulfillment,
    tokens: Tokens,
) -> None:
    await put_catalog(catalog_stub, tokens("catalog"), create_sku(KEY_SKU))
    response = await fulfillment_stub.FulfillOrder(
        order("o-1", KEY_SKU), metadata=tokens("fulfill")
    )
    request = ful.ResendCredentialsRequest(entitlement_id=response.entitlements[0].entitlement_id)
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await fulfillment_stub.ResendCredentials(request, metadata=tokens("read"))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    stored = await fulfillment_stub.GetOrder(
        ful.GetOrderRequest(source="test", order_id="o-1"), metadata=tokens("read")
    )
    assert len(stored.order.messages) == 1  # nothing queued by the denied call


# --- 6. templates --------------------------------------------------------------------------


async def test_templates_in_the_mail_templates_folder_replace_the_shipped_ones(
    database_url: str, smtp: SmtpServer, tokens: Tokens, tmp_path: Path
) -> None:
    folder = tmp_path / "mail"
    folder.mkdir()
    (folder / "license_key.subject.j2").write_text("Key for {{ customer_name }}\n")
    (folder / "license_key.txt.j2").write_text("KEY {{ license_key }} FOR {{ customer_name }}\n")
    (folder / "license_key.html.j2").write_text(
        "<p>KEY <b>{{ license_key }}</b> FOR <i>{{ customer_name }}</i></p>\n"
    )
    async with mailing(database_url, smtp, tokens, mail_templates=folder) as m:
        response = await m.fulfil(named_order("o-1", "Bob & <Sons>"))
        (mail,) = await smtp.mailbox.wait_for(lambda got: len(got) >= 1)
    key = response.entitlements[0].license_key
    assert str(mail["Subject"]) == "Key for Bob & <Sons>"
    assert body_text(mail).splitlines() == [f"KEY {key} FOR Bob & <Sons>"]
    # The vendor's HTML template is autoescaped too.
    assert body_html(mail).splitlines() == [
        f"<p>KEY <b>{key}</b> FOR <i>Bob &amp; &lt;Sons&gt;</i></p>"
    ]


async def test_the_shipped_html_template_escapes_what_the_order_says(
    database_url: str, smtp: SmtpServer, tokens: Tokens
) -> None:
    name = "<script>alert(1)</script> & Co"
    async with mailing(database_url, smtp, tokens) as m:
        response = await m.fulfil(named_order("o-1", name))
        (mail,) = await smtp.mailbox.wait_for(lambda got: len(got) >= 1)
    html = body_html(mail)
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co" in html
    assert "<script>alert" not in html
    assert response.entitlements[0].license_key in html
    assert name in body_text(mail)  # plain text is not markup: shown as written


# --- 7. `keyturn dispatch` -----------------------------------------------------------------


async def test_keyturn_dispatch_sends_the_queued_mail_until_sigterm(
    database_url: str,
    smtp: SmtpServer,
    tokens: Tokens,
    catalog_stub: catalog_pb2_grpc.CatalogServiceStub,
    fulfillment_stub: Fulfillment,
    tmp_path: Path,
) -> None:
    # Queued by a server without SMTP settings: it sends nothing itself.
    await put_catalog(catalog_stub, tokens("catalog"), create_sku(KEY_SKU))

    async def fulfil(order_id: str) -> ful.FulfillOrderResponse:
        return await fulfillment_stub.FulfillOrder(
            order(order_id, KEY_SKU), metadata=tokens("fulfill")
        )

    async def messages(order_id: str) -> Messages:
        stored = await fulfillment_stub.GetOrder(
            ful.GetOrderRequest(source="test", order_id=order_id), metadata=tokens("read")
        )
        return list(stored.order.messages)

    first = await fulfil("o-1")
    settings = {
        "KEYTURN_DATABASE_URL": database_url,
        "KEYTURN_SECRET_KEY": TEST_SECRET,
        "KEYTURN_AUTO_MIGRATE": "false",
        "KEYTURN_SMTP_HOST": "127.0.0.1",
        "KEYTURN_SMTP_PORT": str(smtp.port),
        "KEYTURN_SMTP_SECURITY": "none",
        "KEYTURN_DISPATCH_POLL_SECONDS": "0.1",
    }
    with start_dispatcher(tmp_path, settings) as child:
        (queued,) = first.order.messages
        await child.await_stderr(sent_line(queued.message_id), WAIT_S)
        assert [(m.state, m.attempts) for m in await messages("o-1")] == [(SENT, 1)]
        # Queued while it runs, by another process: found by its polling.
        second = await fulfil("o-2")
        await child.await_stderr(sent_line(second.order.messages[0].message_id), WAIT_S)
        child.signal(signal.SIGTERM)
        code = await child.await_exit(WAIT_S)
    assert code == 0, child.stderr_tail()
    assert f"keyturn dispatching to 127.0.0.1:{smtp.port}" in child.stdout_lines
    assert smtp.mailbox.message_ids() == [
        message_id_header(first.order.messages[0]),
        message_id_header(second.order.messages[0]),
    ]
    for response, mail in zip((first, second), smtp.mailbox.messages, strict=True):
        assert response.entitlements[0].license_key in body_text(mail)
    assert [(m.state, m.attempts) for m in await messages("o-2")] == [(SENT, 1)]


def test_keyturn_dispatch_without_an_smtp_host_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [*keyturn_command(), "dispatch"],
        cwd=tmp_path,
        env=child_env(sqlite_settings(tmp_path / "keyturn.db")),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "KEYTURN_SMTP_HOST is not set" in result.stderr
    assert "Traceback" not in result.stderr
