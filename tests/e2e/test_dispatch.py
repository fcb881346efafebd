"""Credential emails from the outbox to a real SMTP server (aiosmtpd on loopback)."""

from __future__ import annotations

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

from conftest import Tokens
from support.mailing import mailing
from support.rpc import order
from support.smtp import SmtpServer, body_html, body_text


def states(messages: list[ful.OutboundMessage]) -> list[int]:
    return [m.state for m in messages]


async def test_a_new_license_key_is_mailed_once_and_shown_as_sent(
    database_url: str, smtp: SmtpServer, tokens: Tokens
) -> None:
    async with mailing(database_url, smtp, tokens) as m:
        response = await m.fulfillment.FulfillOrder(
            order("o-1", "STD-1Y"), metadata=tokens("fulfill")
        )
        (queued,) = response.order.messages
        assert queued.kind == ful.MESSAGE_KIND_LICENSE_KEY
        assert queued.to == "it@initech.example"
        (mail,) = await smtp.mailbox.wait_for(lambda got: len(got) == 1)
        (sent,) = await m.until("o-1", lambda ms: states(ms) == [ful.MESSAGE_STATE_SENT])
    key = response.entitlements[0].license_key
    assert key in body_text(mail)
    assert key in body_html(mail)
    assert str(mail["To"]) == "it@initech.example"
    assert str(mail["Message-ID"]) == f"<{queued.message_id}@localhost>"
    assert sent.attempts == 1
    assert sent.HasField("sent_time")
    assert not sent.HasField("next_attempt_time")


async def test_a_5xx_answer_fails_the_message_for_good(
    database_url: str, smtp: SmtpServer, tokens: Tokens
) -> None:
    smtp.mailbox.answer = "550 5.1.1 mailbox unavailable"
    async with mailing(database_url, smtp, tokens) as m:
        await m.fulfillment.FulfillOrder(order("o-1", "STD-1Y"), metadata=tokens("fulfill"))
        (failed,) = await m.until("o-1", lambda ms: states(ms) == [ful.MESSAGE_STATE_FAILED])
    assert failed.attempts == 1
    assert failed.last_error.startswith("SMTP 550")
    assert "mailbox unavailable" in failed.last_error
    assert smtp.mailbox.messages == []


async def test_a_4xx_answer_is_retried_until_the_server_accepts(
    database_url: str, smtp: SmtpServer, tokens: Tokens
) -> None:
    smtp.mailbox.answer = "451 4.3.0 try again later"
    async with mailing(database_url, smtp, tokens) as m:
        await m.fulfillment.FulfillOrder(order("o-1", "STD-1Y"), metadata=tokens("fulfill"))
        (waiting,) = await m.until("o-1", lambda ms: ms[0].attempts >= 2)
        assert waiting.state == ful.MESSAGE_STATE_QUEUED
        assert waiting.last_error.startswith("SMTP 451")
        smtp.mailbox.answer = "250 OK"
        (sent,) = await m.until("o-1", lambda ms: states(ms) == [ful.MESSAGE_STATE_SENT])
    assert sent.attempts >= 3
    assert sent.last_error == ""
    assert len(smtp.mailbox.messages) == 1
