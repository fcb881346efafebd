"""Entitlements: status from the clock, lease expiry, and what a `create` operation makes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyturn.server.domain.catalog import (
    Create,
    Dispatch,
    Edition,
    Feature,
    LicenseModel,
    Product,
    merge_features,
)
from keyturn.server.domain.entitlement import Customer, Entitlement, Status, create_entitlement
from keyturn.server.domain.errors import DomainError, Reason

NOW = datetime(2025, 1, 31, 9, 30, 0, 123456, tzinfo=UTC)
US = timedelta(microseconds=1)
END = datetime(2026, 1, 31, tzinfo=UTC)
GRACE = timedelta(days=7)

ENTITLEMENT = Entitlement(
    entitlement_id="ent_1",
    product_id="acme-cad",
    edition_id="pro",
    customer=Customer("cus_1", "Ada", "ada@example.com"),
    ship_to_email="",
    seats=3,
    features=(Feature("export"),),
    start_time=datetime(2025, 1, 1, tzinfo=UTC),
    end_time=END,
    trial=False,
    license_model=LicenseModel.FLOATING,
    lease_duration=timedelta(minutes=15),
    dispatch=Dispatch.LICENSE_KEY,
    create_time=datetime(2025, 1, 1, tzinfo=UTC),
    update_time=datetime(2025, 1, 1, tzinfo=UTC),
    grace=GRACE,
)
PRODUCT = Product(
    "acme-cad",
    editions=(
        Edition("std", features=(Feature("export"), Feature("projects", 10), Feature("cloud", 5))),
        Edition("pro"),
    ),
)


# --- status -----------------------------------------------------------------


def test_a_paid_entitlement_is_active_before_its_end() -> None:
    assert ENTITLEMENT.status(NOW) is Status.ACTIVE


def test_a_trial_is_trial_before_its_end() -> None:
    assert replace(ENTITLEMENT, trial=True).status(NOW) is Status.TRIAL


def test_the_grace_keeps_it_usable_after_the_end_date() -> None:
    assert ENTITLEMENT.status(END) is Status.ACTIVE
    assert ENTITLEMENT.status(END + GRACE - US) is Status.ACTIVE
    assert replace(ENTITLEMENT, trial=True).status(END + GRACE - US) is Status.TRIAL


def test_it_expires_exactly_at_end_plus_grace() -> None:
    assert ENTITLEMENT.status(END + GRACE) is Status.EXPIRED
    assert replace(ENTITLEMENT, trial=True).status(END + GRACE) is Status.EXPIRED


def test_without_grace_it_expires_exactly_at_the_end() -> None:
    no_grace = replace(ENTITLEMENT, grace=timedelta(0))
    assert no_grace.status(END - US) is Status.ACTIVE
    assert no_grace.status(END) is Status.EXPIRED


def test_a_perpetual_entitlement_never_expires() -> None:
    perpetual = replace(ENTITLEMENT, end_time=None)
    assert perpetual.perpetual
    assert perpetual.usable_until() is None
    assert perpetual.status(datetime(9999, 12, 31, tzinfo=UTC)) is Status.ACTIVE


def test_cancelled_wins_over_every_other_status() -> None:
    cancelled = replace(ENTITLEMENT, cancel_time=NOW)
    assert cancelled.status(NOW) is Status.CANCELLED
    assert cancelled.status(END + GRACE) is Status.CANCELLED
    assert replace(cancelled, trial=True).status(NOW) is Status.CANCELLED


@given(offset=st.integers(-(10**12), 10**12))
def test_status_follows_the_usable_end(offset: int) -> None:
    now = END + GRACE + timedelta(microseconds=offset)
    expected = Status.EXPIRED if offset >= 0 else Status.ACTIVE
    assert ENTITLEMENT.status(now) is expected


def test_usable_until_is_end_plus_grace() -> None:
    assert ENTITLEMENT.usable_until() == END + GRACE


def test_ensure_usable_passes_while_usable() -> None:
    ENTITLEMENT.ensure_usable(NOW)
    replace(ENTITLEMENT, trial=True).ensure_usable(END + GRACE - US)


def test_ensure_usable_refuses_an_expired_entitlement() -> None:
    with pytest.raises(DomainError) as caught:
        ENTITLEMENT.ensure_usable(END + GRACE)
    assert caught.value.reason is Reason.ENTITLEMENT_EXPIRED
    assert caught.value.metadata == {"entitlement_id": "ent_1", "end_time": END.isoformat()}


def test_ensure_usable_refuses_a_cancelled_entitlement() -> None:
    with pytest.raises(DomainError) as caught:
        replace(ENTITLEMENT, cancel_time=NOW).ensure_usable(NOW)
    assert caught.value.reason is Reason.ENTITLEMENT_CANCELLED
    assert caught.value.metadata == {"entitlement_id": "ent_1"}


# --- lease expiry -----------------------------------------------------------


def test_a_lease_runs_one_lease_duration() -> None:
    assert ENTITLEMENT.lease_expiry(NOW) == NOW + timedelta(minutes=15)


def test_a_lease_never_runs_past_end_plus_grace() -> None:
    near_end = END + GRACE - timedelta(minutes=5)
    assert ENTITLEMENT.lease_expiry(near_end) == END + GRACE


def test_a_lease_ending_exactly_at_the_usable_end_is_not_cut() -> None:
    at = END + GRACE - timedelta(minutes=15)
    assert ENTITLEMENT.lease_expiry(at) == END + GRACE


def test_a_perpetual_lease_is_never_capped() -> None:
    perpetual = replace(ENTITLEMENT, end_time=None)
    late = datetime(9000, 1, 1, tzinfo=UTC)
    assert perpetual.lease_expiry(late) == late + timedelta(minutes=15)


@given(offset=st.integers(-(10**11), 10**11))
def test_lease_expiry_is_the_earlier_of_duration_and_usable_end(offset: int) -> None:
    now = END + GRACE + timedelta(microseconds=offset)
    expiry = ENTITLEMENT.lease_expiry(now)
    assert expiry == min(now + ENTITLEMENT.lease_duration, END + GRACE)
    assert expiry <= END + GRACE


# --- create_entitlement -------------------------------------------------------------


def make(op: Create, quantity: int = 1, reference: str = "") -> Entitlement:
    return create_entitlement(
        op,
        PRODUCT,
        quantity,
        Customer("cus_9", "Grace Hopper", "grace@example.com"),
        "it@example.com",
        NOW,
        "ent_new",
        reference,
    )


def test_create_multiplies_seats_by_quantity() -> None:
    assert make(Create("std", 5, "P1Y"), quantity=3).seats == 15
    assert make(Create("std", 1, "P1Y"), quantity=1).seats == 1


def test_create_merges_edition_features_with_overrides_sorted_by_name() -> None:
    op = Create("std", 1, "P1Y", features=(Feature("projects", 50), Feature("api")))
    assert make(op).features == (
        Feature("api"),
        Feature("cloud", 5),
        Feature("export"),
        Feature("projects", 50),
    )


def test_an_override_can_lift_a_limit() -> None:
    op = Create("std", 1, "P1Y", features=(Feature("projects"),))
    assert Feature("projects") in make(op).features
    assert Feature("projects", 10) not in make(op).features


def test_create_copies_the_operation_and_order_fields() -> None:
    op = Create(
        "pro",
        2,
        "P1M",
        trial=True,
        license_model=LicenseModel.NODE_LOCKED,
        lease_duration=timedelta(hours=1),
        dispatch=Dispatch.INVITATION,
    )
    made = make(op, quantity=2, reference="stripe:sub_1")
    assert made.entitlement_id == "ent_new"
    assert made.product_id == "acme-cad"
    assert made.edition_id == "pro"
    assert made.customer == Customer("cus_9", "Grace Hopper", "grace@example.com")
    assert made.ship_to_email == "it@example.com"
    assert made.seats == 4
    assert made.features == ()
    assert made.trial
    assert made.license_model is LicenseModel.NODE_LOCKED
    assert made.lease_duration == timedelta(hours=1)
    assert made.dispatch is Dispatch.INVITATION
    assert made.start_time == made.create_time == made.update_time == NOW
    assert made.cancel_time is None
    assert made.grace == timedelta(0)
    assert made.external_references == ("stripe:sub_1",)
    assert made.status(NOW) is Status.TRIAL


def test_the_term_is_calendar_arithmetic_from_now() -> None:
    # NOW is 31 January 2025: one month later is the last day of February.
    assert make(Create("std", 1, "P1M")).end_time == NOW.replace(month=2, day=28)
    assert make(Create("std", 1, "P1Y")).end_time == NOW.replace(year=2026)


def test_no_term_is_perpetual() -> None:
    made = make(Create("std", 1, None))
    assert made.end_time is None
    assert made.perpetual


def test_no_reference_means_no_references() -> None:
    assert make(Create("std", 1, "P1Y")).external_references == ()


def test_an_edition_missing_from_the_product_is_an_invalid_state() -> None:
    with pytest.raises(DomainError) as caught:
        make(Create("gold", 1, "P1Y"))
    assert caught.value.reason is Reason.INVALID_STATE
    assert caught.value.metadata["product_id"] == "acme-cad"


def test_merge_features() -> None:
    base = (Feature("b", 1), Feature("a"))
    assert merge_features(base, ()) == (Feature("a"), Feature("b", 1))
    assert merge_features((), base) == (Feature("a"), Feature("b", 1))
    assert merge_features(base, (Feature("b", 9), Feature("c"))) == (
        Feature("a"),
        Feature("b", 9),
        Feature("c"),
    )
