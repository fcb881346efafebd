"""CheckLicense and overage policies through a real server: seat limits, in_overage, status."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, timedelta

import grpc
import jwt
import pytest
from google.protobuf import duration_pb2
from sqlalchemy import text

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.app.context import AppContext
from keyturn.server.clock import SystemClock
from keyturn.server.domain.license_key import generate_license_key

from conftest import Tokens
from support.catalog import put_catalog
from support.rows import table_digests
from support.rpc import PRODUCT_ID, failure_of

Catalog = catalog_pb2_grpc.CatalogServiceStub
Fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub
Licensing = licensing_pb2_grpc.LicensingServiceStub

NONE = cat.OVERAGE_POLICY_NONE
P125 = cat.OVERAGE_POLICY_ALLOW_125_PERCENT
P150 = cat.OVERAGE_POLICY_ALLOW_150_PERCENT
P200 = cat.OVERAGE_POLICY_ALLOW_200_PERCENT


def create_op(
    seats: int,
    overage: int = cat.OVERAGE_POLICY_UNSPECIFIED,
    term: str = "P1Y",
    trial: bool = False,
    model: int = cat.LICENSE_MODEL_FLOATING,
    grace: timedelta = timedelta(0),
) -> cat.Operation:
    return cat.Operation(
        create=cat.CreateOperation(
            edition_id="standard",
            seats_per_unit=seats,
            term=term,
            perpetual=not term,
            trial=trial,
            license_model=model,
            lease_duration=duration_pb2.Duration(seconds=900),
            grace_period=duration_pb2.Duration(seconds=int(grace.total_seconds())),
            overage=overage,
        )
    )


def sku(sku_id: str, operation: cat.Operation) -> cat.Sku:
    return cat.Sku(
        sku_id=sku_id, product_id=PRODUCT_ID, display_name=sku_id, operations=[operation]
    )


ADD_SEATS = sku("ADD-SEATS", cat.Operation(add_seats=cat.AddSeatsOperation(seats_per_unit=1)))
REMOVE_SEATS = sku(
    "REMOVE-SEATS", cat.Operation(remove_seats=cat.RemoveSeatsOperation(seats_per_unit=1))
)
CANCEL = sku("CANCEL", cat.Operation(cancel=cat.CancelOperation()))


class Shop:
    """Puts SKUs and fulfils one-line orders, numbering the orders."""

    def __init__(self, catalog: Catalog, fulfillment: Fulfillment, tokens: Tokens) -> None:
        self.catalog = catalog
        self.fulfillment = fulfillment
        self.tokens = tokens
        self._orders = 0

    async def put(self, *skus: cat.Sku) -> None:
        await put_catalog(self.catalog, self.tokens("catalog"), *skus)

    async def order(
        self, sku_id: str, quantity: int = 1, entitlement_id: str = ""
    ) -> ful.Entitlement:
        self._orders += 1
        response = await self.fulfillment.FulfillOrder(
            ful.FulfillOrderRequest(
                source="test",
                order_id=f"o-{self._orders}",
                customer=ful.Customer(customer_id="cust-1", email="it@initech.example"),
                lines=[
                    ful.OrderLine(sku_id=sku_id, quantity=quantity, entitlement_id=entitlement_id)
                ],
            ),
            metadata=self.tokens("fulfill"),
        )
        return response.entitlements[0]

    async def new(self, operation: cat.Operation, quantity: int = 1) -> ful.Entitlement:
        """A fresh entitlement made by a SKU of this one create operation."""
        self._orders += 1
        sku_id = f"CREATE-{self._orders}"
        await self.put(sku(sku_id, operation))
        return await self.order(sku_id, quantity)

    async def get(self, entitlement_id: str) -> ful.Entitlement:
        response = await self.fulfillment.GetEntitlement(
            ful.GetEntitlementRequest(entitlement_id=entitlement_id),
            metadata=self.tokens("read"),
        )
        return response.entitlement


@pytest.fixture
def shop(catalog_stub: Catalog, fulfillment_stub: Fulfillment, tokens: Tokens) -> Shop:
    return Shop(catalog_stub, fulfillment_stub, tokens)


@pytest.fixture
def clock(app: AppContext) -> SystemClock:
    assert isinstance(app.clock, SystemClock)
    return app.clock


def activation(key: str, fingerprint: str, product_id: str = PRODUCT_ID) -> lic.ActivateSeatRequest:
    return lic.ActivateSeatRequest(
        license_key=key, product_id=product_id, fingerprint=fingerprint, label="laptop"
    )


async def check(stub: Licensing, key: str, product_id: str = PRODUCT_ID) -> lic.EntitlementSummary:
    response = await stub.CheckLicense(
        lic.CheckLicenseRequest(license_key=key, product_id=product_id)
    )
    return response.entitlement


async def jwks_of(stub: Licensing) -> jwt.PyJWKSet:
    response = await stub.GetSigningKeys(lic.GetSigningKeysRequest())
    return jwt.PyJWKSet.from_dict(json.loads(response.jwks_json))


def verify(token: str, keys: jwt.PyJWKSet) -> dict[str, object]:
    kid = jwt.get_unverified_header(token)["kid"]
    return jwt.decode(
        token, keys[kid].key, algorithms=["EdDSA"], audience=PRODUCT_ID, issuer="keyturn"
    )


async def refusal(call):  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return failure_of(caught.value)


async def held_seats(app: AppContext, entitlement_id: str) -> int:
    """Unreleased activations with a lease not yet expired, counted with plain SQL."""
    async with app.store.read() as tx:
        result = await tx.connection.execute(
            text(
                "SELECT count(*) FROM activations WHERE entitlement_id = :id "
                "AND released_time IS NULL AND lease_expire_time > :now"
            ),
            {"id": entitlement_id, "now": app.clock.now()},
        )
        return int(result.scalar_one())


# --- Overage ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "seat_limit"),
    [
        (cat.OVERAGE_POLICY_UNSPECIFIED, 4),
        (NONE, 4),
        (P125, 5),
        (P150, 6),
        (P200, 8),
    ],
    ids=["unspecified", "none", "125", "150", "200"],
)
async def test_activations_run_up_to_the_seat_limit_of_the_policy(
    shop: Shop, licensing_stub: Licensing, app: AppContext, policy: int, seat_limit: int
) -> None:
    created = await shop.new(create_op(seats=4, overage=policy))
    expected_policy = NONE if policy == cat.OVERAGE_POLICY_UNSPECIFIED else policy
    fetched = await shop.get(created.entitlement_id)
    for entitlement in (created, fetched):
        assert (entitlement.seats, entitlement.overage, entitlement.seat_limit) == (
            4,
            expected_policy,
            seat_limit,
        )
    keys = await jwks_of(licensing_stub)
    for n in range(1, seat_limit + 1):
        granted = await licensing_stub.ActivateSeat(
            activation(created.license_key, f"device-{n:04d}")
        )
        claims = verify(granted.lease.token, keys)
        assert (claims["seats"], claims["seat_limit"], claims["in_overage"]) == (
            4,
            seat_limit,
            n > 4,
        )
        summary = granted.entitlement
        assert (summary.seats, summary.seats_in_use, summary.seat_limit, summary.in_overage) == (
            4,
            n,
            seat_limit,
            n > 4,
        )
    failure = await refusal(
        licensing_stub.ActivateSeat(activation(created.license_key, "device-9999"))
    )
    assert (failure.code, failure.reason, failure.metadata) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "SEATS_EXHAUSTED",
        {"seats": "4", "seat_limit": str(seat_limit)},
    )
    assert await held_seats(app, created.entitlement_id) == seat_limit
    assert (await shop.get(created.entitlement_id)).seats_in_use == seat_limit


@pytest.mark.parametrize(
    ("seats_per_unit", "quantity", "policy", "seats", "seat_limit"),
    [
        (1, 3, P150, 3, 4),  # 3 * 1.5 = 4.5, not 3 * (1 * 1.5 rounded down) = 3
        (1, 3, P125, 3, 3),  # 3.75 rounds down to the paid count
        (2, 3, P125, 6, 7),
        (1, 1, P125, 1, 1),
        (1, 1, P150, 1, 1),
        (3, 1, P200, 3, 6),
    ],
    ids=["1x3-150", "1x3-125", "2x3-125", "1x1-125", "1x1-150", "3x1-200"],
)
async def test_seat_limit_rounds_down_on_the_ordered_seats(
    shop: Shop,
    licensing_stub: Licensing,
    seats_per_unit: int,
    quantity: int,
    policy: int,
    seats: int,
    seat_limit: int,
) -> None:
    created = await shop.new(create_op(seats=seats_per_unit, overage=policy), quantity)
    assert (created.seats, created.seat_limit) == (seats, seat_limit)
    summary = await check(licensing_stub, created.license_key)
    assert (summary.seats, summary.seat_limit) == (seats, seat_limit)


async def test_seat_limit_follows_added_and_removed_seats(
    shop: Shop, licensing_stub: Licensing
) -> None:
    await shop.put(ADD_SEATS, REMOVE_SEATS)
    created = await shop.new(create_op(seats=4, overage=P150))
    entitlement_id = created.entitlement_id
    grown = await shop.order(ADD_SEATS.sku_id, quantity=3, entitlement_id=entitlement_id)
    assert (grown.seats, grown.overage, grown.seat_limit) == (7, P150, 10)
    shrunk = await shop.order(REMOVE_SEATS.sku_id, quantity=5, entitlement_id=entitlement_id)
    assert (shrunk.seats, shrunk.seat_limit) == (2, 3)
    summary = await check(licensing_stub, created.license_key)
    assert (summary.seats, summary.seat_limit) == (2, 3)
    for n in range(3):
        await licensing_stub.ActivateSeat(activation(created.license_key, f"device-{n:04d}"))
    failure = await refusal(
        licensing_stub.ActivateSeat(activation(created.license_key, "device-9999"))
    )
    assert (failure.reason, failure.metadata) == (
        "SEATS_EXHAUSTED",
        {"seats": "2", "seat_limit": "3"},
    )


async def test_concurrent_activations_stop_at_the_seat_limit(
    shop: Shop, licensing_stub: Licensing, app: AppContext
) -> None:
    created = await shop.new(create_op(seats=2, overage=P150))
    results = await asyncio.gather(
        *(
            licensing_stub.ActivateSeat(activation(created.license_key, f"device-{n:04d}"))
            for n in range(20)
        ),
        return_exceptions=True,
    )
    granted = [r for r in results if isinstance(r, lic.ActivateSeatResponse)]
    refused = [failure_of(r) for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(granted) == 3
    assert len(refused) == 17
    assert {(f.code, f.reason) for f in refused} == {
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "SEATS_EXHAUSTED")
    }
    # Exactly one grant pushed the count past the paid seats.
    keys = await jwks_of(licensing_stub)
    overage = sorted(bool(verify(g.lease.token, keys)["in_overage"]) for g in granted)
    assert overage == [False, False, True]
    assert await held_seats(app, created.entitlement_id) == 3
    summary = await check(licensing_stub, created.license_key)
    assert (summary.seats_in_use, summary.in_overage) == (3, True)


async def test_overage_ends_when_a_seat_is_given_back(
    shop: Shop, licensing_stub: Licensing
) -> None:
    created = await shop.new(create_op(seats=2, overage=P200))
    key = created.license_key
    leases = [
        (await licensing_stub.ActivateSeat(activation(key, f"device-{n:04d}"))).lease.token
        for n in range(3)
    ]
    keys = await jwks_of(licensing_stub)
    # A seat in overage is kept at renewal: the limit, not the paid count, applies.
    renewed = await licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=leases[2]))
    assert renewed.entitlement.in_overage
    assert verify(renewed.lease.token, keys)["in_overage"] is True
    summary = await check(licensing_stub, key)
    assert (summary.seats_in_use, summary.seat_limit, summary.in_overage) == (3, 4, True)

    await licensing_stub.ReleaseSeat(lic.ReleaseSeatRequest(lease_token=leases[0]))

    summary = await check(licensing_stub, key)
    assert (summary.seats_in_use, summary.in_overage) == (2, False)
    again = await licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=leases[1]))
    assert (again.entitlement.seats_in_use, again.entitlement.in_overage) == (2, False)
    assert verify(again.lease.token, keys)["in_overage"] is False


async def test_removed_seats_refuse_the_newest_activations_beyond_the_new_limit(
    shop: Shop, licensing_stub: Licensing, clock: SystemClock
) -> None:
    await shop.put(REMOVE_SEATS)
    created = await shop.new(create_op(seats=4, overage=P125))
    leases = []
    for n in range(5):
        clock.offset += timedelta(seconds=1)  # distinct seat times, oldest first
        granted = await licensing_stub.ActivateSeat(
            activation(created.license_key, f"device-{n:04d}")
        )
        leases.append(granted.lease.token)
    shrunk = await shop.order(
        REMOVE_SEATS.sku_id, quantity=2, entitlement_id=created.entitlement_id
    )
    assert (shrunk.seats, shrunk.seat_limit, shrunk.seats_in_use) == (2, 2, 5)

    for n in (0, 1):
        renewed = await licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=leases[n]))
        leases[n] = renewed.lease.token
    for n in (2, 3, 4):
        failure = await refusal(
            licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=leases[n]))
        )
        assert (failure.code, failure.reason, failure.metadata) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "SEATS_EXHAUSTED",
            {"seats": "2", "seat_limit": "2"},
        )
    # Once the oldest gives its seat back, the next one in line keeps its own.
    await licensing_stub.ReleaseSeat(lic.ReleaseSeatRequest(lease_token=leases[0]))
    renewed = await licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=leases[2]))
    assert renewed.entitlement.seat_limit == 2


async def test_seats_in_overage_are_not_reported_as_to_be_refused(
    shop: Shop, licensing_stub: Licensing
) -> None:
    created = await shop.new(create_op(seats=2, overage=P150))
    leases = [
        (
            await licensing_stub.ActivateSeat(activation(created.license_key, f"device-{n:04d}"))
        ).lease.token
        for n in range(3)
    ]
    for token in leases:  # every seat renews: none is beyond what may be in use
        await licensing_stub.RenewLease(lic.RenewLeaseRequest(lease_token=token))
    fetched = await shop.get(created.entitlement_id)
    assert (fetched.seats_in_use, fetched.seat_limit) == (3, 3)
    assert fetched.seats_over == 0


# --- CheckLicense ----------------------------------------------------------------------


async def test_check_license_reports_the_entitlement_without_taking_a_seat(
    shop: Shop, licensing_stub: Licensing, app: AppContext
) -> None:
    created = await shop.new(create_op(seats=1))
    key = created.license_key
    before = await table_digests(app.store)
    summary = await check(licensing_stub, key)
    assert summary.entitlement_id == created.entitlement_id
    assert summary.product_id == PRODUCT_ID
    assert summary.edition_id == "standard"
    assert summary.status == lic.ENTITLEMENT_STATUS_ACTIVE
    assert {(f.name, f.limit if f.HasField("limit") else None) for f in summary.features} == {
        ("export-pdf", None),
        ("projects", 10),
    }
    assert (summary.seats, summary.seats_in_use, summary.seat_limit) == (1, 0, 1)
    assert not summary.in_overage
    assert summary.end_time == created.end_time
    # The key as typed by a person works too.
    assert (await check(licensing_stub, " ".join(key.lower().split("-")))) == summary
    assert await table_digests(app.store) == before  # no seat, no event, nothing written

    # The single seat is still free; once taken, CheckLicense still answers.
    granted = await licensing_stub.ActivateSeat(activation(key, "device-0001"))
    summary = await check(licensing_stub, key)
    assert (summary.seats_in_use, summary.in_overage) == (1, False)
    assert summary == granted.entitlement
    assert await held_seats(app, created.entitlement_id) == 1


async def test_check_license_of_a_trial_and_of_a_perpetual_entitlement(
    shop: Shop, licensing_stub: Licensing
) -> None:
    trial = await shop.new(create_op(seats=1, term="P14D", trial=True))
    summary = await check(licensing_stub, trial.license_key)
    assert summary.status == lic.ENTITLEMENT_STATUS_TRIAL
    assert summary.end_time.ToDatetime(tzinfo=UTC) == trial.end_time.ToDatetime(tzinfo=UTC)
    perpetual = await shop.new(create_op(seats=2, term=""))
    summary = await check(licensing_stub, perpetual.license_key)
    assert summary.status == lic.ENTITLEMENT_STATUS_ACTIVE
    assert not summary.HasField("end_time")
    assert summary.seats == 2


async def test_check_license_answers_for_an_expired_entitlement(
    shop: Shop, licensing_stub: Licensing, clock: SystemClock
) -> None:
    created = await shop.new(create_op(seats=1, term="P30D", grace=timedelta(days=7)))
    key = created.license_key
    end = created.end_time.ToDatetime(tzinfo=UTC)
    clock.offset += end - clock.now() + timedelta(days=6)  # within the grace
    assert (await check(licensing_stub, key)).status == lic.ENTITLEMENT_STATUS_ACTIVE
    granted = await licensing_stub.ActivateSeat(activation(key, "device-0001"))
    assert granted.entitlement.seats_in_use == 1

    clock.offset += timedelta(days=2)  # past end + grace
    summary = await check(licensing_stub, key)
    assert summary.status == lic.ENTITLEMENT_STATUS_EXPIRED
    assert summary.entitlement_id == created.entitlement_id
    assert summary.end_time == created.end_time
    failure = await refusal(licensing_stub.ActivateSeat(activation(key, "device-0002")))
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ENTITLEMENT_EXPIRED",
    )


async def test_check_license_answers_for_a_cancelled_entitlement(
    shop: Shop, licensing_stub: Licensing
) -> None:
    await shop.put(CANCEL)
    created = await shop.new(create_op(seats=3, overage=P200))
    key = created.license_key
    await licensing_stub.ActivateSeat(activation(key, "device-0001"))
    await shop.order(CANCEL.sku_id, entitlement_id=created.entitlement_id)
    summary = await check(licensing_stub, key)
    assert summary.status == lic.ENTITLEMENT_STATUS_CANCELLED
    assert (summary.seats, summary.seat_limit) == (3, 6)
    failure = await refusal(licensing_stub.ActivateSeat(activation(key, "device-0002")))
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ENTITLEMENT_CANCELLED",
    )


async def test_check_license_counts_lapsed_floating_leases_as_free(
    shop: Shop, licensing_stub: Licensing, app: AppContext, clock: SystemClock
) -> None:
    floating = await shop.new(create_op(seats=2))
    node_locked = await shop.new(create_op(seats=2, model=cat.LICENSE_MODEL_NODE_LOCKED))
    for entitlement in (floating, node_locked):
        for n in range(2):
            await licensing_stub.ActivateSeat(
                activation(entitlement.license_key, f"device-{n:04d}")
            )
    clock.offset += timedelta(seconds=900) + app.lapse_grace + timedelta(minutes=1)
    assert (await check(licensing_stub, floating.license_key)).seats_in_use == 0
    assert (await check(licensing_stub, node_locked.license_key)).seats_in_use == 2


async def test_check_license_refuses_unknown_keys_and_other_products(
    shop: Shop, licensing_stub: Licensing, app: AppContext
) -> None:
    created = await shop.new(create_op(seats=1))
    real = created.license_key
    typo = real[:-1] + ("0" if real[-1] != "0" else "1")
    answers = set()
    for key in (typo, generate_license_key(), "not-a-key", real + "-AAAAA"):
        failure = await refusal(
            licensing_stub.CheckLicense(
                lic.CheckLicenseRequest(license_key=key, product_id=PRODUCT_ID)
            )
        )
        answers.add((failure.code, failure.reason, failure.message))
    assert answers == {
        (grpc.StatusCode.UNAUTHENTICATED, "INVALID_LICENSE_KEY", "the license key is not valid")
    }
    failure = await refusal(
        licensing_stub.CheckLicense(
            lic.CheckLicenseRequest(license_key=real, product_id="other-app")
        )
    )
    assert (failure.code, failure.reason, failure.metadata) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "PRODUCT_MISMATCH",
        {"product_id": "other-app"},
    )
    for request, field in (
        (lic.CheckLicenseRequest(product_id=PRODUCT_ID), "license_key"),
        (lic.CheckLicenseRequest(license_key=real), "product_id"),
    ):
        failure = await refusal(licensing_stub.CheckLicense(request))
        assert (failure.code, failure.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST",
        )
        assert field in failure.fields
