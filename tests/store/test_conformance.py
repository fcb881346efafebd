"""The storage conformance suite: one set of tests, run unchanged on every backend.

Each test receives `app` (and so `database_url`), which is parametrized over
SQLite and PostgreSQL, with a freshly migrated database of its own. Domain
objects are built directly and written through the repositories.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import StatementError

from keyturn.server.app.context import AppContext
from keyturn.server.bootstrap import seat_store
from keyturn.server.domain.catalog import (
    AddFeatures,
    AddSeats,
    Cancel,
    ChangeEdition,
    ConvertTrial,
    Create,
    Dispatch,
    Edition,
    Feature,
    LicenseModel,
    Product,
    RemoveFeatures,
    RemoveSeats,
    Renew,
    Sku,
)
from keyturn.server.domain.deactivation_limits import DeactivationLimit
from keyturn.server.domain.entitlement import Customer, Entitlement
from keyturn.server.domain.errors import DomainError, Reason
from keyturn.server.domain.license_key import generate_license_key
from keyturn.server.domain.named_users import NamedUser
from keyturn.server.domain.orders import LineResult, OrderLine, OrderRequest
from keyturn.server.domain.seats import Activation, SeatOutcome
from keyturn.server.domain.token_use import recorded_before, use_is_due
from keyturn.server.store.entitlement_repository import StoredKey
from keyturn.server.store.event_repository import NewEvent
from keyturn.server.store.order_repository import StoredOrder
from keyturn.server.store.seats import (
    ActivationClaim,
    LeaseRef,
    Release,
    RenewalClaim,
    SeatResult,
    SeatStore,
)
from keyturn.server.store.signing_key_repository import StoredSigningKey
from keyturn.server.store.tables import activations, events, named_users
from keyturn.server.store.token_repository import ApiToken
from keyturn.server.store.unit_of_work import DuplicateKeyError, Store

# A fixed instant with microseconds; every time below is relative to it.
NOW = datetime(2026, 3, 14, 15, 9, 26, 535897, tzinfo=UTC)
LAPSE_GRACE = timedelta(seconds=30)
LEASE = timedelta(minutes=15)
US = timedelta(microseconds=1)

PRODUCT = Product(
    product_id="acme-cad",
    display_name="Acme CAD",
    editions=(
        Edition("standard", "Standard", (Feature("export"), Feature("projects", 10))),
        Edition("pro", "Pro", (Feature("export"), Feature("render", 4))),
    ),
    etag="etag-1",
    update_time=NOW,
)
EVERY_OPERATION = (
    Create(
        edition_id="pro",
        seats_per_unit=5,
        term="P1Y",
        trial=True,
        features=(Feature("render", 8), Feature("cloud")),
        license_model=LicenseModel.NODE_LOCKED,
        lease_duration=timedelta(hours=2),
        dispatch=Dispatch.INVITATION,
        deactivation_limit=DeactivationLimit(3, "P4W", count_releases=True),
    ),
    Renew("P1M"),
    AddSeats(2),
    RemoveSeats(1),
    ChangeEdition("standard"),
    AddFeatures((Feature("api", 100), Feature("sso"))),
    RemoveFeatures(("render", "cloud")),
    ConvertTrial(None),
    ConvertTrial("P2Y"),
    Cancel(),
)


@pytest.fixture
def store(app: AppContext) -> Store:
    return app.store


def entitlement(
    entitlement_id: str = "ent_1",
    *,
    seats: int = 3,
    model: LicenseModel = LicenseModel.FLOATING,
    end_time: datetime | None = NOW + timedelta(days=365),
    references: tuple[str, ...] = (),
    **changes: object,
) -> Entitlement:
    made = Entitlement(
        entitlement_id=entitlement_id,
        product_id="acme-cad",
        edition_id="pro",
        customer=Customer("cus_1", "Ada Lovelace", "ada@example.com"),
        ship_to_email="it@example.com",
        seats=seats,
        features=(Feature("export"), Feature("render", 4)),
        start_time=NOW - timedelta(days=1),
        end_time=end_time,
        trial=False,
        license_model=model,
        lease_duration=LEASE,
        dispatch=Dispatch.LICENSE_KEY,
        create_time=NOW - timedelta(days=1),
        update_time=NOW - timedelta(days=1),
        external_references=references,
    )
    return replace(made, **changes)  # type: ignore[arg-type]


def order_request(order_id: str = "in_1", source: str = "stripe") -> OrderRequest:
    return OrderRequest(
        source=source,
        order_id=order_id,
        customer=Customer("cus_1", "Ada Lovelace", "ada@example.com"),
        ship_to_email="",
        lines=(OrderLine("ACME-PRO-1Y", 2), OrderLine("ACME-SEATS", 1, entitlement_id="ent_1")),
    )


def stored_order(order_id: str = "in_1", source: str = "stripe") -> StoredOrder:
    request = order_request(order_id, source)
    return StoredOrder(
        request=request,
        fingerprint=request.fingerprint(),
        results=(
            LineResult(0, "ACME-PRO-1Y", "ent_1", ("create",)),
            LineResult(1, "ACME-SEATS", "ent_1", ("add_seats", "add_features")),
        ),
        create_time=NOW,
    )


async def add_entitlements(store: Store, *made: Entitlement) -> None:
    async with store.write() as tx:
        for one in made:
            await tx.entitlements.add(one, None, "stripe", "in_1")


async def get_entitlement(store: Store, entitlement_id: str) -> Entitlement | None:
    async with store.read() as tx:
        return await tx.entitlements.get(entitlement_id)


class FixedClock:
    def __init__(self, now: datetime) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now


def seats_at(store: Store, now: datetime) -> SeatStore:
    """The backend's seat store, deciding at `now`."""
    return seat_store(store, FixedClock(now), LAPSE_GRACE)


def no_events(*_: object) -> list[NewEvent]:
    return []


async def claim(
    store: Store,
    fingerprint: str,
    now: datetime = NOW,
    *,
    entitlement_id: str = "ent_1",
    renew: tuple[str, str] | None = None,
    label: str = "laptop",
) -> SeatResult:
    """One seat claim in a transaction of its own, as ActivateSeat or RenewLease does it."""
    suffix = uuid.uuid4().hex
    seats = seats_at(store, now)
    if renew is not None:
        return await seats.renew(
            RenewalClaim(entitlement_id, renew[0], renew[1], f"jti_{suffix}"), no_events
        )
    return await seats.activate(
        ActivationClaim(
            product_id="acme-cad",
            fingerprint=fingerprint,
            label=label,
            new_activation_id=f"act_{suffix}",
            new_jti=f"jti_{suffix}",
            entitlement_id=entitlement_id,
        ),
        no_events,
    )


async def release(
    store: Store, held: tuple[str, str], now: datetime, entitlement_id: str = "ent_1"
) -> Release:
    return await seats_at(store, now).release(
        LeaseRef(entitlement_id, *held), no_events, "device:test"
    )


def held_by(activation: Activation) -> tuple[str, str]:
    return activation.activation_id, activation.lease_jti


async def refused(
    store: Store, fingerprint: str, now: datetime = NOW, **kwargs: object
) -> DomainError:
    with pytest.raises(DomainError) as caught:
        await claim(store, fingerprint, now, **kwargs)  # type: ignore[arg-type]
    return caught.value


async def live_seats(store: Store, now: datetime, entitlement_id: str = "ent_1") -> int:
    async with store.read() as tx:
        found = await tx.entitlements.get(entitlement_id)
        assert found is not None
        return await tx.activations.count_live(found, now, LAPSE_GRACE)


async def count_rows(store: Store, table) -> int:  # type: ignore[no-untyped-def]
    async with store.read() as tx:
        result = await tx.connection.execute(select(func.count()).select_from(table))
        return int(result.scalar_one())


# --- catalog ----------------------------------------------------------------


async def test_product_put_get_round_trip(store: Store) -> None:
    async with store.write() as tx:
        await tx.catalog.put_product(PRODUCT)
    async with store.read() as tx:
        assert await tx.catalog.get_product("acme-cad") == PRODUCT
        assert await tx.catalog.get_product("missing") is None


async def test_putting_a_product_again_replaces_it(store: Store) -> None:
    changed = replace(
        PRODUCT,
        display_name="Acme CAD 2",
        editions=(Edition("solo"),),
        etag="etag-2",
        update_time=NOW + timedelta(hours=1),
    )
    async with store.write() as tx:
        await tx.catalog.put_product(PRODUCT)
    async with store.write() as tx:
        await tx.catalog.put_product(changed)
    async with store.read() as tx:
        assert await tx.catalog.get_product("acme-cad") == changed
        assert await tx.catalog.list_products("", 10) == [changed]


async def test_products_list_in_id_order_page_by_page(store: Store) -> None:
    ids = ["zeta", "alpha", "m.2", "m-1", "m_3", "beta", "a"]
    async with store.write() as tx:
        for product_id in ids:
            await tx.catalog.put_product(replace(PRODUCT, product_id=product_id))
    seen: list[str] = []
    after = ""
    async with store.read() as tx:
        while page := await tx.catalog.list_products(after, 3):
            assert len(page) <= 3
            seen += [p.product_id for p in page]
            after = page[-1].product_id
    assert seen == sorted(ids)


async def test_sku_put_get_round_trip_keeps_every_operation(store: Store) -> None:
    sku = Sku(
        "ACME-EVERYTHING",
        "acme-cad",
        EVERY_OPERATION,
        display_name="Everything",
        etag="e1",
        update_time=NOW,
    )
    async with store.write() as tx:
        await tx.catalog.put_product(PRODUCT)
        await tx.catalog.put_sku(sku)
    async with store.read() as tx:
        got = await tx.catalog.get_sku("ACME-EVERYTHING")
        assert await tx.catalog.get_sku("ACME-NOTHING") is None
    assert got == sku
    assert got is not None
    assert got.operations == EVERY_OPERATION
    assert got.update_time == NOW
    assert got.creates


async def test_skus_list_in_id_order_page_by_page(store: Store) -> None:
    # Mixed case and punctuation: the order must be the same on every backend
    # (code point order), or page tokens would mean different things.
    ids = ["b-2", "B.1", "a:3", "A_4", "Z9", "z0", "0-x", "9.y", "ACME-1", "ACME.1", "ACME_1"]
    other = replace(PRODUCT, product_id="other")
    async with store.write() as tx:
        await tx.catalog.put_product(PRODUCT)
        await tx.catalog.put_product(other)
        for sku_id in ids:
            await tx.catalog.put_sku(
                Sku(sku_id, "acme-cad", (Cancel(),), etag="e", update_time=NOW)
            )
        await tx.catalog.put_sku(Sku("OTHER-1", "other", (Cancel(),), etag="e", update_time=NOW))
    pages: list[list[str]] = []
    after = ""
    async with store.read() as tx:
        while page := await tx.catalog.list_skus(after, 4, product_id="acme-cad"):
            pages.append([s.sku_id for s in page])
            after = page[-1].sku_id
        everything = [s.sku_id for s in await tx.catalog.list_skus("", 100)]
        first_two = [s.sku_id for s in await tx.catalog.list_skus("", 2)]
    assert [len(p) for p in pages] == [4, 4, 3]
    assert [sku_id for p in pages for sku_id in p] == sorted(ids)
    assert everything == sorted([*ids, "OTHER-1"])
    assert first_two == sorted(ids)[:2]


async def test_get_skus_by_id(store: Store) -> None:
    async with store.write() as tx:
        await tx.catalog.put_product(PRODUCT)
        for sku_id in ("S1", "S2", "S3"):
            await tx.catalog.put_sku(
                Sku(sku_id, "acme-cad", (Cancel(),), etag="e", update_time=NOW)
            )
    async with store.read() as tx:
        found = await tx.catalog.get_skus({"S1", "S3", "S9"})
    assert sorted(found) == ["S1", "S3"]
    assert found["S3"].sku_id == "S3"


async def test_delete_sku(store: Store) -> None:
    async with store.write() as tx:
        await tx.catalog.put_product(PRODUCT)
        for sku_id in ("S1", "S2"):
            await tx.catalog.put_sku(
                Sku(sku_id, "acme-cad", (Cancel(),), etag="e", update_time=NOW)
            )
    async with store.write() as tx:
        await tx.catalog.delete_sku("S1")
        await tx.catalog.delete_sku("NEVER-THERE")
    async with store.read() as tx:
        assert await tx.catalog.get_sku("S1") is None
        assert [s.sku_id for s in await tx.catalog.list_skus("", 10)] == ["S2"]
        assert await tx.catalog.count_skus_of("acme-cad") == 1
        assert await tx.catalog.count_skus_of("other") == 0


async def test_putting_a_sku_again_replaces_it(store: Store) -> None:
    first = Sku("S1", "acme-cad", (Create("pro", 1, "P1Y"),), "One", "e1", NOW)
    second = Sku("S1", "acme-cad", (AddSeats(3),), "Two", "e2", NOW + timedelta(seconds=1))
    async with store.write() as tx:
        await tx.catalog.put_product(PRODUCT)
        await tx.catalog.put_sku(first)
    async with store.write() as tx:
        await tx.catalog.put_sku(second)
    async with store.read() as tx:
        got = await tx.catalog.get_sku("S1")
    assert got == second
    assert got is not None
    assert got.update_time == second.update_time


# --- entitlements -----------------------------------------------------------


async def test_entitlement_add_get_round_trip(store: Store) -> None:
    made = entitlement(
        references=("netsuite:SO-9", "stripe:sub_1"),
        trial=True,
        grace=timedelta(days=3),
        cancel_time=NOW + timedelta(days=2),
    )
    perpetual = entitlement("ent_2", end_time=None, model=LicenseModel.NODE_LOCKED)
    limited = entitlement("ent_3", deactivation_limit=DeactivationLimit(3, "P1DT12H", True))
    await add_entitlements(store, made, perpetual, limited)
    assert await get_entitlement(store, "ent_1") == made
    assert await get_entitlement(store, "ent_2") == perpetual
    assert await get_entitlement(store, "ent_3") == limited
    assert await get_entitlement(store, "ent_4") is None


async def test_entitlement_found_by_key_hash(app: AppContext, store: Store) -> None:
    key = generate_license_key()
    stored = StoredKey(app.sealer.hash_secret(key), app.sealer.seal(key.encode()))
    async with store.write() as tx:
        await tx.entitlements.add(entitlement(), stored, "stripe", "in_1")
        await tx.entitlements.add(entitlement("ent_2"), None, "stripe", "in_1")
    async with store.read() as tx:
        found = await tx.entitlements.find_by_key_hash(app.sealer.hash_secret(key))
        missing = await tx.entitlements.find_by_key_hash(app.sealer.hash_secret("other"))
        sealed = await tx.entitlements.sealed_key("ent_1")
        unsealed_none = await tx.entitlements.sealed_key("ent_2")
    assert found is not None
    assert found.entitlement_id == "ent_1"
    assert missing is None
    assert sealed is not None
    assert app.sealer.unseal(sealed).decode() == key
    assert unsealed_none is None


async def test_a_key_hash_belongs_to_one_entitlement(app: AppContext, store: Store) -> None:
    stored = StoredKey(app.sealer.hash_secret("k"), app.sealer.seal(b"k"))

    async def add_both() -> None:
        async with store.write() as tx:
            await tx.entitlements.add(entitlement("ent_1"), stored, "stripe", "in_1")
            await tx.entitlements.add(entitlement("ent_2"), stored, "stripe", "in_1")

    with pytest.raises(DuplicateKeyError):
        await add_both()
    assert await get_entitlement(store, "ent_1") is None


async def test_entitlement_found_by_external_reference(store: Store) -> None:
    await add_entitlements(
        store,
        entitlement("ent_1", references=("stripe:sub_1", "crm:42")),
        entitlement("ent_2", references=("stripe:sub_2",)),
    )
    async with store.read() as tx:
        first = await tx.entitlements.find_by_reference("crm:42")
        second = await tx.entitlements.find_by_reference("stripe:sub_2")
        missing = await tx.entitlements.find_by_reference("stripe:sub_3")
        exists = await tx.entitlements.reference_exists("stripe:sub_1")
        not_exists = await tx.entitlements.reference_exists("stripe:sub_3")
    assert first is not None
    assert first.entitlement_id == "ent_1"
    assert first.external_references == ("crm:42", "stripe:sub_1")
    assert second is not None
    assert second.entitlement_id == "ent_2"
    assert missing is None
    assert exists
    assert not not_exists


async def test_an_external_reference_belongs_to_one_entitlement(store: Store) -> None:
    await add_entitlements(store, entitlement("ent_1", references=("stripe:sub_1",)))
    with pytest.raises(DuplicateKeyError):
        await add_entitlements(store, entitlement("ent_2", references=("stripe:sub_1",)))
    assert await get_entitlement(store, "ent_2") is None
    async with store.read() as tx:
        owner = await tx.entitlements.find_by_reference("stripe:sub_1")
    assert owner is not None
    assert owner.entitlement_id == "ent_1"


async def test_an_external_reference_taken_in_the_same_transaction(store: Store) -> None:
    with pytest.raises(DuplicateKeyError):
        await add_entitlements(
            store,
            entitlement("ent_1", references=("stripe:sub_1",)),
            entitlement("ent_2", references=("stripe:sub_1",)),
        )
    assert await get_entitlement(store, "ent_1") is None
    assert await get_entitlement(store, "ent_2") is None


async def test_save_writes_back_the_changeable_state(store: Store) -> None:
    original = entitlement(references=("stripe:sub_1",))
    await add_entitlements(store, original)
    changed = replace(
        original,
        edition_id="standard",
        seats=7,
        features=(Feature("api", 100), Feature("export")),
        start_time=NOW,
        end_time=NOW + timedelta(days=730, microseconds=1),
        trial=True,
        cancel_time=NOW + timedelta(hours=1),
        grace=timedelta(days=14),
        update_time=NOW + timedelta(seconds=5),
    )
    async with store.write() as tx:
        await tx.entitlements.save(changed)
    assert await get_entitlement(store, "ent_1") == changed
    async with store.write() as tx:
        await tx.entitlements.save(replace(changed, cancel_time=None, end_time=None))
    again = await get_entitlement(store, "ent_1")
    assert again is not None
    assert again.cancel_time is None
    assert again.end_time is None


# --- orders -----------------------------------------------------------------


async def test_order_add_get_round_trip(store: Store) -> None:
    order = stored_order()
    async with store.write() as tx:
        await tx.orders.add(order)
    async with store.read() as tx:
        assert await tx.orders.get("stripe", "in_1") == order
        assert await tx.orders.get("stripe", "in_2") is None
        assert await tx.orders.get("netsuite", "in_1") is None


async def test_order_results_can_be_set(store: Store) -> None:
    order = stored_order()
    results = (LineResult(0, "ACME-PRO-1Y", "ent_9", ("create", "add_features")),)
    async with store.write() as tx:
        await tx.orders.add(replace(order, results=()))
        await tx.orders.set_results("stripe", "in_1", results)
    async with store.read() as tx:
        assert await tx.orders.get("stripe", "in_1") == replace(order, results=results)


async def test_the_order_key_is_source_and_order_id(store: Store) -> None:
    async with store.write() as tx:
        await tx.orders.add(stored_order("in_1", "stripe"))
        await tx.orders.add(stored_order("in_2", "stripe"))
        await tx.orders.add(stored_order("in_1", "netsuite"))
    async with store.read() as tx:
        for source, order_id in (("stripe", "in_1"), ("stripe", "in_2"), ("netsuite", "in_1")):
            found = await tx.orders.get(source, order_id)
            assert found is not None
            assert found.request.order_id == order_id


async def test_a_duplicate_order_undoes_its_whole_transaction(store: Store) -> None:
    first = stored_order()
    async with store.write() as tx:
        await tx.orders.add(first)
    duplicate = replace(stored_order(), fingerprint="f" * 64, create_time=NOW + timedelta(hours=1))

    async def write_then_duplicate() -> None:
        async with store.write() as tx:
            await tx.catalog.put_product(PRODUCT)
            await tx.entitlements.add(
                entitlement(references=("stripe:sub_1",)), None, "stripe", "in_1"
            )
            await tx.events.append(NewEvent("ent_1", "created", NOW, {"seats": 3}))
            await tx.orders.add(stored_order("in_other"))
            await tx.orders.add(duplicate)

    with pytest.raises(DuplicateKeyError):
        await write_then_duplicate()
    async with store.read() as tx:
        assert await tx.orders.get("stripe", "in_1") == first
        assert await tx.orders.get("stripe", "in_other") is None
        assert await tx.catalog.get_product("acme-cad") is None
        assert await tx.entitlements.get("ent_1") is None
        assert not await tx.entitlements.reference_exists("stripe:sub_1")
    assert await count_rows(store, events) == 0


async def test_a_duplicate_order_leaves_the_store_usable(store: Store) -> None:
    async with store.write() as tx:
        await tx.orders.add(stored_order())

    async def add_again() -> None:
        async with store.write() as tx:
            await tx.orders.add(stored_order())

    for _ in range(3):
        with pytest.raises(DuplicateKeyError):
            await add_again()
    async with store.write() as tx:
        await tx.orders.add(stored_order("in_2"))
    async with store.read() as tx:
        assert await tx.orders.get("stripe", "in_2") is not None


# --- events -----------------------------------------------------------------


async def test_events_get_increasing_sequence_numbers(store: Store) -> None:
    async with store.write() as tx:
        for kind in ("created", "seats_added"):
            await tx.events.append(
                NewEvent("ent_1", kind, NOW, {"seats": 3, "nested": {"a": [1, 2]}}, "stripe", "o")
            )
    async with store.write() as tx:
        await tx.events.append(NewEvent("ent_2", "activated", NOW, {}, activation_id="act_1"))
    async with store.read() as tx:
        rows = (
            (await tx.connection.execute(select(events).order_by(events.c.sequence)))
            .mappings()
            .all()
        )
    assert [r["type"] for r in rows] == ["created", "seats_added", "activated"]
    sequences = [r["sequence"] for r in rows]
    assert sequences == sorted(set(sequences))
    assert rows[0]["snapshot"] == {"seats": 3, "nested": {"a": [1, 2]}}
    assert rows[0]["create_time"] == NOW
    assert rows[2]["activation_id"] == "act_1"


# --- seats: activate and renew------------------------------------------------


async def test_seats_are_granted_up_to_the_count(store: Store) -> None:
    await add_entitlements(store, entitlement(seats=3))
    for i in range(3):
        result = await claim(store, f"device-{i}")
        assert result.outcome is SeatOutcome.GRANTED
        assert result.seats_in_use == i + 1
        assert result.entitlement.entitlement_id == "ent_1"
        assert result.activation.fingerprint == f"device-{i}"
        assert result.activation.lease_expire_time == NOW + LEASE
    error = await refused(store, "device-3")
    assert error.reason is Reason.SEATS_EXHAUSTED
    assert error.metadata == {"seats": "3", "seat_limit": "3"}
    assert await count_rows(store, activations) == 3
    assert await live_seats(store, NOW) == 3


async def test_the_same_fingerprint_keeps_its_seat(store: Store) -> None:
    await add_entitlements(store, entitlement(seats=1))
    first = await claim(store, "device-a")
    later = NOW + timedelta(minutes=5)
    again = await claim(store, "device-a", later, label="")
    assert again.outcome is SeatOutcome.KEPT
    assert again.seats_in_use == 1
    assert again.activation.activation_id == first.activation.activation_id
    assert again.activation.lease_jti != first.activation.lease_jti
    assert again.activation.lease_expire_time == later + LEASE
    assert again.activation.label == "laptop"  # an empty label keeps the old one
    assert again.activation.create_time == NOW
    assert (await refused(store, "device-b", later)).reason is Reason.SEATS_EXHAUSTED
    assert await count_rows(store, activations) == 1


async def test_a_new_label_replaces_the_old_one(store: Store) -> None:
    await add_entitlements(store, entitlement(seats=1))
    await claim(store, "device-a", label="old")
    again = await claim(store, "device-a", label="new")
    async with store.read() as tx:
        stored = await tx.activations.get(again.activation.activation_id)
    assert stored is not None
    assert stored.label == "new"


async def test_a_released_seat_can_be_granted_again(store: Store) -> None:
    await add_entitlements(store, entitlement(seats=1))
    first = await claim(store, "device-a")
    released = await release(store, held_by(first.activation), NOW + US)
    assert released.released_now
    assert await live_seats(store, NOW + US) == 0
    other = await claim(store, "device-b", NOW + 2 * US)
    assert other.outcome is SeatOutcome.GRANTED
    assert (await refused(store, "device-a", NOW + 3 * US)).reason is Reason.SEATS_EXHAUSTED


async def test_a_released_fingerprint_comes_back_on_its_own_activation(store: Store) -> None:
    await add_entitlements(store, entitlement(seats=1, model=LicenseModel.NODE_LOCKED))
    first = await claim(store, "device-a")
    await release(store, held_by(first.activation), NOW)
    back = await claim(store, "device-a", NOW + timedelta(seconds=1))
    assert back.outcome is SeatOutcome.GRANTED
    assert back.activation.activation_id == first.activation.activation_id
    assert back.activation.released_time is None
    async with store.read() as tx:
        stored = await tx.activations.get(first.activation.activation_id)
    assert stored is not None
    assert stored.released_time is None
    assert stored.lease_jti == back.activation.lease_jti
    assert await count_rows(store, activations) == 1


async def test_a_lapsed_floating_lease_frees_its_seat(store: Store) -> None:
    await add_entitlements(store, entitlement(seats=1, model=LicenseModel.FLOATING))
    first = await claim(store, "device-a")
    lapse = first.activation.lease_expire_time + LAPSE_GRACE
    # Within the lease and its grace, the seat is taken.
    assert (await refused(store, "device-b", lapse - US)).reason is Reason.SEATS_EXHAUSTED
    assert await live_seats(store, lapse - US) == 1
    # From the instant lease plus grace has passed, it is free: no sweep needed.
    assert await live_seats(store, lapse) == 0
    taken = await claim(store, "device-b", lapse)
    assert taken.outcome is SeatOutcome.GRANTED
    assert taken.seats_in_use == 1
    # The lapsed device does not get its seat back while someone else holds it.
    later = lapse + timedelta(minutes=1)
    assert (await refused(store, "device-a", later)).reason is Reason.SEATS_EXHAUSTED


async def test_a_lapsed_floating_device_takes_a_free_seat_again(store: Store) -> None:
    await add_entitlements(store, entitlement(seats=1, model=LicenseModel.FLOATING))
    first = await claim(store, "device-a")
    much_later = NOW + timedelta(days=3)
    back = await claim(store, "device-a", much_later)
    assert back.outcome is SeatOutcome.REGAINED  # recorded as a lapse, then a new seat
    assert back.activation.activation_id == first.activation.activation_id
    assert back.activation.lease_expire_time == much_later + LEASE


async def test_a_node_locked_seat_stays_taken_after_its_lease_lapses(store: Store) -> None:
    await add_entitlements(store, entitlement(seats=1, model=LicenseModel.NODE_LOCKED))
    first = await claim(store, "device-a")
    lapse = first.activation.lease_expire_time + LAPSE_GRACE
    assert await live_seats(store, lapse + timedelta(days=30)) == 1
    error = await refused(store, "device-b", lapse + timedelta(days=30))
    assert error.reason is Reason.SEATS_EXHAUSTED
    kept = await claim(store, "device-a", lapse + timedelta(days=30))
    assert kept.outcome is SeatOutcome.KEPT


async def test_renewal_with_the_current_lease_keeps_the_seat(store: Store) -> None:
    await add_entitlements(store, entitlement(seats=1))
    first = await claim(store, "device-a")
    held = (first.activation.activation_id, first.activation.lease_jti)
    later = NOW + timedelta(minutes=7)
    renewed = await claim(store, "device-a", later, renew=held)
    assert renewed.outcome is SeatOutcome.KEPT
    assert renewed.activation.activation_id == first.activation.activation_id
    assert renewed.activation.lease_jti != first.activation.lease_jti
    assert renewed.activation.lease_expire_time == later + LEASE
    # The old lease id is now superseded.
    error = await refused(store, "device-a", later + US, renew=held)
    assert error.reason is Reason.LEASE_SUPERSEDED
    assert error.metadata == {"activation_id": first.activation.activation_id}


async def test_renewal_with_a_wrong_jti_is_superseded(store: Store) -> None:
    await add_entitlements(store, entitlement(seats=2))
    first = await claim(store, "device-a")
    wrong = (first.activation.activation_id, "not-the-jti")
    assert (await refused(store, "device-a", renew=wrong)).reason is Reason.LEASE_SUPERSEDED
    unknown = ("act-unknown", first.activation.lease_jti)
    assert (await refused(store, "device-a", renew=unknown)).reason is Reason.LEASE_SUPERSEDED
    assert await count_rows(store, activations) == 1


async def test_renewal_of_a_released_lease_is_superseded(store: Store) -> None:
    await add_entitlements(store, entitlement(seats=1))
    first = await claim(store, "device-a")
    held = (first.activation.activation_id, first.activation.lease_jti)
    await release(store, held, NOW)
    assert (await refused(store, "device-a", renew=held)).reason is Reason.LEASE_SUPERSEDED
    assert await live_seats(store, NOW) == 0


async def test_renewal_of_a_lapsed_floating_lease_needs_a_free_seat(store: Store) -> None:
    await add_entitlements(store, entitlement(seats=1))
    first = await claim(store, "device-a")
    held = (first.activation.activation_id, first.activation.lease_jti)
    lapse = first.activation.lease_expire_time + LAPSE_GRACE
    await claim(store, "device-b", lapse)
    error = await refused(store, "device-a", lapse + US, renew=held)
    assert error.reason is Reason.SEATS_EXHAUSTED


async def test_a_lease_never_runs_past_the_usable_end(store: Store) -> None:
    end = NOW + timedelta(minutes=5)
    await add_entitlements(store, entitlement(end_time=end, grace=timedelta(minutes=1)))
    result = await claim(store, "device-a")
    assert result.activation.lease_expire_time == end + timedelta(minutes=1)
    async with store.read() as tx:
        stored = await tx.activations.get(result.activation.activation_id)
    assert stored is not None
    assert stored.lease_expire_time == end + timedelta(minutes=1)


async def test_an_expired_entitlement_grants_no_seat(store: Store) -> None:
    end = NOW - timedelta(days=1)
    await add_entitlements(store, entitlement(end_time=end, grace=timedelta(days=1)))
    error = await refused(store, "device-a")
    assert error.reason is Reason.ENTITLEMENT_EXPIRED
    assert error.metadata == {"entitlement_id": "ent_1", "end_time": end.isoformat()}
    assert await count_rows(store, activations) == 0
    # One microsecond earlier it was still usable.
    assert (await claim(store, "device-a", NOW - US)).outcome is SeatOutcome.GRANTED


async def test_an_expired_entitlement_renews_no_lease(store: Store) -> None:
    await add_entitlements(store, entitlement(end_time=NOW + timedelta(minutes=10)))
    first = await claim(store, "device-a")
    held = (first.activation.activation_id, first.activation.lease_jti)
    after_end = NOW + timedelta(minutes=10)
    assert (await refused(store, "device-a", after_end, renew=held)).reason is (
        Reason.ENTITLEMENT_EXPIRED
    )


async def test_a_cancelled_entitlement_grants_no_seat(store: Store) -> None:
    await add_entitlements(store, entitlement(cancel_time=NOW - timedelta(hours=1)))
    error = await refused(store, "device-a")
    assert error.reason is Reason.ENTITLEMENT_CANCELLED
    assert error.metadata == {"entitlement_id": "ent_1"}
    assert await count_rows(store, activations) == 0


async def test_an_unknown_entitlement_grants_no_seat(store: Store) -> None:
    error = await refused(store, "device-a", entitlement_id="ent_missing")
    assert error.reason is Reason.INVALID_LICENSE_KEY
    assert error.metadata == {}


async def test_seats_of_one_entitlement_do_not_count_against_another(store: Store) -> None:
    await add_entitlements(store, entitlement("ent_1", seats=1), entitlement("ent_2", seats=1))
    await claim(store, "device-a", entitlement_id="ent_1")
    other = await claim(store, "device-a", entitlement_id="ent_2")
    assert other.outcome is SeatOutcome.GRANTED
    assert other.seats_in_use == 1
    assert await count_rows(store, activations) == 2


async def test_fewer_seats_after_a_save_refuse_new_devices(store: Store) -> None:
    made = entitlement(seats=2)
    await add_entitlements(store, made)
    await claim(store, "device-a")
    await claim(store, "device-b", NOW + timedelta(seconds=1))
    async with store.write() as tx:
        await tx.entitlements.save(replace(made, seats=1))
    later = NOW + timedelta(seconds=2)
    assert (await refused(store, "device-c", later)).reason is Reason.SEATS_EXHAUSTED
    # The seat taken last is the one beyond the count: refused, the first one kept.
    assert (await refused(store, "device-b", later)).reason is Reason.SEATS_EXHAUSTED
    assert (await claim(store, "device-a", later)).outcome is SeatOutcome.KEPT


async def test_seats_taken_in_the_same_instant_rank_by_activation_id(store: Store) -> None:
    made = entitlement(seats=3)
    await add_entitlements(store, made)
    held = [(await claim(store, f"device-{i}")).activation for i in range(3)]
    async with store.write() as tx:
        await tx.entitlements.save(replace(made, seats=2))
    first, second, third = sorted(held, key=lambda a: a.activation_id)
    assert (await refused(store, third.fingerprint)).reason is Reason.SEATS_EXHAUSTED
    assert (await claim(store, first.fingerprint)).outcome is SeatOutcome.KEPT
    assert (await claim(store, second.fingerprint)).outcome is SeatOutcome.KEPT


# --- release ----------------------------------------------------------------


async def test_release_is_idempotent(store: Store) -> None:
    await add_entitlements(store, entitlement(seats=1))
    first = await claim(store, "device-a")
    held = (first.activation.activation_id, first.activation.lease_jti)
    once = await release(store, held, NOW + timedelta(seconds=1))
    twice = await release(store, held, NOW + timedelta(seconds=2))
    assert once.released_now
    assert not twice.released_now
    assert once.seats_in_use == twice.seats_in_use == 0
    async with store.read() as tx:
        stored = await tx.activations.get(first.activation.activation_id)
    assert stored is not None
    assert stored.released_time == NOW + timedelta(seconds=1)  # the first release counts
    assert await live_seats(store, NOW + timedelta(seconds=3)) == 0


async def test_release_with_a_stale_lease_changes_nothing(store: Store) -> None:
    await add_entitlements(store, entitlement(seats=1))
    first = await claim(store, "device-a")
    renewed = await claim(store, "device-a", NOW + timedelta(minutes=1))
    for stale in (held_by(first.activation), ("act-unknown", "jti")):
        with pytest.raises(DomainError) as caught:
            await release(store, stale, NOW)
        assert caught.value.reason is Reason.LEASE_SUPERSEDED
    assert renewed.activation.lease_jti != first.activation.lease_jti
    assert await live_seats(store, NOW + timedelta(minutes=1)) == 1


# --- devices: deactivation and its limit -------------------------------------


async def deactivate(store: Store, activation_id: str, now: datetime) -> None:
    async with store.write() as tx:
        current = await tx.activations.get(activation_id)
        assert current is not None
        released = replace(current, released_time=now, released_by="token:t", release_reason="lost")
        await tx.activations.deactivate(released)


async def test_a_deactivated_seat_is_free_and_its_renewal_says_so(store: Store) -> None:
    await add_entitlements(store, entitlement(seats=1, model=LicenseModel.NODE_LOCKED))
    first = await claim(store, "device-a")
    await deactivate(store, first.activation.activation_id, NOW + US)
    assert await live_seats(store, NOW + US) == 0
    error = await refused(store, "device-a", NOW + 2 * US, renew=held_by(first.activation))
    assert error.reason is Reason.SEAT_DEACTIVATED
    assert error.metadata == {"activation_id": first.activation.activation_id}
    quiet = await release(store, held_by(first.activation), NOW + 2 * US)  # already free
    assert not quiet.released_now
    other = await claim(store, "device-b", NOW + 3 * US)
    assert other.outcome is SeatOutcome.GRANTED
    async with store.read() as tx:
        stored = await tx.activations.get(first.activation.activation_id)
    assert stored is not None
    assert (stored.deactivated, stored.released_by, stored.release_reason) == (
        True,
        "token:t",
        "lost",
    )
    assert stored.update_time == NOW  # last seen: the device's activation, not the deactivation


async def test_a_deactivated_device_activates_again_as_a_new_claim(store: Store) -> None:
    await add_entitlements(store, entitlement(seats=1))
    first = await claim(store, "device-a")
    await deactivate(store, first.activation.activation_id, NOW + US)
    again = await claim(store, "device-a", NOW + 2 * US)
    assert again.outcome is SeatOutcome.GRANTED
    assert again.activation.activation_id == first.activation.activation_id
    renewed = await claim(store, "device-a", NOW + 3 * US, renew=held_by(again.activation))
    assert renewed.outcome is SeatOutcome.KEPT
    async with store.read() as tx:
        stored = await tx.activations.get(first.activation.activation_id)
    assert stored is not None
    assert (stored.deactivated, stored.released_by, stored.release_reason) == (False, None, None)


def counted(kind: str, at: datetime) -> NewEvent:
    return NewEvent("ent_1", kind, at, {}, activation_id="act_old")


async def test_a_counted_release_past_the_deactivation_limit_is_refused(store: Store) -> None:
    limit = DeactivationLimit(2, "P1D", count_releases=True)
    await add_entitlements(store, entitlement(seats=3, deactivation_limit=limit))
    async with store.write() as tx:
        await tx.events.append(counted("seat_deactivated", NOW - timedelta(hours=20)))
        await tx.events.append(counted("seat_released", NOW - timedelta(hours=2)))
        await tx.events.append(counted("seat_activated", NOW - timedelta(hours=1)))
    first = await claim(store, "device-a")
    with pytest.raises(DomainError) as caught:
        await release(store, held_by(first.activation), NOW + US)
    assert caught.value.reason is Reason.DEACTIVATION_LIMIT_REACHED
    assert caught.value.metadata == {
        "limit": "2",
        "period": "P1D",
        "retry_time": (NOW + timedelta(hours=4)).isoformat(),
    }
    assert await live_seats(store, NOW + US) == 1  # nothing was written
    # Once the older of the two leaves the day, the release goes through.
    done = await release(store, held_by(first.activation), NOW + timedelta(hours=4, seconds=1))
    assert done.released_now
    assert done.seats_in_use == 0


async def test_releases_are_not_limited_unless_the_sku_counts_them(store: Store) -> None:
    limit = DeactivationLimit(1, "P1D", count_releases=False)
    await add_entitlements(store, entitlement(seats=3, deactivation_limit=limit))
    async with store.write() as tx:
        await tx.events.append(counted("seat_deactivated", NOW - timedelta(hours=1)))
    first = await claim(store, "device-a")
    assert (await release(store, held_by(first.activation), NOW + US)).released_now


async def test_the_newest_counted_events_come_newest_first(store: Store) -> None:
    await add_entitlements(store, entitlement())
    times = [NOW - timedelta(hours=h) for h in (30, 5, 3, 1)]
    async with store.write() as tx:
        for at in times:
            await tx.events.append(counted("seat_deactivated", at))
        await tx.events.append(counted("seat_released", NOW - timedelta(minutes=1)))
    async with store.read() as tx:
        newest = await tx.events.newest_times(
            "ent_1", ["seat_deactivated"], NOW - timedelta(days=1), 2
        )
        every = await tx.events.newest_times(
            "ent_1", ["seat_deactivated", "seat_released"], NOW - timedelta(days=1), 10
        )
    assert newest == [times[3], times[2]]
    assert every == [NOW - timedelta(minutes=1), times[3], times[2], times[1]]


# --- tokens -----------------------------------------------------------------


async def test_tokens_add_find_revoke(store: Store) -> None:
    token = ApiToken("tok_1", frozenset({"catalog", "read"}), "connector", NOW)
    async with store.write() as tx:
        await tx.tokens.add(token, "h" * 64)
        await tx.tokens.add(ApiToken("tok_2", frozenset({"fulfill"}), "", NOW), "g" * 64)
    async with store.read() as tx:
        assert await tx.tokens.find_by_hash("h" * 64) == token
        assert await tx.tokens.find_by_hash("x" * 64) is None
    async with store.write() as tx:
        assert await tx.tokens.revoke("tok_1", NOW + timedelta(days=1))
    async with store.write() as tx:
        assert not await tx.tokens.revoke("tok_1", NOW + timedelta(days=2))
        assert not await tx.tokens.revoke("tok_unknown", NOW)
    async with store.read() as tx:
        revoked = await tx.tokens.find_by_hash("h" * 64)
        other = await tx.tokens.find_by_hash("g" * 64)
    assert revoked == replace(token, revoke_time=NOW + timedelta(days=1))
    assert other is not None
    assert other.revoke_time is None


async def test_recording_a_token_use_follows_the_domain_rule(store: Store) -> None:
    """`record_use` writes exactly when `use_is_due` says so, to the microsecond: the one
    rule, written in Python and in SQL, run on the same cases."""
    now = NOW + timedelta(days=3)
    cutoff = recorded_before(now)
    stored_before = [
        None,
        cutoff - timedelta(days=1),
        cutoff,
        cutoff + timedelta(microseconds=1),
        now,
        now + timedelta(seconds=5),  # written by a replica whose clock runs ahead
    ]
    for number, stored in enumerate(stored_before):
        token_id = f"tok_{number}"
        async with store.write() as tx:
            await tx.tokens.add(ApiToken(token_id, frozenset({"read"}), "", NOW), f"{number:064}")
            if stored is not None:
                assert await tx.tokens.record_use(token_id, stored, stored)
        async with store.write() as tx:
            written = await tx.tokens.record_use(token_id, now, cutoff)
        assert written is use_is_due(stored, now), stored
        async with store.read() as tx:
            found = await tx.tokens.find_by_hash(f"{number:064}")
        assert found is not None
        assert found.last_used_time == (now if written else stored)
    async with store.write() as tx:
        assert not await tx.tokens.record_use("tok_unknown", now, cutoff)


async def test_recording_an_identity_use_follows_the_domain_rule(store: Store) -> None:
    """`record_identity_use` writes exactly when `use_is_due` says so, to the microsecond,
    as `record_use` does for API tokens; and never for a user without an identity token
    (not redeemed, or invited again), whose idle period has not begun."""
    now = NOW + timedelta(days=3)
    cutoff = recorded_before(now)
    stored_before = [
        None,  # redeemed by a server before 0008
        cutoff - timedelta(days=1),
        cutoff,
        cutoff + US,
        now,
        now + timedelta(seconds=5),
    ]
    await add_entitlements(store, entitlement())
    async with store.write() as tx:
        for number in range(len(stored_before) + 1):
            user = NamedUser(f"usr_{number}", "ent_1", f"u{number}@x.example", NOW)
            await tx.named_users.add(user, f"{number:064}", b"sealed", "stripe", "in_1")
        for number in range(len(stored_before)):
            assert await tx.named_users.redeem(
                NamedUser(f"usr_{number}", "ent_1", "", NOW), f"idt_{number}", NOW
            )
        not_redeemed = f"usr_{len(stored_before)}"
    for number, stored in enumerate(stored_before):
        user_id = f"usr_{number}"
        async with store.write() as tx:
            await tx.connection.execute(
                update(named_users)
                .where(named_users.c.user_id == user_id)
                .values(identity_used_time=stored)
            )
        async with store.write() as tx:
            written = await tx.named_users.record_identity_use(user_id, now, cutoff)
        assert written is use_is_due(stored, now), stored
        async with store.read() as tx:
            found = await tx.named_users.get(user_id)
        assert found is not None
        assert found.identity_used_time == (now if written else stored)
    async with store.write() as tx:
        assert not await tx.named_users.record_identity_use(not_redeemed, now, cutoff)
        assert not await tx.named_users.record_identity_use("usr_unknown", now, cutoff)
        await tx.named_users.reinvite("usr_0", "f" * 64, b"sealed again")
        assert not await tx.named_users.record_identity_use("usr_0", now + 2 * LEASE, now + LEASE)
    async with store.read() as tx:
        invited_again = await tx.named_users.get("usr_0")
    assert invited_again is not None
    assert (invited_again.redeem_time, invited_again.identity_jti) == (None, None)
    assert invited_again.identity_used_time is None


async def test_a_token_hash_is_unique(store: Store) -> None:

    async def add_both() -> None:
        async with store.write() as tx:
            await tx.tokens.add(ApiToken("tok_1", frozenset({"read"}), "", NOW), "h" * 64)
            await tx.tokens.add(ApiToken("tok_2", frozenset({"read"}), "", NOW), "h" * 64)

    with pytest.raises(DuplicateKeyError):
        await add_both()
    async with store.read() as tx:
        assert await tx.tokens.find_by_hash("h" * 64) is None


# --- signing keys -----------------------------------------------------------


async def test_signing_keys_list_newest_first_and_the_newest_unretired_signs(
    store: Store,
) -> None:
    async with store.read() as tx:
        existing = await tx.signing_keys.list_all()  # the one the app made at start
    old = StoredSigningKey(
        "kid-old", b"\x00sealed-old\xff", "pub-old", datetime(2000, 1, 1, tzinfo=UTC)
    )
    new = StoredSigningKey("kid-new", b"sealed-new", "pub-new", datetime(2999, 1, 1, tzinfo=UTC))
    twin = StoredSigningKey("kid-nex", b"sealed-nex", "pub-nex", datetime(2999, 1, 1, tzinfo=UTC))
    retired = StoredSigningKey(
        "kid-retired",
        b"sealed-retired",
        "pub-retired",
        datetime(3000, 1, 1, tzinfo=UTC),
        retire_time=NOW,
    )
    async with store.write() as tx:
        for key in (old, retired, new, twin):
            await tx.signing_keys.add(key)
    async with store.read() as tx:
        listed = await tx.signing_keys.list_all()
        signing = await tx.signing_keys.signing_kid()
    # Newest first, retired ones too; equal times are ordered by kid, descending.
    assert listed == [retired, twin, new, *existing, old]
    assert listed[-1].private_key_sealed == b"\x00sealed-old\xff"
    assert signing == "kid-nex"  # the retired one is newer but no longer signs


async def test_retiring_all_but_one_key_leaves_it_signing(store: Store) -> None:
    async with store.read() as tx:
        (first,) = await tx.signing_keys.list_all()
    newer = StoredSigningKey("kid-newer", b"sealed", "pub", datetime(2999, 1, 1, tzinfo=UTC))
    later = NOW + timedelta(hours=1)
    async with store.write() as tx:
        await tx.signing_keys.add(newer)
        retired = await tx.signing_keys.retire_all_but("kid-newer", later)
    async with store.write() as tx:
        again = await tx.signing_keys.retire_all_but("kid-newer", later + timedelta(days=1))
    async with store.read() as tx:
        listed = {k.kid: k.retire_time for k in await tx.signing_keys.list_all()}
        signing = await tx.signing_keys.signing_kid()
    assert retired == [first.kid]
    assert again == []  # an already scheduled retirement is not pushed back
    assert listed == {first.kid: later, "kid-newer": None}
    assert signing == "kid-newer"


async def test_a_signing_key_id_is_unique(store: Store) -> None:
    key = StoredSigningKey("kid-1", b"a", "pub", NOW)
    async with store.write() as tx:
        await tx.signing_keys.add(key)

    async def add_again() -> None:
        async with store.write() as tx:
            await tx.signing_keys.add(replace(key, public_key="other"))

    with pytest.raises(DuplicateKeyError):
        await add_again()


# --- timestamps ---------------------------------------------------------------


async def test_timestamps_round_trip_as_aware_utc_with_microseconds(store: Store) -> None:
    zone = timezone(timedelta(hours=5, minutes=30))
    local = datetime(2026, 7, 1, 23, 59, 59, 999999, tzinfo=zone)
    times = {
        "start_time": local - timedelta(days=1, microseconds=1),
        "end_time": local + timedelta(days=30, microseconds=7),
        "create_time": local,
        "update_time": local + timedelta(microseconds=1),
        "cancel_time": local + timedelta(days=60, microseconds=123456),
    }
    made = entitlement(
        start_time=times["start_time"],
        end_time=times["end_time"],
        create_time=times["create_time"],
        update_time=times["update_time"],
        cancel_time=times["cancel_time"],
    )
    token = ApiToken("tok_1", frozenset({"read"}), "", local)
    async with store.write() as tx:
        await tx.entitlements.add(made, None, "stripe", "in_1")
        await tx.orders.add(replace(stored_order(), create_time=local))
        await tx.tokens.add(token, "h" * 64)
        await tx.catalog.put_product(replace(PRODUCT, update_time=local))
    async with store.read() as tx:
        got = await tx.entitlements.get("ent_1")
        order = await tx.orders.get("stripe", "in_1")
        found_token = await tx.tokens.find_by_hash("h" * 64)
        product = await tx.catalog.get_product("acme-cad")
    assert got is not None
    assert order is not None
    assert found_token is not None
    assert product is not None
    read_back = {name: getattr(got, name) for name in times}
    read_back_others = [order.create_time, found_token.create_time, product.update_time]
    for name, value in read_back.items():
        assert value == times[name], name
        assert value.utcoffset() == timedelta(0), name
        assert value.microsecond == times[name].astimezone(UTC).microsecond, name
    for value in read_back_others:
        assert value == local
        assert value.utcoffset() == timedelta(0)
        assert value.microsecond == 999999


async def test_activation_times_round_trip_with_microseconds(store: Store) -> None:
    await add_entitlements(store, entitlement())
    result = await claim(store, "device-a")
    async with store.read() as tx:
        stored = await tx.activations.get(result.activation.activation_id)
    assert stored is not None
    assert stored.create_time == NOW
    assert stored.lease_expire_time == NOW + LEASE
    assert stored.lease_expire_time.microsecond == NOW.microsecond
    assert stored.lease_expire_time.tzinfo is not None
    assert stored.lease_expire_time.utcoffset() == timedelta(0)


async def test_a_naive_datetime_is_refused(store: Store) -> None:

    async def add_naive() -> None:
        async with store.write() as tx:
            await tx.tokens.add(
                ApiToken("tok_1", frozenset({"read"}), "", datetime(2026, 1, 1)), "h" * 64
            )

    with pytest.raises(StatementError, match="naive datetime"):
        await add_naive()
    async with store.read() as tx:
        assert await tx.tokens.find_by_hash("h" * 64) is None


# --- transactions -----------------------------------------------------------


async def test_a_domain_error_inside_a_write_rolls_back_everything(store: Store) -> None:
    await add_entitlements(store, entitlement("ent_0", seats=1))
    failure = DomainError(Reason.INVALID_STATE, "stop here")

    async def write_then_fail() -> None:
        async with store.write() as tx:
            await tx.catalog.put_product(PRODUCT)
            await tx.catalog.put_sku(Sku("S1", "acme-cad", (Cancel(),), etag="e", update_time=NOW))
            await tx.entitlements.add(entitlement("ent_1", references=("crm:1",)), None, "s", "o")
            await tx.entitlements.save(entitlement("ent_0", seats=99))
            await tx.orders.add(stored_order())
            await tx.events.append(NewEvent("ent_1", "created", NOW, {}))
            await tx.tokens.add(ApiToken("tok_1", frozenset({"read"}), "", NOW), "h" * 64)
            await tx.signing_keys.add(StoredSigningKey("kid-x", b"s", "p", NOW))
            await tx.activations.add(
                Activation(
                    "act_1", "ent_0", "device-a", "", "jti_1", NOW + LEASE, NOW, seat_time=NOW
                )
            )
            raise failure

    with pytest.raises(DomainError) as caught:
        await write_then_fail()
    assert caught.value is failure
    async with store.read() as tx:
        assert await tx.catalog.get_product("acme-cad") is None
        assert await tx.catalog.get_sku("S1") is None
        assert await tx.entitlements.get("ent_1") is None
        assert not await tx.entitlements.reference_exists("crm:1")
        unchanged = await tx.entitlements.get("ent_0")
        assert unchanged is not None
        assert unchanged.seats == 1
        assert await tx.orders.get("stripe", "in_1") is None
        assert await tx.tokens.find_by_hash("h" * 64) is None
        assert "kid-x" not in [k.kid for k in await tx.signing_keys.list_all()]
        assert await tx.activations.get("act_1") is None
    assert await count_rows(store, events) == 0
    assert await count_rows(store, activations) == 0


async def test_a_refused_seat_rolls_back_the_rest_of_its_transaction(store: Store) -> None:
    await add_entitlements(store, entitlement(seats=1))
    await claim(store, "device-a")

    before = await count_rows(store, activations)
    claim_b = ActivationClaim("acme-cad", "device-b", "", "act_b", "jti_b", entitlement_id="ent_1")
    with pytest.raises(DomainError) as caught:
        await seats_at(store, NOW).activate(
            claim_b, lambda _: [NewEvent("ent_1", "seat_activated", NOW, {})]
        )
    assert caught.value.reason is Reason.SEATS_EXHAUSTED
    assert await count_rows(store, events) == 0
    assert await count_rows(store, activations) == before


async def test_committed_writes_are_visible_to_later_transactions(store: Store) -> None:
    async with store.write() as tx:
        await tx.catalog.put_product(PRODUCT)
        # Visible inside its own transaction before the commit, too.
        assert await tx.catalog.get_product("acme-cad") == PRODUCT
    async with store.read() as tx:
        assert await tx.catalog.get_product("acme-cad") == PRODUCT


# --- concurrency ------------------------------------------------------------


async def test_concurrent_claims_never_oversell(store: Store) -> None:
    await add_entitlements(store, entitlement(seats=3))

    async def attempt(i: int) -> SeatOutcome | Reason:
        try:
            return (await claim(store, f"device-{i:02d}")).outcome
        except DomainError as error:
            return error.reason

    outcomes = await asyncio.gather(*(attempt(i) for i in range(30)))
    assert outcomes.count(SeatOutcome.GRANTED) == 3
    assert outcomes.count(Reason.SEATS_EXHAUSTED) == 27
    assert await count_rows(store, activations) == 3
    assert await live_seats(store, NOW) == 3


async def test_concurrent_claims_of_one_device_share_one_seat(store: Store) -> None:
    await add_entitlements(store, entitlement(seats=2))

    results = await asyncio.gather(*(claim(store, "device-a", label="") for _ in range(10)))
    outcomes = [r.outcome for r in results]
    assert outcomes.count(SeatOutcome.GRANTED) == 1
    assert outcomes.count(SeatOutcome.KEPT) == 9
    assert len({r.activation.activation_id for r in results}) == 1
    assert await count_rows(store, activations) == 1
