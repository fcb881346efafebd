"""The invitation emails of ChangeNamedUserEmail, RemoveNamedUser and the resend of one
user, through a real dispatcher to a real SMTP server, on both databases.

Nothing sleeps: tests wait on the dispatcher's `settled` bell or the mailbox.
"""

from __future__ import annotations

import grpc
import pytest
from sqlalchemy import update
from test_dispatch_more import (
    ALICE,
    BOB,
    CAROL,
    all_sent,
    code_in,
    invitation_codes,
    invitation_sku,
    team_order,
)

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.server.store.tables import outbox

from conftest import Tokens
from support.mailing import mailing
from support.smtp import SmtpServer

DAVE = "dave@initech.example"
SENT = ful.MESSAGE_STATE_SENT
FAILED = ful.MESSAGE_STATE_FAILED
QUEUED = ful.MESSAGE_STATE_QUEUED


def user_ids(response: ful.FulfillOrderResponse) -> dict[str, str]:
    return {u.email: u.user_id for u in response.entitlements[0].named_users}


async def test_a_new_email_before_redemption_gets_a_new_code_and_the_old_one_is_void(
    database_url: str, smtp: SmtpServer, tokens: Tokens
) -> None:
    async with mailing(database_url, smtp, tokens, invitation_sku()) as m:
        response = await m.fulfil(team_order("o-1", ALICE, BOB))
        old_codes = invitation_codes(response)
        await m.until("o-1", all_sent(2))

        changed = await m.fulfillment.ChangeNamedUserEmail(
            ful.ChangeNamedUserEmailRequest(
                entitlement_id=response.entitlements[0].entitlement_id,
                user_id=user_ids(response)[ALICE],
                email=DAVE,
            ),
            metadata=tokens("fulfill"),
        )

        (queued,) = changed.messages
        assert (queued.kind, queued.to) == (ful.MESSAGE_KIND_INVITATION, DAVE)
        new_code = changed.named_user.invitation_code
        assert new_code != old_codes[ALICE]
        messages = await m.until("o-1", all_sent(3))  # shown under the entitlement's order
        assert sorted(message.to for message in messages) == [ALICE, BOB, DAVE]
        await smtp.mailbox.wait_for(lambda got: len(got) >= 3)
        (mail,) = smtp.mailbox.to(DAVE)
        assert code_in(mail) == new_code
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await m.licensing.RedeemInvitation(
                lic.RedeemInvitationRequest(invitation_code=old_codes[ALICE])
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        redeemed = await m.licensing.RedeemInvitation(
            lic.RedeemInvitationRequest(invitation_code=code_in(mail))
        )
        assert redeemed.identity_token


async def test_invitations_not_yet_delivered_are_withdrawn_when_their_user_goes(
    database_url: str, smtp: SmtpServer, tokens: Tokens
) -> None:
    # A failed attempt is retried only an hour later: no attempt is under way while the
    # users change, so what the use cases do is seen alone, then the dispatcher's guard.
    hour = {"dispatch_retry_initial_seconds": 3600, "dispatch_retry_max_seconds": 3600}
    async with mailing(database_url, smtp, tokens, invitation_sku(), **hour) as m:
        smtp.mailbox.answer = "451 4.3.0 try again later"
        response = await m.fulfil(team_order("o-1", ALICE, BOB, CAROL))
        entitlement_id = response.entitlements[0].entitlement_id
        ids = user_ids(response)
        await m.until(
            "o-1", lambda ms: all(msg.attempts == 1 and msg.state == QUEUED for msg in ms)
        )

        await m.fulfillment.RemoveNamedUser(
            ful.RemoveNamedUserRequest(entitlement_id=entitlement_id, user_id=ids[BOB]),
            metadata=tokens("fulfill"),
        )
        await m.fulfillment.ChangeNamedUserEmail(
            ful.ChangeNamedUserEmailRequest(
                entitlement_id=entitlement_id, user_id=ids[CAROL], email=DAVE
            ),
            metadata=tokens("fulfill"),
        )
        smtp.mailbox.answer = "250 OK"
        messages = await m.until(
            "o-1", lambda ms: any(msg.to == DAVE and msg.state == SENT for msg in ms)
        )
        by_to = {msg.to: msg for msg in messages}
        assert (by_to[ALICE].state, by_to[ALICE].attempts) == (QUEUED, 1)  # an hour to go
        assert (by_to[BOB].state, by_to[BOB].last_error) == (
            FAILED,
            "withdrawn: the named user was removed",
        )
        assert (by_to[CAROL].state, by_to[CAROL].last_error) == (
            FAILED,
            "withdrawn: the named user's email was changed",
        )

        # An attempt under way when the user went settles after the withdrawal, as
        # QUEUED again: the dispatcher itself then refuses to send it.
        async with m.ctx.store.write() as tx:
            await tx.connection.execute(
                update(outbox)
                .where(outbox.c.user_id.in_([ids[BOB], ids[CAROL]]), outbox.c.to_email != DAVE)
                .values(state="queued", next_attempt_time=m.ctx.clock.now())
            )
        messages = await m.until(
            "o-1", lambda ms: sum(msg.state == FAILED and msg.attempts == 2 for msg in ms) == 2
        )
        by_to = {msg.to: msg for msg in messages}
        assert by_to[BOB].last_error == "withdrawn: the named user was removed"
        assert by_to[CAROL].last_error == "withdrawn: the named user's email was changed"
        await smtp.mailbox.wait_for(lambda got: len(got) >= 1)
    assert [str(mail["To"]) for mail in smtp.mailbox.messages] == [DAVE]
    codes = invitation_codes(response)
    assert code_in(smtp.mailbox.to(DAVE)[0]) not in (codes[BOB], codes[CAROL])


async def test_resend_of_one_user_mails_only_them_the_same_code(
    database_url: str, smtp: SmtpServer, tokens: Tokens
) -> None:
    async with mailing(database_url, smtp, tokens, invitation_sku()) as m:
        response = await m.fulfil(team_order("o-1", ALICE, BOB))
        codes = invitation_codes(response)
        await m.until("o-1", all_sent(2))

        resent = await m.fulfillment.ResendCredentials(
            ful.ResendCredentialsRequest(
                entitlement_id=response.entitlements[0].entitlement_id,
                user_id=user_ids(response)[BOB],
            ),
            metadata=tokens("fulfill"),
        )

        assert [message.to for message in resent.messages] == [BOB]
        await m.until("o-1", all_sent(3))
        await smtp.mailbox.wait_for(lambda got: len(got) >= 3)
    assert [code_in(mail) for mail in smtp.mailbox.to(BOB)] == [codes[BOB]] * 2
    assert len(smtp.mailbox.to(ALICE)) == 1
