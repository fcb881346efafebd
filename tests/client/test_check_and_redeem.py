"""check() and redeem_invitation() of both licensing clients, and seats taken with an
identity token, against a real server on every database backend.

Every test runs for the sync and the asyncio client (the `open_client` fixture).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

import grpc
import jwt
import pytest
from client_harness import LicenseOf, Licensing, OpenLicensing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import duration_pb2

from keyturn.client import (
    AuthenticationError,
    CatalogClient,
    EntitlementExpiredError,
    EntitlementSuspendedError,
    FulfillmentClient,
    IdentityTokenExpiredError,
    InvalidInvitationError,
    InvalidLeaseError,
    InvalidLicenseKeyError,
    InvalidRequestError,
    InvitationRedeemedError,
    ProductMismatchError,
    SeatsExhaustedError,
    TokenExpiredError,
)
from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.context import AppContext
from keyturn.server.app.tokens import create_token
from keyturn.server.clock import SystemClock
from keyturn.server.domain.license_key import generate_invitation_code, generate_license_key

from support.rpc import PRODUCT_ID, create_sku, order, product

pytest_plugins = ["client_fixtures"]

Fulfil = Callable[..., Awaitable[ful.Entitlement]]

NAMED_2 = "NAMED-2"  # two seats, for named users
OVERAGE_1 = "OVERAGE-1"  # one paid seat, up to twice that in use
GRACE_1 = "GRACE-1"  # one seat, live for a week after its end date
GRACE = timedelta(days=7)
ADA, BOB = "ada@example.com", "bob@example.com"


def _skus() -> list[cat.Sku]:
    overage = create_sku(OVERAGE_1, seats=1)
    overage.operations[0].create.overage = cat.OVERAGE_POLICY_ALLOW_200_PERCENT
    grace = create_sku(GRACE_1, seats=1)
    grace.operations[0].create.grace_period.CopyFrom(duration_pb2.Duration(seconds=7 * 86400))
    return [create_sku(NAMED_2, seats=2), overage, grace]


@pytest.fixture
async def fulfil(server: KeyturnServer, bearer: dict[str, str]) -> AsyncIterator[Fulfil]:
    """Fulfils a one-line order of one of this module's SKUs through FulfillmentClient."""
    catalog = CatalogClient(server.address, bearer["catalog"])
    await asyncio.to_thread(catalog.put_product, product())
    for sku in _skus():
        await asyncio.to_thread(catalog.put_sku, sku)
    fulfillment = FulfillmentClient(server.address, bearer["fulfill"])

    async def make(sku_id: str, emails: Sequence[str] = ()) -> ful.Entitlement:
        request = order(f"order-{sku_id}", sku_id)
        request.lines[0].named_user_emails.extend(emails)
        response = await asyncio.to_thread(fulfillment.fulfill_order, request)
        [entitlement] = response.entitlements
        return entitlement

    yield make
    await asyncio.to_thread(fulfillment.close)
    await asyncio.to_thread(catalog.close)


@pytest.fixture
async def invited(fulfil: Fulfil) -> ful.Entitlement:
    """A two-seat entitlement with two named users, as the FulfillOrder response has it."""
    return await fulfil(NAMED_2, ["Ada@Example.COM", BOB])


def users_of(entitlement: ful.Entitlement) -> dict[str, ful.NamedUser]:
    return {user.email: user for user in entitlement.named_users}


def end_of(entitlement: ful.Entitlement) -> datetime:
    return entitlement.end_time.ToDatetime(tzinfo=UTC)


def move_server_clock(app: AppContext, to: datetime) -> None:
    """Make the server's now `to` (give or take the few milliseconds the test runs on)."""
    assert isinstance(app.clock, SystemClock)
    app.clock.offset = to - datetime.now(UTC)


# CheckLicense


async def test_check_reports_the_license_and_takes_no_seat(
    licensing: Licensing, license_of: LicenseOf
) -> None:
    entitlement = await license_of(seats=1)
    key = entitlement.license_key
    info = await licensing.check(key)
    assert (info.entitlement_id, info.product_id, info.edition_id, info.status) == (
        entitlement.entitlement_id,
        PRODUCT_ID,
        "standard",
        "active",
    )
    assert info.features == {"export-pdf": None, "projects": 10}
    assert (info.seats, info.seats_in_use, info.seat_limit, info.in_overage) == (1, 0, 1, False)
    assert info.end_time == end_of(entitlement)
    assert not info.perpetual
    assert info.extra == {}
    # As a person might type it: case and separators do not matter.
    assert await licensing.check(key.lower().replace("-", " ")) == info
    # Two checks took no seat: the only seat is still there for a device...
    lease = await licensing.activate(key)
    assert lease.entitlement == dataclasses.replace(info, seats_in_use=1)
    assert await licensing.check(key) == dataclasses.replace(info, seats_in_use=1)
    with pytest.raises(SeatsExhaustedError):  # ...and only one
        await licensing.activate(key, fingerprint="device-0002")
    await licensing.release(lease)
    assert await licensing.check(key) == info
    assert licensing.calls.count("CheckLicense") == 4
    assert licensing.calls.count("ActivateSeat") == 2


async def test_check_reports_seats_in_overage(licensing: Licensing, fulfil: Fulfil) -> None:
    entitlement = await fulfil(OVERAGE_1)
    key = entitlement.license_key
    info = await licensing.check(key)
    assert (info.seats, info.seat_limit, info.seats_in_use, info.in_overage) == (1, 2, 0, False)
    first = await licensing.activate(key)
    info = await licensing.check(key)
    assert (info.seats, info.seat_limit, info.seats_in_use, info.in_overage) == (1, 2, 1, False)
    second = await licensing.activate(key, fingerprint="device-0002")
    assert second.entitlement.in_overage
    assert second.claims["in_overage"] is True
    info = await licensing.check(key)
    assert (info.seats, info.seat_limit, info.seats_in_use, info.in_overage) == (1, 2, 2, True)
    with pytest.raises(SeatsExhaustedError):
        await licensing.activate(key, fingerprint="device-0003")
    await licensing.release(first)
    info = await licensing.check(key)
    assert (info.seats_in_use, info.in_overage) == (1, False)


async def test_check_reports_an_expired_license_instead_of_raising(
    licensing: Licensing, license_of: LicenseOf, app: AppContext
) -> None:
    entitlement = await license_of(seats=1)
    key, end = entitlement.license_key, end_of(entitlement)
    move_server_clock(app, end - timedelta(minutes=1))
    before_end = await licensing.check(key)
    assert before_end.status == "active"
    move_server_clock(app, end + timedelta(seconds=1))
    expired = await licensing.check(key)
    assert expired == dataclasses.replace(before_end, status="expired")
    assert expired.end_time == end
    # Taking a seat is what an expired license refuses.
    with pytest.raises(EntitlementExpiredError) as caught:
        await licensing.activate(key)
    assert (caught.value.code, caught.value.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ENTITLEMENT_EXPIRED",
    )
    assert caught.value.metadata["entitlement_id"] == entitlement.entitlement_id


async def test_a_suspended_license_raises_entitlement_suspended_and_goes_on_reinstated(
    licensing: Licensing, license_of: LicenseOf, server: KeyturnServer, bearer: dict[str, str]
) -> None:
    entitlement = await license_of(seats=1)
    key, entitlement_id = entitlement.license_key, entitlement.entitlement_id
    lease = await licensing.activate(key)
    fulfillment = FulfillmentClient(server.address, bearer["fulfill"])
    held = await asyncio.to_thread(fulfillment.suspend_entitlement, entitlement_id, "unpaid")
    assert held.status == ful.ENTITLEMENT_STATUS_SUSPENDED
    assert (await licensing.check(key)).status == "suspended"  # reported, not raised
    with pytest.raises(EntitlementSuspendedError) as caught:
        await licensing.renew(lease)
    assert (caught.value.code, caught.value.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ENTITLEMENT_SUSPENDED",
    )
    assert caught.value.metadata["entitlement_id"] == entitlement_id
    assert "suspend_time" in caught.value.metadata
    with pytest.raises(EntitlementSuspendedError):
        await licensing.activate(key, fingerprint="device-0002")
    await asyncio.to_thread(fulfillment.reinstate_entitlement, entitlement_id)
    renewed = await licensing.renew(lease)
    assert renewed.activation_id == lease.activation_id
    assert (await licensing.check(key)).status == "active"


async def test_check_counts_the_grace_period_as_live(
    licensing: Licensing, fulfil: Fulfil, app: AppContext
) -> None:
    entitlement = await fulfil(GRACE_1)
    key, end = entitlement.license_key, end_of(entitlement)
    move_server_clock(app, end + GRACE - timedelta(minutes=1))
    assert (await licensing.check(key)).status == "active"
    move_server_clock(app, end + GRACE + timedelta(seconds=1))
    expired = await licensing.check(key)
    assert expired.status == "expired"
    assert expired.end_time == end  # the end date, not the end of the grace


async def test_check_refuses_unknown_credentials_with_typed_errors(
    licensing: Licensing, open_client: OpenLicensing, license_of: LicenseOf
) -> None:
    entitlement = await license_of(seats=1)
    for key in ("AAAA-BBBB-CCCC-DDDD", generate_license_key()):  # malformed; well-formed
        with pytest.raises(InvalidLicenseKeyError) as unknown:
            await licensing.check(key)
        assert (unknown.value.code, unknown.value.reason) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_LICENSE_KEY",
        )
    with pytest.raises(InvalidLicenseKeyError):
        await licensing.check(identity_token="not-a-token")
    with pytest.raises(InvalidRequestError) as empty:
        await licensing.check("")
    assert [field for field, _ in empty.value.field_violations] == ["license_key"]
    other_app = await open_client(product_id="other-app")
    with pytest.raises(ProductMismatchError) as mismatch:
        await other_app.check(entitlement.license_key)
    assert mismatch.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert mismatch.value.metadata == {"product_id": "other-app"}
    for wrong in ({}, {"identity_token": "also"}):  # no credential; two credentials
        with pytest.raises(ValueError, match="exactly one"):
            await licensing.check(entitlement.license_key if wrong else None, **wrong)
    assert licensing.calls.count("CheckLicense") == 4  # the last two never left the client


# Named users


async def test_redeem_invitation_returns_a_signed_identity_token_once(
    licensing: Licensing,
    invited: ful.Entitlement,
    licensing_stub: licensing_pb2_grpc.LicensingServiceAsyncStub,
    server: KeyturnServer,
    bearer: dict[str, str],
) -> None:
    users = users_of(invited)
    assert set(users) == {ADA, BOB}  # emails are stored lower-cased
    ada, bob = users[ADA], users[BOB]
    assert ada.user_id != bob.user_id
    assert ada.invitation_code != bob.invitation_code
    token = await licensing.redeem_invitation(ada.invitation_code)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["token_use"] == "identity"
    assert (claims["sub"], claims["email"]) == (ada.user_id, ADA)
    assert (claims["entitlement_id"], claims["aud"]) == (invited.entitlement_id, PRODUCT_ID)
    # Signed by a key the server publishes.
    jwks = jwt.PyJWKSet.from_json(
        (await licensing_stub.GetSigningKeys(lic.GetSigningKeysRequest())).jwks_json
    )
    kid = jwt.get_unverified_header(token)["kid"]
    [key] = [k for k in jwks.keys if k.key_id == kid]
    verified = jwt.decode(token, key.key, algorithms=["EdDSA"], audience=PRODUCT_ID)
    assert verified == claims
    # Single use.
    with pytest.raises(InvitationRedeemedError) as again:
        await licensing.redeem_invitation(ada.invitation_code)
    assert (again.value.code, again.value.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVITATION_REDEEMED",
    )
    assert again.value.metadata == {"user_id": ada.user_id}
    # As a person might type it; each user gets a token of their own.
    bob_token = await licensing.redeem_invitation(bob.invitation_code.lower().replace("-", ""))
    bob_claims = jwt.decode(bob_token, options={"verify_signature": False})
    assert (bob_claims["sub"], bob_claims["email"]) == (bob.user_id, BOB)
    assert bob_claims["jti"] != claims["jti"]
    # Reads show both redeemed, and never the codes again.
    with FulfillmentClient(server.address, bearer["read"]) as read:
        stored = await asyncio.to_thread(read.get_entitlement, invited.entitlement_id)
    assert {u.user_id for u in stored.named_users if u.HasField("redeem_time")} == {
        ada.user_id,
        bob.user_id,
    }
    assert all(not u.invitation_code for u in stored.named_users)
    assert licensing.calls.count("RedeemInvitation") == 3


async def test_redeem_refuses_codes_it_did_not_issue(
    licensing: Licensing, invited: ful.Entitlement
) -> None:
    # Unknown, malformed, and a license key (the checksum tells the kinds apart).
    for code in (generate_invitation_code(), "nope", invited.license_key):
        with pytest.raises(InvalidInvitationError) as caught:
            await licensing.redeem_invitation(code)
        assert (caught.value.code, caught.value.reason) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_INVITATION",
        )
    with pytest.raises(InvalidRequestError) as empty:
        await licensing.redeem_invitation("")
    assert [field for field, _ in empty.value.field_violations] == ["invitation_code"]
    # None of that used up an invitation.
    for user in invited.named_users:
        assert await licensing.redeem_invitation(user.invitation_code)


async def test_identity_token_takes_a_seat_for_its_user(
    licensing: Licensing, open_client: OpenLicensing, invited: ful.Entitlement
) -> None:
    ada = users_of(invited)[ADA]
    token = await licensing.redeem_invitation(ada.invitation_code)
    lease = await licensing.activate(identity_token=token, fingerprint="device-ada-1")
    assert (lease.claims["user_id"], lease.claims["email"]) == (ada.user_id, ADA)
    assert lease.claims["token_use"] == "lease"
    assert lease.entitlement_id == invited.entitlement_id
    assert (lease.entitlement.seats, lease.entitlement.seats_in_use) == (2, 1)
    assert await licensing.verify_lease(lease.token) == dict(lease.claims)
    # Check by identity token: the same entitlement as by its license key, no seat taken.
    info = await licensing.check(identity_token=token)
    assert (info.entitlement_id, info.status, info.seats_in_use) == (
        invited.entitlement_id,
        "active",
        1,
    )
    assert await licensing.check(invited.license_key) == info
    # A renewed lease still names the user.
    old_jti = lease.claims["jti"]
    await licensing.renew(lease)
    assert lease.claims["jti"] != old_jti
    assert (lease.claims["user_id"], lease.claims["email"]) == (ada.user_id, ADA)
    # A lease is no identity token, and an identity token is no lease.
    with pytest.raises(InvalidLicenseKeyError):
        await licensing.check(identity_token=lease.token)
    with pytest.raises(InvalidLicenseKeyError):
        await licensing.activate(identity_token=lease.token, fingerprint="device-ada-2")
    with pytest.raises(InvalidLeaseError):
        await licensing.release(token)
    # The same claims under the server's kid, signed by another key.
    forged = jwt.encode(
        jwt.decode(token, options={"verify_signature": False}),
        Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"kid": jwt.get_unverified_header(token)["kid"]},
    )
    with pytest.raises(InvalidLicenseKeyError):
        await licensing.check(identity_token=forged)
    other_app = await open_client(product_id="other-app")
    with pytest.raises(ProductMismatchError):
        await other_app.check(identity_token=token)
    await licensing.release(lease)
    assert (await licensing.check(identity_token=token)).seats_in_use == 0


async def test_named_users_share_the_entitlements_seats(
    licensing: Licensing, invited: ful.Entitlement
) -> None:
    users = users_of(invited)
    ada = await licensing.redeem_invitation(users[ADA].invitation_code)
    bob = await licensing.redeem_invitation(users[BOB].invitation_code)
    ada_lease = await licensing.activate(identity_token=ada, fingerprint="device-ada-1")
    bob_lease = await licensing.activate(identity_token=bob, fingerprint="device-bob-1")
    assert bob_lease.claims["email"] == BOB
    assert bob_lease.entitlement.seats_in_use == 2
    # Both seats are taken: another device is refused, whoever asks.
    with pytest.raises(SeatsExhaustedError):
        await licensing.activate(identity_token=ada, fingerprint="device-ada-2")
    with pytest.raises(SeatsExhaustedError):
        await licensing.activate(invited.license_key, fingerprint="device-other")
    await licensing.release(ada_lease)
    again = await licensing.activate(identity_token=ada, fingerprint="device-ada-2")
    assert again.claims["user_id"] == users[ADA].user_id
    assert again.activation_id != ada_lease.activation_id


async def test_ended_tokens_raise_their_own_typed_errors(
    licensing: Licensing, invited: ful.Entitlement, app: AppContext, server: KeyturnServer
) -> None:
    """An identity token unused for the idle limit, and an API token past its end, each
    raise an error of its own, a subclass of the one an unknown credential raises."""
    app.identity_idle_limit = timedelta(days=10)
    ada = users_of(invited)[ADA]
    token = await licensing.redeem_invitation(ada.invitation_code)
    _, secret = await create_token(app, {"read"}, "a week", lifetime=timedelta(days=7))
    move_server_clock(app, datetime.now(UTC) + timedelta(days=11))
    with pytest.raises(IdentityTokenExpiredError) as unused:
        await licensing.activate(identity_token=token, fingerprint="device-ada-1")
    assert isinstance(unused.value, InvalidLicenseKeyError)
    assert (unused.value.code, unused.value.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "IDENTITY_TOKEN_EXPIRED",
    )
    assert unused.value.metadata["user_id"] == ada.user_id
    assert datetime.fromisoformat(unused.value.metadata["expire_time"]) < app.clock.now()
    with (
        FulfillmentClient(server.address, secret) as read,
        pytest.raises(TokenExpiredError) as ended,
    ):
        await asyncio.to_thread(read.get_entitlement, invited.entitlement_id)
    assert isinstance(ended.value, AuthenticationError)
    assert ended.value.reason == "TOKEN_EXPIRED"
    assert set(ended.value.metadata) == {"token_id", "expire_time"}
