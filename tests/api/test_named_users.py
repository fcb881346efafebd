"""Named users through a real server: invitations from orders, RedeemInvitation, identity tokens."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime, timedelta

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.context import AppContext
from keyturn.server.clock import SystemClock
from keyturn.server.domain.license_key import generate_invitation_code

from conftest import Tokens
from support.catalog import put_catalog
from support.rows import table_digests
from support.rpc import PRODUCT_ID, RpcFailure, create_sku, failure_of

Fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub
Licensing = licensing_pb2_grpc.LicensingServiceStub

SYMBOL = "[0-9A-HJKMNP-TV-Z]"  # Crockford base32, upper case
CODE_SHAPE = re.compile(rf"{SYMBOL}{{5}}(-{SYMBOL}{{5}}){{5}}")
USER_ID_SHAPE = re.compile(r"usr_[0-9a-hjkmnp-tv-z]{26}")

SEATS_3 = "NAMED-3"
SEATS_1 = "NAMED-1"
ADD_SEAT = "ADD-SEAT"
REMOVE_SEAT = "REMOVE-SEAT"
CANCEL = "CANCEL"


def change_sku(sku_id: str, operation: cat.Operation) -> cat.Sku:
    return cat.Sku(
        sku_id=sku_id, product_id=PRODUCT_ID, display_name=sku_id, operations=[operation]
    )


@pytest.fixture
async def skus(catalog_stub: catalog_pb2_grpc.CatalogServiceStub, tokens: Tokens) -> None:
    await put_catalog(
        catalog_stub,
        tokens("catalog"),
        create_sku(SEATS_3, seats=3),
        create_sku(SEATS_1, seats=1),
        change_sku(ADD_SEAT, cat.Operation(add_seats=cat.AddSeatsOperation(seats_per_unit=1))),
        change_sku(
            REMOVE_SEAT, cat.Operation(remove_seats=cat.RemoveSeatsOperation(seats_per_unit=1))
        ),
        change_sku(CANCEL, cat.Operation(cancel=cat.CancelOperation())),
    )


def line(
    sku_id: str, emails: list[str] | None = None, quantity: int = 1, entitlement_id: str = ""
) -> ful.OrderLine:
    return ful.OrderLine(
        sku_id=sku_id,
        quantity=quantity,
        entitlement_id=entitlement_id,
        named_user_emails=emails or [],
    )


def order_of(order_id: str, *lines: ful.OrderLine) -> ful.FulfillOrderRequest:
    return ful.FulfillOrderRequest(
        source="test",
        order_id=order_id,
        customer=ful.Customer(customer_id="cust-1", name="Initech", email="it@initech.example"),
        lines=list(lines),
    )


def by_email(entitlement: ful.Entitlement) -> dict[str, ful.NamedUser]:
    return {user.email: user for user in entitlement.named_users}


async def fulfil(
    stub: Fulfillment, tokens: Tokens, request: ful.FulfillOrderRequest
) -> ful.FulfillOrderResponse:
    return await stub.FulfillOrder(request, metadata=tokens("fulfill"))


async def get_entitlement(
    stub: Fulfillment, tokens: Tokens, entitlement_id: str
) -> ful.Entitlement:
    response = await stub.GetEntitlement(
        ful.GetEntitlementRequest(entitlement_id=entitlement_id), metadata=tokens("read")
    )
    return response.entitlement


async def named_user_rows(app: AppContext) -> dict[str, dict[str, object]]:
    """Every row of named_users by user id, read with plain SQL."""
    async with app.store.read() as tx:
        result = await tx.connection.execute(text("SELECT * FROM named_users"))
        return {row["user_id"]: dict(row) for row in result.mappings()}


async def database_state(server: KeyturnServer) -> dict[str, object]:
    """A digest of every table, named users included, once the uses of identity tokens
    noted so far are written (in the background: app/token_use.py). API tokens are left
    out: every call a connector makes, refused or not, may write its token's last use,
    which is not what these calls change."""
    await server.ctx.identity_uses.settle()
    app = server.ctx
    state: dict[str, object] = dict(await table_digests(app.store))
    del state["api_tokens"]
    rows = await named_user_rows(app)
    state["named_users"] = sorted(repr(sorted(row.items())) for row in rows.values())
    return state


async def jwks_of(stub: Licensing) -> jwt.PyJWKSet:
    response = await stub.GetSigningKeys(lic.GetSigningKeysRequest())
    return jwt.PyJWKSet.from_dict(json.loads(response.jwks_json))


def verify(token: str, keys: jwt.PyJWKSet, audience: str = PRODUCT_ID) -> dict[str, object]:
    kid = jwt.get_unverified_header(token)["kid"]
    return jwt.decode(
        token, keys[kid].key, algorithms=["EdDSA"], audience=audience, issuer="keyturn"
    )


def activate_as(
    token: str, fingerprint: str, product_id: str = PRODUCT_ID
) -> lic.ActivateSeatRequest:
    return lic.ActivateSeatRequest(
        identity_token=token, product_id=product_id, fingerprint=fingerprint, label="laptop"
    )


async def redeem(stub: Licensing, code: str) -> str:
    response = await stub.RedeemInvitation(lic.RedeemInvitationRequest(invitation_code=code))
    return response.identity_token


async def refused(call) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    failure = failure_of(caught.value)
    return failure.code, failure.reason


@pytest.mark.usefixtures("skus")
async def test_order_assigns_each_email_once_with_a_code_shown_only_by_fulfillment(
    fulfillment_stub: Fulfillment, tokens: Tokens, app: AppContext
) -> None:
    emails = ["Alice@Example.COM", "bob@example.com", "alice@example.com"]
    response = await fulfil(fulfillment_stub, tokens, order_of("o-1", line(SEATS_3, emails)))
    entitlement = response.entitlements[0]
    users = by_email(entitlement)
    assert sorted(users) == ["alice@example.com", "bob@example.com"]
    codes = [u.invitation_code for u in users.values()]
    assert all(CODE_SHAPE.fullmatch(code) for code in codes), codes
    assert len(set(codes)) == 2
    assert all(USER_ID_SHAPE.fullmatch(u.user_id) for u in users.values())
    assert not any(u.HasField("redeem_time") for u in users.values())
    # The order keeps the emails as they were sent.
    stored = await fulfillment_stub.GetOrder(
        ful.GetOrderRequest(source="test", order_id="o-1"), metadata=tokens("read")
    )
    assert list(stored.order.lines[0].named_user_emails) == emails

    # Reads name the users but never show their codes.
    fetched = await get_entitlement(fulfillment_stub, tokens, entitlement.entitlement_id)
    listed = (
        await fulfillment_stub.ListEntitlements(
            ful.ListEntitlementsRequest(customer_id="cust-1"), metadata=tokens("read")
        )
    ).entitlements
    assert [e.entitlement_id for e in listed] == [entitlement.entitlement_id]
    for read in (fetched, listed[0]):
        assert {u.email: u.user_id for u in read.named_users} == {
            email: u.user_id for email, u in users.items()
        }
        assert [u.invitation_code for u in read.named_users] == ["", ""]

    # The database holds a keyed hash and a sealed copy, never the code in clear.
    rows = await named_user_rows(app)
    assert set(rows) == {u.user_id for u in users.values()}
    for user in users.values():
        row = rows[user.user_id]
        assert row["entitlement_id"] == entitlement.entitlement_id
        assert row["email"] == user.email
        for form in (user.invitation_code, user.invitation_code.replace("-", "")):
            assert form not in str(row["invitation_hash"])
            assert form.encode() not in bytes(row["invitation_sealed"])
        assert row["redeem_time"] is None
        assert row["identity_jti"] is None


@pytest.mark.usefixtures("skus")
async def test_replayed_order_returns_the_same_users_and_codes(
    fulfillment_stub: Fulfillment,
    licensing_stub: Licensing,
    tokens: Tokens,
    app: AppContext,
    server: KeyturnServer,
) -> None:
    request = order_of("o-1", line(SEATS_3, ["a@example.com", "b@example.com"]))
    first = (await fulfil(fulfillment_stub, tokens, request)).entitlements[0]
    await redeem(licensing_stub, by_email(first)["a@example.com"].invitation_code)
    before = await database_state(server)

    again = await fulfil(fulfillment_stub, tokens, request)

    assert again.replayed
    replayed = by_email(again.entitlements[0])
    assert {e: (u.user_id, u.invitation_code) for e, u in replayed.items()} == {
        e: (u.user_id, u.invitation_code) for e, u in by_email(first).items()
    }
    assert replayed["a@example.com"].HasField("redeem_time")
    assert not replayed["b@example.com"].HasField("redeem_time")
    assert await database_state(server) == before


@pytest.mark.usefixtures("skus")
async def test_case_variants_of_one_email_take_one_seat(
    fulfillment_stub: Fulfillment, tokens: Tokens
) -> None:
    response = await fulfil(
        fulfillment_stub,
        tokens,
        order_of(
            "o-1", line(SEATS_1, ["Solo@Example.com", "SOLO@EXAMPLE.COM", "solo@example.com"])
        ),
    )
    assert [u.email for u in response.entitlements[0].named_users] == ["solo@example.com"]


@pytest.mark.usefixtures("skus")
async def test_one_email_on_two_entitlements_is_two_users(
    fulfillment_stub: Fulfillment, licensing_stub: Licensing, tokens: Tokens
) -> None:
    response = await fulfil(
        fulfillment_stub,
        tokens,
        order_of("o-1", line(SEATS_1, ["pat@example.com"]), line(SEATS_3, ["pat@example.com"])),
    )
    assert len(response.entitlements) == 2
    users = [e.named_users[0] for e in response.entitlements]
    assert users[0].user_id != users[1].user_id
    assert users[0].invitation_code != users[1].invitation_code
    keys = await jwks_of(licensing_stub)
    for entitlement, user in zip(response.entitlements, users, strict=True):
        claims = verify(await redeem(licensing_stub, user.invitation_code), keys)
        assert (claims["sub"], claims["entitlement_id"]) == (
            user.user_id,
            entitlement.entitlement_id,
        )


@pytest.mark.usefixtures("skus")
async def test_more_named_users_than_seats_rolls_the_whole_order_back(
    fulfillment_stub: Fulfillment,
    tokens: Tokens,
    app: AppContext,
    server: KeyturnServer,
) -> None:
    too_many = [f"user{n}@example.com" for n in range(4)]
    before = await database_state(server)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fulfil(
            fulfillment_stub,
            tokens,
            order_of("o-1", line(SEATS_1, ["first@example.com"]), line(SEATS_3, too_many)),
        )
    failure = failure_of(caught.value)
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "NAMED_USERS_EXCEED_SEATS",
    )
    assert failure.metadata["seats"] == "3"
    assert failure.metadata["named_users"] == "4"
    assert failure.metadata["line"] == "1"
    assert failure.metadata["entitlement_id"].startswith("ent_")
    assert await database_state(server) == before
    # Nothing kept the order id: the same id with other content is a new order, not a conflict.
    fixed = await fulfil(
        fulfillment_stub,
        tokens,
        order_of("o-1", line(SEATS_1, ["first@example.com"]), line(SEATS_3, too_many, quantity=2)),
    )
    assert not fixed.replayed
    assert [len(e.named_users) for e in fixed.entitlements] == [1, 4]
    assert len(await named_user_rows(app)) == 5


@pytest.mark.usefixtures("skus")
async def test_later_order_adds_users_and_keeps_those_assigned(
    fulfillment_stub: Fulfillment,
    tokens: Tokens,
    app: AppContext,
    server: KeyturnServer,
) -> None:
    created = (
        await fulfil(
            fulfillment_stub,
            tokens,
            order_of("o-1", line(SEATS_3, ["a@example.com", "b@example.com", "c@example.com"])),
        )
    ).entitlements[0]
    entitlement_id = created.entitlement_id
    original = by_email(created)

    added = await fulfil(
        fulfillment_stub,
        tokens,
        order_of(
            "o-2",
            line(ADD_SEAT, ["A@Example.com", "d@example.com"], entitlement_id=entitlement_id),
        ),
    )
    grown = added.entitlements[0]
    assert grown.seats == 4
    users = by_email(grown)
    assert sorted(users) == ["a@example.com", "b@example.com", "c@example.com", "d@example.com"]
    for email in ("a@example.com", "b@example.com", "c@example.com"):
        assert users[email].user_id == original[email].user_id
        assert users[email].invitation_code == ""  # assigned by the first order, not this one
    assert CODE_SHAPE.fullmatch(users["d@example.com"].invitation_code)
    assert users["d@example.com"].invitation_code not in {
        u.invitation_code for u in original.values()
    }
    rows = await named_user_rows(app)
    assert len(rows) == 4
    assert rows[users["d@example.com"].user_id]["order_id"] == "o-2"
    assert rows[users["a@example.com"].user_id]["order_id"] == "o-1"

    # Replays give each order's own codes only.
    first_order = order_of(
        "o-1", line(SEATS_3, ["a@example.com", "b@example.com", "c@example.com"])
    )
    replay_1 = by_email((await fulfil(fulfillment_stub, tokens, first_order)).entitlements[0])
    assert {e: u.invitation_code for e, u in replay_1.items()} == {
        **{e: u.invitation_code for e, u in original.items()},
        "d@example.com": "",
    }
    second_order = order_of(
        "o-2", line(ADD_SEAT, ["A@Example.com", "d@example.com"], entitlement_id=entitlement_id)
    )
    replay_2 = by_email((await fulfil(fulfillment_stub, tokens, second_order)).entitlements[0])
    assert {e: u.invitation_code for e, u in replay_2.items() if u.invitation_code} == {
        "d@example.com": users["d@example.com"].invitation_code
    }

    # One seat more cannot take three more users (4 + 3 > 5); nothing changes.
    before = await database_state(server)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fulfil(
            fulfillment_stub,
            tokens,
            order_of(
                "o-3",
                line(
                    ADD_SEAT,
                    ["e@example.com", "f@example.com", "g@example.com"],
                    entitlement_id=entitlement_id,
                ),
            ),
        )
    failure = failure_of(caught.value)
    assert (failure.code, failure.reason, failure.metadata) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "NAMED_USERS_EXCEED_SEATS",
        {"entitlement_id": entitlement_id, "seats": "5", "named_users": "7", "line": "0"},
    )
    assert await database_state(server) == before
    assert (await get_entitlement(fulfillment_stub, tokens, entitlement_id)).seats == 4


@pytest.mark.usefixtures("skus")
async def test_removing_seats_below_the_named_users_is_refused(
    fulfillment_stub: Fulfillment,
    tokens: Tokens,
    app: AppContext,
    server: KeyturnServer,
) -> None:
    created = (
        await fulfil(
            fulfillment_stub,
            tokens,
            order_of("o-1", line(SEATS_3, ["a@example.com", "b@example.com"])),
        )
    ).entitlements[0]
    entitlement_id = created.entitlement_id
    before = await database_state(server)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fulfil(
            fulfillment_stub,
            tokens,
            order_of("o-2", line(REMOVE_SEAT, quantity=2, entitlement_id=entitlement_id)),
        )
    failure = failure_of(caught.value)
    assert (failure.code, failure.reason, failure.metadata) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "NAMED_USERS_EXCEED_SEATS",
        {"entitlement_id": entitlement_id, "seats": "1", "named_users": "2", "line": "0"},
    )
    assert await database_state(server) == before
    # Down to as many seats as named users is fine.
    shrunk = await fulfil(
        fulfillment_stub,
        tokens,
        order_of("o-3", line(REMOVE_SEAT, quantity=1, entitlement_id=entitlement_id)),
    )
    assert shrunk.entitlements[0].seats == 2
    assert len(shrunk.entitlements[0].named_users) == 2


@pytest.mark.usefixtures("skus")
async def test_redeemed_invitation_gives_a_verifiable_identity_token(
    fulfillment_stub: Fulfillment, licensing_stub: Licensing, tokens: Tokens, app: AppContext
) -> None:
    entitlement = (
        await fulfil(fulfillment_stub, tokens, order_of("o-1", line(SEATS_3, ["Ann@Example.com"])))
    ).entitlements[0]
    user = entitlement.named_users[0]
    # Case, dashes and spaces do not matter.
    typed = " ".join(user.invitation_code.lower().split("-"))
    token = await redeem(licensing_stub, typed)

    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA"
    claims = verify(token, await jwks_of(licensing_stub))
    assert claims["token_use"] == "identity"
    assert claims["sub"] == user.user_id
    assert claims["email"] == "ann@example.com"
    assert claims["entitlement_id"] == entitlement.entitlement_id
    assert claims["aud"] == PRODUCT_ID
    assert claims["iss"] == "keyturn"

    row = (await named_user_rows(app))[user.user_id]
    assert row["identity_jti"] == claims["jti"]
    assert row["redeem_time"] is not None
    fetched = await get_entitlement(fulfillment_stub, tokens, entitlement.entitlement_id)
    assert fetched.named_users[0].HasField("redeem_time")
    assert fetched.named_users[0].invitation_code == ""


@pytest.mark.usefixtures("skus")
async def test_an_invitation_is_redeemed_once(
    fulfillment_stub: Fulfillment, licensing_stub: Licensing, tokens: Tokens, app: AppContext
) -> None:
    entitlement = (
        await fulfil(fulfillment_stub, tokens, order_of("o-1", line(SEATS_3, ["ann@example.com"])))
    ).entitlements[0]
    code = entitlement.named_users[0].invitation_code
    token = await redeem(licensing_stub, code)
    jti_after_first = (await named_user_rows(app))[entitlement.named_users[0].user_id][
        "identity_jti"
    ]
    for again in (code, code.replace("-", "").lower()):
        outcome = await refused(redeem(licensing_stub, again))
        assert outcome == (grpc.StatusCode.FAILED_PRECONDITION, "INVITATION_REDEEMED")
    # The refused attempts changed nothing: the first token is still the valid one.
    row = (await named_user_rows(app))[entitlement.named_users[0].user_id]
    assert row["identity_jti"] == jti_after_first
    granted = await licensing_stub.ActivateSeat(activate_as(token, "device-0001"))
    assert granted.entitlement.entitlement_id == entitlement.entitlement_id


@pytest.mark.usefixtures("skus")
async def test_concurrent_redemptions_of_one_code_have_one_winner(
    fulfillment_stub: Fulfillment, licensing_stub: Licensing, tokens: Tokens, app: AppContext
) -> None:
    entitlement = (
        await fulfil(fulfillment_stub, tokens, order_of("o-1", line(SEATS_3, ["ann@example.com"])))
    ).entitlements[0]
    code = entitlement.named_users[0].invitation_code
    results = await asyncio.gather(
        *(
            licensing_stub.RedeemInvitation(lic.RedeemInvitationRequest(invitation_code=code))
            for _ in range(10)
        ),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, lic.RedeemInvitationResponse)]
    lost = [failure_of(r) for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == 1
    assert len(lost) == 9
    assert {(f.code, f.reason) for f in lost} == {
        (grpc.StatusCode.FAILED_PRECONDITION, "INVITATION_REDEEMED")
    }
    claims = verify(won[0].identity_token, await jwks_of(licensing_stub))
    row = (await named_user_rows(app))[entitlement.named_users[0].user_id]
    assert row["identity_jti"] == claims["jti"]
    granted = await licensing_stub.ActivateSeat(activate_as(won[0].identity_token, "device-0001"))
    assert granted.entitlement.seats_in_use == 1


@pytest.mark.usefixtures("skus")
async def test_unknown_malformed_and_foreign_codes_get_the_same_answer(
    fulfillment_stub: Fulfillment,
    licensing_stub: Licensing,
    tokens: Tokens,
    app: AppContext,
    server: KeyturnServer,
) -> None:
    entitlement = (
        await fulfil(fulfillment_stub, tokens, order_of("o-1", line(SEATS_3, ["ann@example.com"])))
    ).entitlements[0]
    real = entitlement.named_users[0].invitation_code
    typo = real[:-1] + ("0" if real[-1] != "0" else "1")
    before = await database_state(server)
    answers = set()
    for code in (
        typo,  # fails its checksum
        generate_invitation_code(),  # well formed, never issued
        entitlement.license_key,  # a license key is not an invitation code
        "not-a-code",
        real + "-AAAAA",
        "é" * 30,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await redeem(licensing_stub, code)
        failure = failure_of(caught.value)
        answers.add((failure.code, failure.reason, failure.message))
    assert answers == {
        (grpc.StatusCode.UNAUTHENTICATED, "INVALID_INVITATION", "the invitation code is not valid")
    }
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await redeem(licensing_stub, "")
    failure = failure_of(caught.value)
    assert (failure.code, failure.reason, failure.fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        ["invitation_code"],
    )
    assert await database_state(server) == before
    # None of that used the real code up.
    assert await redeem(licensing_stub, real)


@pytest.mark.usefixtures("skus")
async def test_identity_token_activates_a_seat_for_its_user(
    fulfillment_stub: Fulfillment, licensing_stub: Licensing, tokens: Tokens, app: AppContext
) -> None:
    entitlement = (
        await fulfil(fulfillment_stub, tokens, order_of("o-1", line(SEATS_3, ["ann@example.com"])))
    ).entitlements[0]
    user = entitlement.named_users[0]
    token = await redeem(licensing_stub, user.invitation_code)
    keys = await jwks_of(licensing_stub)

    granted = await licensing_stub.ActivateSeat(activate_as(token, "device-0001"))
    claims = verify(granted.lease.token, keys)
    assert claims["token_use"] == "lease"
    assert claims["sub"] == granted.activation_id
    assert (claims["user_id"], claims["email"]) == (user.user_id, "ann@example.com")
    assert claims["entitlement_id"] == entitlement.entitlement_id
    assert granted.entitlement.entitlement_id == entitlement.entitlement_id
    assert granted.entitlement.seats_in_use == 1
    async with app.store.read() as tx:
        stored_user = await tx.connection.execute(
            text("SELECT user_id FROM activations WHERE activation_id = :id"),
            {"id": granted.activation_id},
        )
        assert stored_user.scalar_one() == user.user_id

    # A renewed lease still names the user.
    renewed = await licensing_stub.RenewLease(
        lic.RenewLeaseRequest(lease_token=granted.lease.token)
    )
    renewed_claims = verify(renewed.lease.token, keys)
    assert (renewed_claims["user_id"], renewed_claims["email"]) == (user.user_id, user.email)

    # The same token and fingerprint again keep the seat.
    again = await licensing_stub.ActivateSeat(activate_as(token, "device-0001"))
    assert again.activation_id == granted.activation_id
    assert again.entitlement.seats_in_use == 1

    # CheckLicense accepts the token too, and takes no seat.
    checked = await licensing_stub.CheckLicense(
        lic.CheckLicenseRequest(identity_token=token, product_id=PRODUCT_ID)
    )
    assert checked.entitlement.entitlement_id == entitlement.entitlement_id
    assert checked.entitlement.seats_in_use == 1

    # A license key's lease carries no user.
    by_key = await licensing_stub.ActivateSeat(
        lic.ActivateSeatRequest(
            license_key=entitlement.license_key,
            product_id=PRODUCT_ID,
            fingerprint="device-0002",
            label="desk",
        )
    )
    key_claims = verify(by_key.lease.token, keys)
    assert "user_id" not in key_claims
    assert "email" not in key_claims

    # A device the user released, activated again with the license key, is nobody's:
    # neither its lease nor the renewal of that lease names the user.
    latest = again.lease.token
    await licensing_stub.ReleaseSeat(lic.ReleaseSeatRequest(lease_token=latest))
    by_key_same_device = await licensing_stub.ActivateSeat(
        lic.ActivateSeatRequest(
            license_key=entitlement.license_key, product_id=PRODUCT_ID, fingerprint="device-0001"
        )
    )
    assert by_key_same_device.activation_id == granted.activation_id
    renewed_by_key = await licensing_stub.RenewLease(
        lic.RenewLeaseRequest(lease_token=by_key_same_device.lease.token)
    )
    for token_now in (by_key_same_device.lease.token, renewed_by_key.lease.token):
        assert "user_id" not in verify(token_now, keys)


@pytest.mark.usefixtures("skus")
async def test_identity_token_for_another_product_is_refused(
    fulfillment_stub: Fulfillment, licensing_stub: Licensing, tokens: Tokens
) -> None:
    entitlement = (
        await fulfil(fulfillment_stub, tokens, order_of("o-1", line(SEATS_3, ["ann@example.com"])))
    ).entitlements[0]
    token = await redeem(licensing_stub, entitlement.named_users[0].invitation_code)
    for call in (
        licensing_stub.ActivateSeat(activate_as(token, "device-0001", "other-app")),
        licensing_stub.CheckLicense(
            lic.CheckLicenseRequest(identity_token=token, product_id="other-app")
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        failure = failure_of(caught.value)
        assert (failure.code, failure.reason, failure.metadata) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "PRODUCT_MISMATCH",
            {"product_id": "other-app"},
        )


@pytest.mark.usefixtures("skus")
async def test_anything_but_an_identity_token_is_an_invalid_credential(
    fulfillment_stub: Fulfillment,
    licensing_stub: Licensing,
    tokens: Tokens,
    app: AppContext,
    server: KeyturnServer,
) -> None:
    entitlement = (
        await fulfil(fulfillment_stub, tokens, order_of("o-1", line(SEATS_3, ["ann@example.com"])))
    ).entitlements[0]
    code = entitlement.named_users[0].invitation_code
    identity = await redeem(licensing_stub, code)
    lease = (
        await licensing_stub.ActivateSeat(
            lic.ActivateSeatRequest(
                license_key=entitlement.license_key,
                product_id=PRODUCT_ID,
                fingerprint="device-0001",
                label="desk",
            )
        )
    ).lease.token
    header, payload, signature = identity.split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    kid = jwt.get_unverified_header(identity)["kid"]
    other_user = dict(claims, sub="usr_" + "0" * 26, email="mallory@example.com")
    forged_payload = jwt.utils.base64url_encode(json.dumps(other_user).encode()).decode()
    not_identities = {
        "lease token": lease,
        "garbage": "not-a-token",
        "tampered": f"{header}.{forged_payload}.{signature}",
        "foreign key": jwt.encode(
            claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": kid}
        ),
        "alg none": jwt.encode(claims, None, algorithm="none", headers={"kid": kid}),
        "invitation code": code,
        "license key": entitlement.license_key,
    }
    before = await database_state(server)
    for name, credential in not_identities.items():
        for call in (
            licensing_stub.ActivateSeat(activate_as(credential, "device-0002")),
            licensing_stub.CheckLicense(
                lic.CheckLicenseRequest(identity_token=credential, product_id=PRODUCT_ID)
            ),
        ):
            assert await refused(call) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "INVALID_LICENSE_KEY",
            ), name
    # Nor is an identity token or an invitation code a license key.
    for credential in (identity, code):
        request = lic.CheckLicenseRequest(license_key=credential, product_id=PRODUCT_ID)
        outcome = await refused(licensing_stub.CheckLicense(request))
        assert outcome == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_LICENSE_KEY")
    # Nor is an identity token a lease.
    for call in (
        licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=identity)),
        licensing_stub.ReleaseSeat(lic.ReleaseSeatRequest(lease_token=identity)),
    ):
        assert await refused(call) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_LEASE")
    assert await database_state(server) == before
    # The genuine token still works after all that.
    granted = await licensing_stub.ActivateSeat(activate_as(identity, "device-0002"))
    assert granted.entitlement.seats_in_use == 2


@pytest.mark.usefixtures("skus")
async def test_identity_token_follows_its_entitlement_into_cancellation(
    fulfillment_stub: Fulfillment, licensing_stub: Licensing, tokens: Tokens
) -> None:
    entitlement = (
        await fulfil(fulfillment_stub, tokens, order_of("o-1", line(SEATS_3, ["ann@example.com"])))
    ).entitlements[0]
    token = await redeem(licensing_stub, entitlement.named_users[0].invitation_code)
    await fulfil(
        fulfillment_stub,
        tokens,
        order_of("o-2", line(CANCEL, entitlement_id=entitlement.entitlement_id)),
    )
    checked = await licensing_stub.CheckLicense(
        lic.CheckLicenseRequest(identity_token=token, product_id=PRODUCT_ID)
    )
    assert checked.entitlement.status == lic.ENTITLEMENT_STATUS_CANCELLED
    assert await refused(licensing_stub.ActivateSeat(activate_as(token, "device-0001"))) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ENTITLEMENT_CANCELLED",
    )


# --- identity tokens that end (KEYTURN_IDENTITY_TOKEN_IDLE_DAYS) ----------------------------

INVITE_3 = "INVITE-3"
IDLE = timedelta(days=10)
SECOND = timedelta(seconds=1)


@pytest.fixture
async def idle_limit(app: AppContext) -> timedelta:
    """Identity tokens end after IDLE unused (the setting's 180 days would outlast the
    test's API tokens, which end after 365)."""
    app.identity_idle_limit = IDLE
    return IDLE


@pytest.fixture
async def invite_sku(catalog_stub: catalog_pb2_grpc.CatalogServiceStub, tokens: Tokens) -> None:
    sku = create_sku(INVITE_3, seats=3)
    sku.operations[0].create.dispatch = cat.DISPATCH_INVITATION
    await put_catalog(catalog_stub, tokens("catalog"), sku)


def move_clock(app: AppContext, by: timedelta) -> None:
    assert isinstance(app.clock, SystemClock)
    app.clock.offset += by


async def identity_used(app: AppContext, user_id: str) -> datetime | None:
    """The stored last use of the user's identity token, once the noted uses are written."""
    await app.identity_uses.settle()
    async with app.store.read() as tx:
        user = await tx.named_users.get(user_id)
    assert user is not None
    return user.identity_used_time


async def expiry_of(stub: Licensing, token: str) -> RpcFailure:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ActivateSeat(activate_as(token, "device-0001"))
    return failure_of(refused.value)


@pytest.mark.usefixtures("invite_sku", "idle_limit")
async def test_every_use_of_an_identity_token_moves_its_end(
    fulfillment_stub: Fulfillment, licensing_stub: Licensing, tokens: Tokens, app: AppContext
) -> None:
    entitlement = (
        await fulfil(fulfillment_stub, tokens, order_of("o-1", line(INVITE_3, ["ann@x.example"])))
    ).entitlements[0]
    user = entitlement.named_users[0]
    token = await redeem(licensing_stub, user.invitation_code)
    redeemed = await identity_used(app, user.user_id)
    assert redeemed is not None, "the idle period starts at the redemption"

    # Each of ActivateSeat, CheckLicense and RenewLease, a moment before the end, is a use.
    move_clock(app, IDLE - SECOND)
    granted = await licensing_stub.ActivateSeat(activate_as(token, "device-0001"))
    activated = await identity_used(app, user.user_id)
    assert activated is not None
    assert activated - redeemed >= IDLE - SECOND

    move_clock(app, IDLE - SECOND)
    check = lic.CheckLicenseRequest(identity_token=token, product_id=PRODUCT_ID)
    await licensing_stub.CheckLicense(check)
    checked = await identity_used(app, user.user_id)
    assert checked is not None
    assert checked - activated >= IDLE - SECOND

    move_clock(app, IDLE - SECOND)
    await licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=granted.lease.token))
    renewed = await identity_used(app, user.user_id)
    assert renewed is not None
    assert renewed - checked >= IDLE - SECOND

    move_clock(app, IDLE - SECOND)
    assert (await licensing_stub.CheckLicense(check)).entitlement.entitlement_id


@pytest.mark.usefixtures("invite_sku", "idle_limit")
async def test_an_unused_identity_token_expires_and_a_resend_invites_its_user_again(
    fulfillment_stub: Fulfillment, licensing_stub: Licensing, tokens: Tokens, app: AppContext
) -> None:
    emails = ["ann@x.example", "bob@x.example", "cy@x.example"]
    entitlement = (
        await fulfil(fulfillment_stub, tokens, order_of("o-1", line(INVITE_3, emails)))
    ).entitlements[0]
    users = by_email(entitlement)
    ann = await redeem(licensing_stub, users["ann@x.example"].invitation_code)
    move_clock(app, IDLE / 2)
    bob = await redeem(licensing_stub, users["bob@x.example"].invitation_code)
    redeemed = await identity_used(app, users["ann@x.example"].user_id)
    assert redeemed is not None

    move_clock(app, IDLE / 2)  # ann's end, to the second; bob's is IDLE / 2 away
    failure = await expiry_of(licensing_stub, ann)
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "IDENTITY_TOKEN_EXPIRED",
    )
    assert failure.metadata == {
        "user_id": users["ann@x.example"].user_id,
        "expire_time": (redeemed + IDLE).isoformat(),
    }
    assert "new invitation" in failure.message
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await licensing_stub.CheckLicense(
            lic.CheckLicenseRequest(identity_token=ann, product_id=PRODUCT_ID)
        )
    assert failure_of(refused.value).reason == "IDENTITY_TOKEN_EXPIRED"
    assert await identity_used(app, users["ann@x.example"].user_id) == redeemed, (
        "a refused token's use is not recorded: it stays expired"
    )
    await licensing_stub.ActivateSeat(activate_as(bob, "device-0002"))  # bob's still works

    # The way back: ResendCredentials gives ann a new code (cy keeps his unredeemed one).
    resent = await fulfillment_stub.ResendCredentials(
        ful.ResendCredentialsRequest(entitlement_id=entitlement.entitlement_id),
        metadata=tokens("fulfill"),
    )
    assert sorted(m.to for m in resent.messages) == ["ann@x.example", "cy@x.example"]
    assert {m.kind for m in resent.messages} == {ful.MESSAGE_KIND_INVITATION}
    async with app.store.read() as tx:
        sealed = await tx.named_users.sealed_invitation(users["ann@x.example"].user_id)
        cy_sealed = await tx.named_users.sealed_invitation(users["cy@x.example"].user_id)
    assert sealed is not None
    assert cy_sealed is not None
    new_code = app.sealer.unseal(sealed).decode()
    assert new_code != users["ann@x.example"].invitation_code
    assert app.sealer.unseal(cy_sealed).decode() == users["cy@x.example"].invitation_code
    shown = by_email(await get_entitlement(fulfillment_stub, tokens, entitlement.entitlement_id))
    assert not shown["ann@x.example"].HasField("redeem_time"), "invited again"

    # The old code and the expired token are done; the new code gives a working token.
    with pytest.raises(grpc.aio.AioRpcError) as old_code:
        await redeem(licensing_stub, users["ann@x.example"].invitation_code)
    assert failure_of(old_code.value).reason == "INVALID_INVITATION"
    assert (await expiry_of(licensing_stub, ann)).reason == "INVALID_LICENSE_KEY"
    fresh = await redeem(licensing_stub, new_code)
    granted = await licensing_stub.ActivateSeat(activate_as(fresh, "device-0001"))
    assert granted.entitlement.entitlement_id == entitlement.entitlement_id
    assert jwt.decode(granted.lease.token, options={"verify_signature": False})["email"] == (
        "ann@x.example"
    )


@pytest.mark.usefixtures("invite_sku")
async def test_without_an_idle_limit_identity_tokens_never_end(
    fulfillment_stub: Fulfillment, licensing_stub: Licensing, tokens: Tokens, app: AppContext
) -> None:
    app.identity_idle_limit = None  # KEYTURN_IDENTITY_TOKEN_IDLE_DAYS=0
    entitlement = (
        await fulfil(fulfillment_stub, tokens, order_of("o-1", line(INVITE_3, ["ann@x.example"])))
    ).entitlements[0]
    token = await redeem(licensing_stub, entitlement.named_users[0].invitation_code)
    move_clock(app, timedelta(days=300))
    await licensing_stub.ActivateSeat(activate_as(token, "device-0001"))
    resent = await fulfillment_stub.ResendCredentials(
        ful.ResendCredentialsRequest(entitlement_id=entitlement.entitlement_id),
        metadata=tokens("fulfill"),
    )
    assert resent.queued_messages == 0, "a redeemed user with a live token is not invited again"
