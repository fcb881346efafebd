"""RemoveNamedUser, ChangeNamedUserEmail, LookupCustomer and ResendCredentials' user_id,
through a real server on both databases: seats freed and credentials voided at once,
events and audit rows written, nothing written by a refusal.

The emails these calls queue reach a real SMTP server in tests/e2e/test_named_user_mail.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import grpc
import pytest
from sqlalchemy import text
from test_named_users import activate_as, by_email, database_state, named_user_rows, redeem

from keyturn.client import NamedUserExistsError, NamedUserNotFoundError, NotFoundError
from keyturn.client.errors import from_rpc_error
from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app import named_user_admin
from keyturn.server.app.context import AppContext
from keyturn.server.domain.errors import DomainError, Reason
from keyturn.server.store.named_user_repository import NamedUserRepository
from keyturn.server.store.seats import ActivationClaim

from conftest import Tokens, direct_url
from support.catalog import put_catalog
from support.rpc import PRODUCT_ID, create_sku, failure_of

Fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub
Licensing = licensing_pb2_grpc.LicensingServiceStub

TEAM_2 = "TEAM-2"
ADD_USERS = "ADD-USERS"  # a renewal: a line that only assigns named users
ALICE = "alice@initech.example"
BOB = "bob@initech.example"
CAROL = "carol@initech.example"


@pytest.fixture
async def skus(catalog_stub: catalog_pb2_grpc.CatalogServiceStub, tokens: Tokens) -> None:
    renew = cat.Operation(renew=cat.RenewOperation(term="P1M"))
    await put_catalog(
        catalog_stub,
        tokens("catalog"),
        create_sku(TEAM_2, seats=2),
        cat.Sku(sku_id=ADD_USERS, product_id=PRODUCT_ID, display_name="add", operations=[renew]),
    )


def team_order(
    order_id: str,
    *emails: str,
    customer_id: str = "cust-1",
    customer_email: str = "it@initech.example",
    ship_to: str = "",
) -> ful.FulfillOrderRequest:
    return ful.FulfillOrderRequest(
        source="test",
        order_id=order_id,
        customer=ful.Customer(customer_id=customer_id, name="Initech", email=customer_email),
        ship_to_email=ship_to,
        lines=[ful.OrderLine(sku_id=TEAM_2, quantity=1, named_user_emails=list(emails))],
    )


async def team(stub: Fulfillment, tokens: Tokens, *emails: str) -> ful.Entitlement:
    response = await stub.FulfillOrder(team_order("o-1", *emails), metadata=tokens("fulfill"))
    return response.entitlements[0]


async def refusal(call: Any) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    failure = failure_of(caught.value)
    return failure.code, failure.reason, failure.metadata


async def audit_rows(app: AppContext, action: str) -> list[dict[str, Any]]:
    async with app.store.read() as tx:
        result = await tx.connection.execute(
            text("SELECT * FROM audit_events WHERE action = :a ORDER BY audit_id"), {"a": action}
        )
        rows = [dict(row) for row in result.mappings()]
    for row in rows:  # JSON as text on SQLite
        if isinstance(row["details"], str):
            row["details"] = json.loads(row["details"])
    return rows


async def token_actor(app: AppContext, scope: str) -> str:
    async with app.store.read() as tx:
        result = await tx.connection.execute(
            text("SELECT token_id FROM api_tokens WHERE description = :d"), {"d": f"test {scope}"}
        )
        return f"token:{result.scalar_one()}"


async def events_of(stub: Fulfillment, tokens: Tokens, entitlement_id: str) -> list[Any]:
    response = await stub.ListEntitlementEvents(
        ful.ListEntitlementEventsRequest(entitlement_id=entitlement_id, page_size=500),
        metadata=tokens("read"),
    )
    return list(response.events)


async def get(stub: Fulfillment, tokens: Tokens, entitlement_id: str) -> ful.Entitlement:
    response = await stub.GetEntitlement(
        ful.GetEntitlementRequest(entitlement_id=entitlement_id), metadata=tokens("read")
    )
    return response.entitlement


@pytest.mark.usefixtures("skus")
async def test_removing_a_user_frees_their_seats_and_voids_their_identity_at_once(
    fulfillment_stub: Fulfillment,
    licensing_stub: Licensing,
    tokens: Tokens,
    app: AppContext,
) -> None:
    entitlement = await team(fulfillment_stub, tokens, ALICE, BOB)
    entitlement_id = entitlement.entitlement_id
    users = by_email(entitlement)
    alice_token = await redeem(licensing_stub, users[ALICE].invitation_code)
    bob_token = await redeem(licensing_stub, users[BOB].invitation_code)
    laptop = await licensing_stub.ActivateSeat(activate_as(alice_token, "alice-laptop-1"))
    await licensing_stub.ActivateSeat(activate_as(alice_token, "alice-desktop-2"))
    # Both seats are Alice's: Bob is refused, and a third user does not fit the seats.
    code, reason, _ = await refusal(licensing_stub.ActivateSeat(activate_as(bob_token, "bob-pc-1")))
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "SEATS_EXHAUSTED")
    more = team_order("o-2", CAROL)
    more.lines[0].sku_id, more.lines[0].entitlement_id = ADD_USERS, entitlement_id
    code, reason, _ = await refusal(fulfillment_stub.FulfillOrder(more, metadata=tokens("fulfill")))
    assert reason == "NAMED_USERS_EXCEED_SEATS"
    events_before = len(await events_of(fulfillment_stub, tokens, entitlement_id))

    removed = await fulfillment_stub.RemoveNamedUser(
        ful.RemoveNamedUserRequest(entitlement_id=entitlement_id, user_id=users[ALICE].user_id),
        metadata=tokens("fulfill"),
    )

    assert removed.released_seats == 2
    assert removed.entitlement.seats_in_use == 0
    assert [u.email for u in removed.entitlement.named_users] == [BOB]
    assert (await get(fulfillment_stub, tokens, entitlement_id)).seats_in_use == 0
    # Her identity token is unknown at once, for every call that takes one.
    for call in (
        licensing_stub.ActivateSeat(activate_as(alice_token, "alice-laptop-1")),
        licensing_stub.CheckLicense(
            lic.CheckLicenseRequest(identity_token=alice_token, product_id=PRODUCT_ID)
        ),
    ):
        code, reason, _ = await refusal(call)
        assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_LICENSE_KEY")
    # Her device's lease cannot be renewed: its seat was released.
    code, reason, metadata = await refusal(
        licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=laptop.lease.token))
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_SUPERSEDED")
    assert metadata["activation_id"] == laptop.activation_id
    # Bob takes the seat she held; the email is free for a later order, which fits now.
    await licensing_stub.ActivateSeat(activate_as(bob_token, "bob-pc-1"))
    again = team_order("o-3", ALICE)
    again.lines[0].sku_id, again.lines[0].entitlement_id = ADD_USERS, entitlement_id
    readded = await fulfillment_stub.FulfillOrder(again, metadata=tokens("fulfill"))
    new_alice = by_email(readded.entitlements[0])[ALICE]
    assert new_alice.user_id != users[ALICE].user_id
    assert new_alice.invitation_code

    # The log: each seat released, then the removal, whose entitlement lists who remains.
    events = (await events_of(fulfillment_stub, tokens, entitlement_id))[events_before:]
    kinds = [e.type for e in events[:3]]
    assert kinds == [
        ful.ENTITLEMENT_EVENT_TYPE_SEAT_RELEASED,
        ful.ENTITLEMENT_EVENT_TYPE_SEAT_RELEASED,
        ful.ENTITLEMENT_EVENT_TYPE_NAMED_USER_REMOVED,
    ]
    assert [e.entitlement.seats_in_use for e in events[:3]] == [1, 0, 0]
    assert laptop.activation_id in {e.activation_id for e in events[:2]}
    assert [u.email for u in events[2].entitlement.named_users] == [BOB]
    actor = await token_actor(app, "fulfill")
    (audit,) = await audit_rows(app, "named_user.remove")
    assert audit["actor"] == actor
    assert audit["entitlement_id"] == entitlement_id
    assert audit["resource"] == f"entitlements/{entitlement_id}/named_users/{users[ALICE].user_id}"
    assert audit["details"]["email"] == ALICE
    assert len(audit["details"]["released_activations"]) == 2
    async with app.store.read() as tx:
        released_by = (
            await tx.connection.execute(
                text("SELECT released_by FROM activations WHERE user_id = :u"),
                {"u": users[ALICE].user_id},
            )
        ).scalars()
        assert list(released_by) == [actor, actor]
    # Removing again: she is not there any more.
    code, reason, metadata = await refusal(
        fulfillment_stub.RemoveNamedUser(
            ful.RemoveNamedUserRequest(entitlement_id=entitlement_id, user_id=users[ALICE].user_id),
            metadata=tokens("fulfill"),
        )
    )
    assert (code, reason, metadata) == (
        grpc.StatusCode.NOT_FOUND,
        "NAMED_USER_NOT_FOUND",
        {"user_id": users[ALICE].user_id},
    )


@pytest.mark.usefixtures("skus")
async def test_removing_a_user_who_never_redeemed_voids_their_invitation(
    fulfillment_stub: Fulfillment, licensing_stub: Licensing, tokens: Tokens, app: AppContext
) -> None:
    entitlement = await team(fulfillment_stub, tokens, ALICE, BOB)
    users = by_email(entitlement)
    removed = await fulfillment_stub.RemoveNamedUser(
        ful.RemoveNamedUserRequest(
            entitlement_id=entitlement.entitlement_id, user_id=users[BOB].user_id
        ),
        metadata=tokens("fulfill"),
    )
    assert removed.released_seats == 0
    assert set(await named_user_rows(app)) == {users[ALICE].user_id}
    code, reason, _ = await refusal(
        licensing_stub.RedeemInvitation(
            lic.RedeemInvitationRequest(invitation_code=users[BOB].invitation_code)
        )
    )
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_INVITATION")


@pytest.mark.usefixtures("skus")
async def test_a_user_of_another_entitlement_is_not_found_and_nothing_is_written(
    fulfillment_stub: Fulfillment, tokens: Tokens, server: KeyturnServer
) -> None:
    first = await team(fulfillment_stub, tokens, ALICE)
    second = (
        await fulfillment_stub.FulfillOrder(team_order("o-2", BOB), metadata=tokens("fulfill"))
    ).entitlements[0]
    bob = second.named_users[0].user_id
    before = await database_state(server)
    for call in (
        fulfillment_stub.RemoveNamedUser(
            ful.RemoveNamedUserRequest(entitlement_id=first.entitlement_id, user_id=bob),
            metadata=tokens("fulfill"),
        ),
        fulfillment_stub.ChangeNamedUserEmail(
            ful.ChangeNamedUserEmailRequest(
                entitlement_id=first.entitlement_id, user_id=bob, email=CAROL
            ),
            metadata=tokens("fulfill"),
        ),
        fulfillment_stub.ResendCredentials(
            ful.ResendCredentialsRequest(entitlement_id=first.entitlement_id, user_id=bob),
            metadata=tokens("fulfill"),
        ),
    ):
        code, reason, metadata = await refusal(call)
        assert (code, reason, metadata) == (
            grpc.StatusCode.NOT_FOUND,
            "NAMED_USER_NOT_FOUND",
            {"user_id": bob},
        )
    # The changes need the fulfill scope.
    code, reason, _ = await refusal(
        fulfillment_stub.RemoveNamedUser(
            ful.RemoveNamedUserRequest(entitlement_id=second.entitlement_id, user_id=bob),
            metadata=tokens("read"),
        )
    )
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "INSUFFICIENT_SCOPE")
    assert await database_state(server) == before


@pytest.mark.usefixtures("skus")
async def test_changing_the_email_of_an_unredeemed_user_gives_them_a_new_code(
    fulfillment_stub: Fulfillment, licensing_stub: Licensing, tokens: Tokens, app: AppContext
) -> None:
    entitlement = await team(fulfillment_stub, tokens, ALICE, BOB)
    entitlement_id = entitlement.entitlement_id
    old = by_email(entitlement)[ALICE]

    changed = await fulfillment_stub.ChangeNamedUserEmail(
        ful.ChangeNamedUserEmailRequest(
            entitlement_id=entitlement_id, user_id=old.user_id, email="Carol@Initech.EXAMPLE"
        ),
        metadata=tokens("fulfill"),
    )

    user = changed.named_user
    assert (user.user_id, user.email) == (old.user_id, CAROL)
    assert user.invitation_code
    assert user.invitation_code != old.invitation_code
    assert list(changed.messages) == []  # a license-key SKU: invitations are not mailed
    assert sorted(
        u.email for u in (await get(fulfillment_stub, tokens, entitlement_id)).named_users
    ) == [
        BOB,
        CAROL,
    ]
    code, reason, _ = await refusal(
        licensing_stub.RedeemInvitation(
            lic.RedeemInvitationRequest(invitation_code=old.invitation_code)
        )
    )
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_INVITATION")
    token = await redeem(licensing_stub, user.invitation_code)
    activated = await licensing_stub.ActivateSeat(activate_as(token, "carol-laptop-1"))
    assert activated.activation_id
    (event,) = [
        e
        for e in await events_of(fulfillment_stub, tokens, entitlement_id)
        if e.type == ful.ENTITLEMENT_EVENT_TYPE_NAMED_USER_CHANGED
    ]
    assert {u.user_id: u.email for u in event.entitlement.named_users}[old.user_id] == CAROL
    (audit,) = await audit_rows(app, "named_user.change_email")
    assert audit["actor"] == await token_actor(app, "fulfill")
    assert audit["details"] == {
        "user_id": old.user_id,
        "old_email": ALICE,
        "email": CAROL,
        "new_invitation": True,
    }


@pytest.mark.usefixtures("skus")
async def test_changing_the_email_of_a_redeemed_user_keeps_their_identity_token(
    fulfillment_stub: Fulfillment,
    licensing_stub: Licensing,
    tokens: Tokens,
    server: KeyturnServer,
) -> None:
    entitlement = await team(fulfillment_stub, tokens, ALICE, BOB)
    entitlement_id = entitlement.entitlement_id
    alice = by_email(entitlement)[ALICE]
    token = await redeem(licensing_stub, alice.invitation_code)

    changed = await fulfillment_stub.ChangeNamedUserEmail(
        ful.ChangeNamedUserEmailRequest(
            entitlement_id=entitlement_id, user_id=alice.user_id, email=CAROL
        ),
        metadata=tokens("fulfill"),
    )

    assert changed.named_user.email == CAROL
    assert changed.named_user.invitation_code == ""
    assert changed.named_user.HasField("redeem_time")
    checked = await licensing_stub.CheckLicense(
        lic.CheckLicenseRequest(identity_token=token, product_id=PRODUCT_ID)
    )
    assert checked.entitlement.entitlement_id == entitlement_id
    await licensing_stub.ActivateSeat(activate_as(token, "alice-laptop-1"))

    # Bob's email is taken; the same email again (in any case) changes nothing.
    before = await database_state(server)
    code, reason, metadata = await refusal(
        fulfillment_stub.ChangeNamedUserEmail(
            ful.ChangeNamedUserEmailRequest(
                entitlement_id=entitlement_id, user_id=alice.user_id, email=BOB.upper()
            ),
            metadata=tokens("fulfill"),
        )
    )
    assert (code, reason, metadata) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "NAMED_USER_EXISTS",
        {"entitlement_id": entitlement_id, "email": BOB},
    )
    same = await fulfillment_stub.ChangeNamedUserEmail(
        ful.ChangeNamedUserEmailRequest(
            entitlement_id=entitlement_id, user_id=alice.user_id, email=CAROL.upper()
        ),
        metadata=tokens("fulfill"),
    )
    assert same.named_user.email == CAROL
    assert await database_state(server) == before


@pytest.mark.usefixtures("skus")
async def test_lookup_finds_a_customer_by_id_and_by_every_kind_of_email(
    fulfillment_stub: Fulfillment, tokens: Tokens
) -> None:
    async def order(order_id: str, *emails: str, **customer: str) -> str:
        response = await fulfillment_stub.FulfillOrder(
            team_order(order_id, *emails, **customer), metadata=tokens("fulfill")
        )
        return str(response.entitlements[0].entitlement_id)

    first = await order("o-1", ALICE, BOB, ship_to="licenses@initech.example")
    second = await order("o-2", CAROL)
    other = await order(
        "o-3", "pat@globex.example", customer_id="cust-2", customer_email="it@globex.example"
    )

    async def lookup(**fields: Any) -> list[ful.Entitlement]:
        response = await fulfillment_stub.LookupCustomer(
            ful.LookupCustomerRequest(**fields), metadata=tokens("read")
        )
        assert response.next_page_token == ""
        return list(response.entitlements)

    assert [e.entitlement_id for e in await lookup(customer_id="cust-1")] == [first, second]
    assert [e.entitlement_id for e in await lookup(email="it@initech.example")] == [first, second]
    assert [e.entitlement_id for e in await lookup(email="licenses@initech.example")] == [first]
    assert [e.entitlement_id for e in await lookup(email="Carol@Initech.example")] == [second]
    assert [e.entitlement_id for e in await lookup(email="pat@globex.example")] == [other]
    assert [e.entitlement_id for e in await lookup(customer_id="cust-2", email=ALICE)] == []
    assert await lookup(email="nobody@example.com") == []
    (found,) = await lookup(customer_id="cust-1", email=BOB)
    assert sorted(u.email for u in found.named_users) == [ALICE, BOB]
    assert [u.invitation_code for u in found.named_users] == ["", ""]  # reads never show codes

    # Paged, AIP-158: one at a time, the token tied to the query.
    page = await fulfillment_stub.LookupCustomer(
        ful.LookupCustomerRequest(customer_id="cust-1", page_size=1), metadata=tokens("read")
    )
    assert [e.entitlement_id for e in page.entitlements] == [first]
    rest = await fulfillment_stub.LookupCustomer(
        ful.LookupCustomerRequest(
            customer_id="cust-1", page_size=1, page_token=page.next_page_token
        ),
        metadata=tokens("read"),
    )
    assert [e.entitlement_id for e in rest.entitlements] == [second]
    assert rest.next_page_token == ""
    code, reason, _ = await refusal(
        fulfillment_stub.LookupCustomer(
            ful.LookupCustomerRequest(customer_id="cust-2", page_token=page.next_page_token),
            metadata=tokens("read"),
        )
    )
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")


@pytest.mark.usefixtures("skus")
async def test_resending_one_users_invitation_queues_only_theirs(
    fulfillment_stub: Fulfillment, licensing_stub: Licensing, tokens: Tokens, app: AppContext
) -> None:
    entitlement = await team(fulfillment_stub, tokens, ALICE, BOB)
    entitlement_id = entitlement.entitlement_id
    users = by_email(entitlement)

    resent = await fulfillment_stub.ResendCredentials(
        ful.ResendCredentialsRequest(entitlement_id=entitlement_id, user_id=users[BOB].user_id),
        metadata=tokens("fulfill"),
    )

    # Only Bob's invitation, though the entitlement's dispatch is the license key.
    assert [(m.kind, m.to) for m in resent.messages] == [(ful.MESSAGE_KIND_INVITATION, BOB)]
    await redeem(licensing_stub, users[BOB].invitation_code)  # the same code, still valid
    # Redeemed: nothing to send him again.
    again = await fulfillment_stub.ResendCredentials(
        ful.ResendCredentialsRequest(entitlement_id=entitlement_id, user_id=users[BOB].user_id),
        metadata=tokens("fulfill"),
    )
    assert again.queued_messages == 0
    rows = await audit_rows(app, "credentials.resend")
    assert [r["details"]["user_id"] for r in rows] == [users[BOB].user_id] * 2
    assert rows[0]["details"]["messages"] == [resent.messages[0].message_id]
    assert rows[0]["resource"] == f"entitlements/{entitlement_id}/named_users/{users[BOB].user_id}"


@pytest.mark.usefixtures("skus")
async def test_a_claim_that_read_a_user_before_their_removal_takes_no_seat_after(
    fulfillment_stub: Fulfillment, licensing_stub: Licensing, tokens: Tokens, app: AppContext
) -> None:
    """The race of ActivateSeat with RemoveNamedUser: the claim reads the user, then the
    removal commits, then the claim reaches the seat store. Played in that order by calling
    the seat store with the claim the use case would have built, on its fast path (a new
    device) and its locked path (a device it has seen)."""
    entitlement = await team(fulfillment_stub, tokens, ALICE, BOB)
    entitlement_id = entitlement.entitlement_id
    alice = by_email(entitlement)[ALICE]
    token = await redeem(licensing_stub, alice.invitation_code)
    await licensing_stub.ActivateSeat(activate_as(token, "alice-known-1"))
    await fulfillment_stub.RemoveNamedUser(
        ful.RemoveNamedUserRequest(entitlement_id=entitlement_id, user_id=alice.user_id),
        metadata=tokens("fulfill"),
    )

    for fingerprint in ("alice-new-device", "alice-known-1"):
        claim = ActivationClaim(
            product_id=PRODUCT_ID,
            fingerprint=fingerprint,
            label="",
            new_activation_id=f"act_{fingerprint}",
            new_jti=f"lease_{fingerprint}",
            entitlement_id=entitlement_id,
            user_id=alice.user_id,
        )
        with pytest.raises(DomainError) as refused:
            await app.seats.activate(claim, lambda result: [])
        assert refused.value.reason is Reason.INVALID_LICENSE_KEY
    assert (await get(fulfillment_stub, tokens, entitlement_id)).seats_in_use == 0


@pytest.mark.usefixtures("skus")
async def test_the_python_client_raises_typed_errors_for_both_reasons(
    fulfillment_stub: Fulfillment, tokens: Tokens
) -> None:
    entitlement = await team(fulfillment_stub, tokens, ALICE, BOB)
    alice = by_email(entitlement)[ALICE]
    calls = [
        fulfillment_stub.RemoveNamedUser(
            ful.RemoveNamedUserRequest(
                entitlement_id=entitlement.entitlement_id, user_id="usr_gone"
            ),
            metadata=tokens("fulfill"),
        ),
        fulfillment_stub.ChangeNamedUserEmail(
            ful.ChangeNamedUserEmailRequest(
                entitlement_id=entitlement.entitlement_id, user_id=alice.user_id, email=BOB
            ),
            metadata=tokens("fulfill"),
        ),
    ]
    raised = []
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        raised.append(from_rpc_error(caught.value))
    assert [type(error) for error in raised] == [NamedUserNotFoundError, NamedUserExistsError]
    assert isinstance(raised[0], NotFoundError)
    assert raised[0].metadata == {"user_id": "usr_gone"}
    assert raised[1].metadata == {"entitlement_id": entitlement.entitlement_id, "email": BOB}


async def waiting_on_a_lock(database_url: str) -> None:
    """Until another backend of the database waits on a lock (pg_stat_activity cannot
    notify: it is looked at again every 10 ms, within a timeout)."""
    sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
    )
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        async with asyncio.timeout(10):
            while not int(await conn.fetchval(sql)):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        await conn.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.usefixtures("skus")
async def test_a_new_device_claim_waiting_on_the_removal_is_decided_again_after_it(
    fulfillment_stub: Fulfillment,
    licensing_stub: Licensing,
    tokens: Tokens,
    app: AppContext,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL's fast path for a new device reads the entitlement, then writes only if
    it is as read. A claim that reads while the removal holds the lock, and writes after
    it committed, must not pass: the removal touched the entitlement (its conditional
    write fails), and the locked path finds the user gone. SQLite has one writer at a
    time: the claim cannot start inside the removal there."""
    entitlement = await team(fulfillment_stub, tokens, ALICE, BOB)
    alice = by_email(entitlement)[ALICE]
    claim = ActivationClaim(
        product_id=PRODUCT_ID,
        fingerprint="alice-racing-device",
        label="",
        new_activation_id="act_racing",
        new_jti="lease_racing",
        entitlement_id=entitlement.entitlement_id,
        user_id=alice.user_id,
    )
    claims: list[asyncio.Task[object]] = []
    original = NamedUserRepository.remove

    async def remove_while_a_claim_waits(self: NamedUserRepository, user_id: str) -> None:
        await original(self, user_id)
        claims.append(asyncio.create_task(app.seats.activate(claim, lambda result: [])))
        await waiting_on_a_lock(direct_url(database_url))  # its write waits for our commit

    monkeypatch.setattr(NamedUserRepository, "remove", remove_while_a_claim_waits)
    await named_user_admin.remove_named_user(
        app, entitlement_id=entitlement.entitlement_id, user_id=alice.user_id
    )

    (racing,) = claims
    with pytest.raises(DomainError) as refused:
        await racing
    assert refused.value.reason is Reason.INVALID_LICENSE_KEY
    assert (await get(fulfillment_stub, tokens, entitlement.entitlement_id)).seats_in_use == 0
